"""The estimate maths of a plan (service/plans.py): rates, slots, rounds, money, limits."""

from __future__ import annotations

import pytest

from pixelkiln.config import LimitsSettings
from pixelkiln.db.speeds import Speed
from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.resolve import ResolvedTask
from pixelkiln.service.plans import (
    Capacity,
    Load,
    Plan,
    Prices,
    WorkKey,
    confirm_reasons,
    duration_text,
    estimate,
    group_tasks,
    over_limit,
    pixel_problems,
    rate,
    task_limit_problem,
    total_money,
)
from pixelkiln.specs import parse_batch


def _speed(width: int, height: int, steps: int, seconds: float, backend: str = "a") -> Speed:
    return Speed(backend, width, height, steps, 3, seconds)


def _task(position: int, backend: str, width: int, steps: int, n: int = 1) -> ResolvedTask:
    return ResolvedTask(
        position=position,
        key=str(position),
        backend=backend,
        prompt="p",
        negative_prompt="",
        model="",
        width=width,
        height=width,
        steps=steps,
        cfg_scale=7.0,
        sampler="Euler a",
        seed=1,
        n=n,
        denoise=0.75,
        filename_prefix="",
    )


def test_tasks_are_counted_into_groups_by_backend_size_and_steps() -> None:
    tasks = [_task(1, "a", 512, 20), _task(2, "a", 512, 20, n=3), _task(3, "b", 512, 20)]
    groups = group_tasks([*tasks, _task(4, "a", 768, 20), _task(5, "a", 512, 30)])
    assert groups[WorkKey("a", 512, 512, 20)] == Load(tasks=2, images=4)
    assert groups[WorkKey("b", 512, 512, 20)] == Load(tasks=1, images=1)
    assert len(groups) == 4


def test_the_exact_size_and_steps_are_used_when_measured() -> None:
    known = [_speed(512, 512, 20, 2.0), _speed(512, 512, 40, 3.5)]
    assert rate(WorkKey("a", 512, 512, 40), known) == (3.5, "measured")


def test_else_the_nearest_is_scaled_by_pixels_times_steps() -> None:
    known = [_speed(512, 512, 20, 2.0), _speed(1024, 1024, 20, 10.0)]
    # 512×512×40 is twice the work of 512×512×20, and half that of 1024×1024×20
    found = rate(WorkKey("a", 512, 512, 40), known)
    assert found.basis == "scaled" and found.seconds in (4.0, 5.0)
    # 640×640×20 is nearer 512² (×1.56) than 1024² (÷2.56): scaled from 2.0
    assert rate(WorkKey("a", 640, 640, 20), known).seconds == pytest.approx(2.0 * 640**2 / 512**2)
    assert rate(WorkKey("a", 2048, 2048, 20), known).seconds == pytest.approx(40.0)


def test_a_backend_never_measured_is_unknown() -> None:
    assert rate(WorkKey("a", 512, 512, 20), []) == (None, "unknown")


def test_time_is_rounds_of_the_backends_slots() -> None:
    groups = {WorkKey("a", 512, 512, 20): Load(tasks=18, images=18)}
    known = {"a": [_speed(512, 512, 20, 1.0)]}
    plans, seconds = estimate(groups, known, Capacity(overall=8, slots={"a": 2}), {})
    assert seconds == pytest.approx(9.0)  # 18 tasks, 2 at a time, 1 s each
    assert plans[0].slots == 2 and plans[0].basis == "measured"
    # 19 tasks need a tenth round
    groups = {WorkKey("a", 512, 512, 20): Load(tasks=19, images=19)}
    assert estimate(groups, known, Capacity(overall=8, slots={"a": 2}), {})[1] == 10.0


def test_slots_are_capped_by_the_global_concurrency_and_max_workers() -> None:
    capacity = Capacity(overall=3, slots={"a": 8}, max_workers=None)
    assert capacity.of("a") == 3
    assert Capacity(overall=3, slots={"a": 8}, max_workers=2).of("a") == 2
    assert Capacity(overall=3, slots={"a": 1}).of("a") == 1


def test_backends_run_side_by_side_but_share_the_global_concurrency() -> None:
    groups = {
        WorkKey("a", 512, 512, 20): Load(tasks=4, images=4),
        WorkKey("b", 512, 512, 20): Load(tasks=4, images=4),
    }
    known = {"a": [_speed(512, 512, 20, 1.0)], "b": [_speed(512, 512, 20, 3.0, "b")]}
    wide = Capacity(overall=8, slots={"a": 4, "b": 4})
    assert estimate(groups, known, wide, {})[1] == pytest.approx(3.0)  # b's one round
    # one task at a time in all: every second of work in a row
    narrow = Capacity(overall=1, slots={"a": 4, "b": 4})
    assert estimate(groups, known, narrow, {})[1] == pytest.approx(16.0)


def test_a_delay_between_starts_bounds_the_time() -> None:
    groups = {WorkKey("a", 64, 64, 1): Load(tasks=11, images=11)}
    known = {"a": [_speed(64, 64, 1, 0.1)]}
    capacity = Capacity(overall=4, slots={"a": 4}, delay=2.0)
    assert estimate(groups, known, capacity, {})[1] == pytest.approx(20.0)


def test_one_unknown_backend_makes_the_batch_unknown() -> None:
    groups = {
        WorkKey("a", 512, 512, 20): Load(tasks=1, images=1),
        WorkKey("new", 512, 512, 20): Load(tasks=1, images=1),
    }
    plans, seconds = estimate(groups, {"a": [_speed(512, 512, 20, 1.0)]}, Capacity(4, {}), {})
    assert seconds is None
    assert [(p.name, p.seconds, p.basis) for p in plans] == [
        ("a", 1.0, "measured"),
        ("new", None, "unknown"),
    ]


def test_money_is_per_image_plus_per_megapixel_and_none_without_a_price() -> None:
    groups = {
        WorkKey("paid", 1000, 1000, 20): Load(tasks=2, images=4),
        WorkKey("free", 512, 512, 20): Load(tasks=1, images=1),
    }
    prices = {"paid": Prices(per_image=0.04, per_megapixel=0.01)}
    plans, _ = estimate(groups, {}, Capacity(4, {}), prices)
    by_name = {p.name: p for p in plans}
    assert by_name["paid"].megapixels == pytest.approx(4.0)
    assert by_name["paid"].money == pytest.approx(0.04 * 4 + 0.01 * 4.0)
    assert by_name["free"].money is None
    assert total_money(plans) == pytest.approx(0.2)
    assert total_money([by_name["free"]]) is None
    assert Prices(per_megapixel=0.5).cost(images=3, megapixels=2.0) == 1.0


def test_limits_name_what_is_over() -> None:
    limits = LimitsSettings(max_tasks_per_batch=2, max_pixels=512 * 512)
    spec = parse_batch({"name": "b", "defaults": {"n": 2}, "tasks": [{"prompt": "x"}] * 3})
    problem = task_limit_problem(spec, limits, "b.json")
    assert problem is not None and problem.field == "tasks"
    assert "3 tasks; at most 2" in problem.message
    assert task_limit_problem(spec, LimitsSettings(max_tasks_per_batch=3), "") is None
    planned = over_limit(spec, problem)
    assert (planned.tasks, planned.images, planned.seconds) == (3, 6, None)
    with pytest.raises(SpecError):
        planned.refuse()
    big = pixel_problems([_task(1, "a", 512, 20), _task(2, "a", 1024, 20)], limits, "b.json")
    assert [(p.where, p.field) for p in big] == [("task 2", "width")]
    assert "1024×1024 is 1,048,576 pixels; at most 262,144" in big[0].message


def test_kiln_run_asks_above_its_thresholds_only() -> None:
    limits = LimitsSettings(confirm_images=10, confirm_hours=1.0, confirm_money=0.0)
    assert confirm_reasons(Plan(tasks=10, images=10, credits=0), limits) == []
    assert confirm_reasons(Plan(tasks=11, images=11, credits=0, seconds=None), limits) == [
        "11 images (over 10)"
    ]
    long = Plan(tasks=1, images=1, credits=0, seconds=3601.0, money=0.5)
    assert len(confirm_reasons(long, limits)) == 1  # confirm_money 0: money never asks
    never = LimitsSettings(confirm_images=0, confirm_hours=0, confirm_money=1.0)
    assert confirm_reasons(long, never) == []
    paid = LimitsSettings(confirm_images=10, confirm_hours=1.0, confirm_money=0.25)
    assert len(confirm_reasons(long, paid)) == 2


def test_without_a_terminal_only_money_over_the_set_threshold_stops_a_run() -> None:
    big = Plan(tasks=2000, images=2000, credits=0, seconds=7200.0, money=3.0)
    default = LimitsSettings()
    assert confirm_reasons(big, default, unattended=True) == []  # a nightly job goes on
    assert len(confirm_reasons(big, default)) == 2  # on a terminal: asked (images, time)
    careful = LimitsSettings(confirm_money=2.0)
    assert confirm_reasons(big, careful, unattended=True) == ["money 3.00 (over 2.00)"]


def test_durations_for_people() -> None:
    assert duration_text(3900.0) == "1 h 05 min"
    assert duration_text(200.0) == "3 min 20 s"
    assert duration_text(12.4) == "12 s"
    assert duration_text(0.2) == "0.2 s"


def test_a_plan_over_the_task_limit_counts_the_expanded_tasks() -> None:
    spec = parse_batch(
        {
            "name": "s",
            "tasks": [{"prompt": "a {red|blue} fox", "n": 2}],
            "sweep": {"x": {"cfg_scale": [5, 7, 9]}},
        }
    )
    problem = Problem("", "", "tasks", "over")
    over = over_limit(spec, problem)
    assert (over.tasks, over.images, over.problems) == (6, 12, (problem,))
