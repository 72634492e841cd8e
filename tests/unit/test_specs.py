"""Batch specs: validation located per task, defaults merged, values decided."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from pixelkiln import params
from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.problems import MAX_PROBLEMS
from pixelkiln.resolve import check_tasks, resolve_tasks
from pixelkiln.specs import BATCH_KEYS, PARAM_NAMES, BatchSpec, TaskPlaces, parse_batch


def batch(*tasks: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {"name": "test", "defaults": defaults, "tasks": list(tasks)}


def problems(exc: pytest.ExceptionInfo[SpecError]) -> list[tuple[str, str]]:
    return [(p.where, p.field) for p in exc.value.problems]


def test_defaults_are_merged_and_tasks_override_them() -> None:
    spec = parse_batch(
        batch({"prompt": "a"}, {"prompt": "b", "steps": 40, "n": 1}, n=2, steps=30, seed=7)
    )
    first, second = resolve_tasks(spec, default_backend="placeholder")
    assert (first.n, first.steps, first.seed) == (2, 30, 7)
    assert (second.n, second.steps, second.seed) == (1, 40, 7)


def test_prompt_may_come_from_defaults() -> None:
    spec = parse_batch(batch({"key": "one"}, prompt="shared"))
    [task] = resolve_tasks(spec, default_backend="placeholder")
    assert (task.prompt, task.key) == ("shared", "one")


def test_unset_values_take_the_documented_defaults() -> None:
    [task] = resolve_tasks(parse_batch(batch({"prompt": "a"})), default_backend="sd")
    assert (task.backend, task.width, task.height, task.n) == ("sd", 1024, 1024, 1)
    assert (task.steps, task.cfg_scale, task.denoise) == (
        params.DEFAULT_STEPS,
        params.DEFAULT_CFG_SCALE,
        params.DEFAULT_DENOISE,
    )
    assert (task.key, task.position) == ("1", 1)


def test_unknown_key_is_located_and_lists_known_keys() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a"}, {"prompt": "b", "colour": "red"}), source="b.yaml")
    [problem] = exc.value.problems
    assert (problem.source, problem.where, problem.field) == ("b.yaml", "task 2", "colour")
    assert "unknown key 'colour'" in problem.message
    assert "negative_prompt" in problem.message


def test_unknown_key_in_defaults_is_located_in_defaults() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a"}, steep=3))
    assert problems(exc) == [("defaults", "steep")]


@pytest.mark.parametrize(
    ("where", "field"),
    [("task 1", "steps"), ("task 1", "cfg_scale"), ("defaults", "seed"), ("batch", "priority")],
)
def test_true_or_false_is_no_number(where: str, field: str) -> None:
    """YAML's ``steps: yes`` is ``True``: refused by name, not run as 1 step."""
    task: dict[str, Any] = {"prompt": "a"}
    data = batch(task)
    {"task 1": task, "defaults": data["defaults"], "batch": data}[where][field] = True
    with pytest.raises(SpecError) as exc:
        parse_batch(data)
    [problem] = exc.value.problems
    assert problem.field == field and "not true or false" in problem.message


@pytest.mark.parametrize("n", [0, 11, -1])
def test_n_outside_1_to_10_is_a_problem(n: int) -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a"}, {"prompt": "b", "n": n}))
    assert problems(exc) == [("task 2", "n")]


@pytest.mark.parametrize("n", [1, 10])
def test_n_at_the_limits_is_accepted(n: int) -> None:
    [task] = resolve_tasks(parse_batch(batch({"prompt": "a", "n": n})), default_backend="p")
    assert task.n == n


def test_every_problem_is_reported_at_once() -> None:
    data = batch({"prompt": "a", "n": 0}, {"prompt": "b", "aspect_ratio": "5:4", "steps": 0})
    with pytest.raises(SpecError) as exc:
        parse_batch(data)
    assert sorted(problems(exc)) == [
        ("task 1", "n"),
        ("task 2", "aspect_ratio"),
        ("task 2", "steps"),
    ]


def test_missing_prompt_is_located() -> None:
    spec = parse_batch(batch({"prompt": "a"}, {"key": "k"}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="placeholder", source="b.json")
    assert exc.value.problems == [
        Problem("b.json", "task 2", "prompt", "is required (in the task or in defaults)")
    ]


def test_where_names_tasks_as_the_caller_says() -> None:
    spec = parse_batch(batch({"prompt": "a"}, {"key": "k"}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="p", where=lambda i: f"row {i + 2}")
    assert problems(exc) == [("row 3", "prompt")]


def test_random_seed_is_drawn_within_range() -> None:
    tasks = [{"prompt": str(i)} for i in range(200)]
    resolved = resolve_tasks(parse_batch(batch(*tasks, seed=-1)), default_backend="p")
    seeds = [task.seed for task in resolved]
    assert all(0 <= seed <= params.MAX_SEED for seed in seeds)
    assert len(set(seeds)) > 190  # drawn per task, not once per batch


def test_unset_seed_is_random_too() -> None:
    [task] = resolve_tasks(parse_batch(batch({"prompt": "a"})), default_backend="p")
    assert 0 <= task.seed <= params.MAX_SEED


def test_random_seed_follows_the_given_rng() -> None:
    spec = parse_batch(batch({"prompt": "a"}, {"prompt": "b", "seed": 5}, seed=-1))
    one = resolve_tasks(spec, default_backend="p", rng=random.Random(3))
    two = resolve_tasks(spec, default_backend="p", rng=random.Random(3))
    assert [t.seed for t in one] == [t.seed for t in two]
    assert one[1].seed == 5


@pytest.mark.parametrize("seed", [-2, params.MAX_SEED + 1])
def test_seed_out_of_range_is_a_problem(seed: int) -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a", "seed": seed}))
    assert problems(exc) == [("task 1", "seed")]


def test_more_than_four_reference_images_is_a_problem() -> None:
    refs = [f"r{i}.png" for i in range(params.MAX_REFERENCE_IMAGES + 1)]
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a", "reference_images": refs}))
    assert problems(exc) == [("task 1", "reference_images")]


def test_init_image_not_found_is_located(tmp_path: Path) -> None:
    spec = parse_batch(batch({"prompt": "a", "init_image": "missing.png"}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="p", base_dir=tmp_path)
    [problem] = exc.value.problems
    assert (problem.where, problem.field) == ("task 1", "init_image")
    assert problem.message == "file not found: missing.png"


def test_input_images_resolve_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(b"png")
    (tmp_path / "ref.png").write_bytes(b"png")
    data = {"prompt": "a", "init_image": "in.png", "reference_images": ["ref.png", "asset:9"]}
    [task] = resolve_tasks(parse_batch(batch(data)), default_backend="p", base_dir=tmp_path)
    assert task.init_image == str((tmp_path / "in.png").resolve())
    assert task.reference_images == (str((tmp_path / "ref.png").resolve()), "asset:9")


def test_missing_reference_image_is_located(tmp_path: Path) -> None:
    spec = parse_batch(batch({"prompt": "a", "reference_images": ["nope.png"]}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="p", base_dir=tmp_path)
    assert problems(exc) == [("task 1", "reference_images")]


def test_unknown_backend_is_a_problem() -> None:
    spec = parse_batch(batch({"prompt": "a"}, {"prompt": "b", "backend": "gpu"}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="sd", known_backends=["sd"])
    assert problems(exc) == [("task 2", "backend")]


def test_bad_size_is_a_problem_of_the_task() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a", "width": 1001}))
    assert problems(exc) == [("task 1", "width")]


def test_a_batch_needs_tasks() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch({"name": "x", "tasks": []})
    assert problems(exc) == [("", "tasks")]


def test_a_batch_must_be_a_mapping() -> None:
    with pytest.raises(SpecError, match="mapping"):
        parse_batch([{"prompt": "a"}], source="b.json")


def test_a_backend_chain_names_the_first_and_keeps_the_rest_in_params() -> None:
    spec = parse_batch(
        batch(
            {"prompt": "a"},
            {"prompt": "b", "backend": "c"},
            {"prompt": "c", "backend": "a, c"},  # a spreadsheet cell
            backend=["a", "b"],
        )
    )
    first, second, third = resolve_tasks(spec, default_backend="a", known_backends="abc")
    assert (first.backend, first.params_json()["backends"]) == ("a", ["a", "b"])
    assert (second.backend, "backends" in second.params_json()) == ("c", False)
    assert (third.backend, third.backends) == ("a", ("a", "c"))


def test_a_backend_chain_is_checked_whole() -> None:
    with pytest.raises(SpecError) as caught:
        parse_batch(batch({"prompt": "a", "backend": ["a", "a"]}, {"prompt": "b", "backend": []}))
    assert [p.message for p in caught.value.problems] == [
        "a backend chain names each backend once",
        "a backend chain names 1 to 10 backends",
    ]
    spec = parse_batch(batch({"prompt": "a", "backend": ["a", "nope"]}))
    with pytest.raises(SpecError, match=r"unknown backend 'nope'; configured: a$"):
        resolve_tasks(spec, default_backend="a", known_backends=["a"])
    spec = parse_batch(batch({"prompt": "a", "backend": ["x", "a", "y"]}))
    with pytest.raises(SpecError, match=r"unknown backends 'x', 'y'; configured: a, b$"):
        resolve_tasks(spec, default_backend="a", known_backends=["b", "a"])


# --- bad input reported whole -------------------------------------------------------------


def test_a_wrong_top_level_key_lists_the_top_level_keys() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch({"name": "x", "taks": [{"prompt": "a"}], "tasks": [{"prompt": "a"}]})
    [problem] = exc.value.problems
    assert (problem.where, problem.field) == ("", "taks")
    assert problem.message.endswith("known keys are: " + ", ".join(BATCH_KEYS))
    assert "negative_prompt" not in problem.message


def test_a_wrong_key_in_defaults_lists_parameters_but_not_key() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a"}, steep=3))
    message = exc.value.problems[0].message
    assert message.endswith("known keys are: " + ", ".join(PARAM_NAMES))


def test_a_task_that_is_not_a_mapping_says_what_it_is() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch({"name": "x", "tasks": ["a red fox"]})
    [problem] = exc.value.problems
    assert problem.where == "task 1"
    assert problem.message == "must be a mapping of keys to values, not the str 'a red fox'"


def test_schema_problems_carry_the_path_of_the_value() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(batch({"prompt": "a", "n": 0}, seed=-5))
    assert sorted(p.path or "" for p in exc.value.problems) == ["defaults.seed", "tasks[0].n"]


def test_a_partial_parse_keeps_every_task_and_only_the_valid_values() -> None:
    data = batch({"prompt": "a", "n": 0, "steps": 20}, "not a task", {"prompt": "c"}, seed=-5)
    spec = parse_batch(data, source="b.yaml", partial=True)
    assert [(p.where, p.field) for p in spec.problems] == [
        ("defaults", "seed"),
        ("task 1", "n"),
        ("task 2", ""),
    ]
    assert len(spec.tasks) == 3 and spec.name == "test"
    assert (spec.tasks[0].n, spec.tasks[0].steps, spec.defaults.seed) == (None, 20, None)


def test_a_valid_partial_parse_has_no_problems() -> None:
    assert parse_batch(batch({"prompt": "a"}), partial=True).problems == ()


def test_schema_value_and_file_problems_come_in_one_error(tmp_path: Path) -> None:
    data = batch(
        {"prompt": "a", "n": 0},
        {"prompt": "b", "aspect_ratio": "5:7"},
        {"prompt": "c", "init_image": "missing.png", "backend": "gpu"},
        {"key": "no prompt"},
    )
    spec = parse_batch(data, source="b.yaml", partial=True)
    with pytest.raises(SpecError) as exc:
        resolve_tasks(
            spec, default_backend="sd", known_backends=["sd"], base_dir=tmp_path, source="b.yaml"
        )
    assert problems(exc) == [
        ("task 1", "n"),
        ("task 2", "aspect_ratio"),
        ("task 3", "init_image"),
        ("task 3", "backend"),
        ("task 4", "prompt"),
    ]
    assert {p.source for p in exc.value.problems} == {"b.yaml"}


def test_a_value_left_out_by_the_schema_is_not_reported_twice() -> None:
    # the bad prompt is left out of the salvaged task; "prompt is required" would repeat it
    spec = parse_batch(batch({"prompt": "x" * 20_001}, "not a task"), partial=True)
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="p")
    assert problems(exc) == [("task 1", "prompt"), ("task 2", "")]


def test_an_input_image_in_defaults_is_reported_once_in_defaults(tmp_path: Path) -> None:
    spec = parse_batch(batch({"prompt": "a"}, {"prompt": "b"}, init_image="gone.png"))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="p", base_dir=tmp_path)
    assert problems(exc) == [("defaults", "init_image")]


def test_every_missing_reference_image_is_named(tmp_path: Path) -> None:
    spec = parse_batch(batch({"prompt": "a", "reference_images": ["one.png", "two.png"]}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="p", base_dir=tmp_path)
    assert [p.message for p in exc.value.problems] == [
        "file not found: one.png",
        "file not found: two.png",
    ]


def test_only_uploads_refuses_paths_without_looking_at_files(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"png")
    data = batch({"prompt": "a", "init_image": "there.png"}, {"prompt": "b", "seed": -9})
    spec = parse_batch(data, partial=True)
    tasks, found = check_tasks(spec, default_backend="p", base_dir=tmp_path, uploads_only=True)
    assert [(p.where, p.field) for p in found] == [("task 2", "seed"), ("task 1", "init_image")]
    assert "is not an uploaded image" in found[1].message
    assert tasks[0].init_image is None


def test_many_problems_are_capped() -> None:
    data = batch(*[{"prompt": "a", "n": 0} for _ in range(MAX_PROBLEMS + 5)])
    with pytest.raises(SpecError) as exc:
        parse_batch(data, source="b.json")
    assert len(exc.value.problems) == MAX_PROBLEMS + 1
    assert exc.value.problems[-1].message == "... and 5 more problems"


# --- items and templates ------------------------------------------------------------------


def storyboard(*items: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "name": "story",
        "template": "{style}. {title}: {visual_desc}",
        "vars": {"style": "ink wash"},
        "items": list(items),
        **top,
    }


def test_items_become_tasks_after_the_batch_own() -> None:
    spec = parse_batch(
        storyboard(
            {"id": "s1", "title": "Dawn", "visual_desc": "a harbour", "n": 2},
            {"id": 2, "title": "Noon", "visual_desc": "gulls", "style": "oil"},
            tasks=[{"prompt": "a cover", "key": "cover"}],
            defaults={"aspect_ratio": "16:9"},
        )
    )
    assert spec.items is None  # made tasks
    cover, first, second = resolve_tasks(spec, default_backend="placeholder")
    assert [t.key for t in (cover, first, second)] == ["cover", "s1", "2"]
    assert [t.position for t in (cover, first, second)] == [1, 2, 3]
    assert (first.prompt, first.n, first.width) == ("ink wash. Dawn: a harbour", 2, 1344)
    assert second.prompt == "oil. Noon: gulls"
    assert cover.item is None
    assert first.item == {"id": "s1", "title": "Dawn", "visual_desc": "a harbour", "n": 2}


def test_a_parsed_spec_sent_on_parses_to_the_same_tasks() -> None:
    """What the Python client sends: the spec's JSON, items already made tasks."""
    spec = parse_batch(storyboard({"id": "a", "title": "t", "visual_desc": "v", "seed": 3}))
    again = parse_batch(spec.model_dump(mode="json", exclude_none=True))
    assert again.tasks == spec.tasks and again.template == spec.template


def test_an_item_id_is_a_key_unique_across_tasks_and_items() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(
            {
                "name": "x",
                "tasks": [{"prompt": "a"}, {"prompt": "b", "key": "b"}],
                "items": [{"id": 1, "prompt": "c"}, {"id": "b", "prompt": "d"}],
            }
        )
    assert problems(exc) == [("item 1", "id"), ("item 2", "id")]


def test_item_problems_are_reported_with_the_batch_own() -> None:
    data = storyboard(
        {"id": "slide-3", "title": "t"},
        {"id": "s4", "title": "t", "visual_desc": "v", "colour": "red", "seed": "x"},
        tasks=[{"prompt": "a", "n": 0}],
        priority=1000,
    )
    with pytest.raises(SpecError) as exc:
        parse_batch(data, source="story.yaml")
    assert problems(exc) == [
        ("task 1", "n"),
        ("", "priority"),
        ("item 'slide-3'", "prompt"),
        ("item 's4'", "seed"),
    ]
    assert str(exc.value.problems[2]) == (
        "story.yaml, item 'slide-3', field 'prompt': template field 'visual_desc' is missing"
    )


def test_a_partial_spec_with_items_reports_later_problems_by_item() -> None:
    spec = parse_batch(
        storyboard(
            {"id": "a", "title": "t"},
            {"id": "b", "title": "t", "visual_desc": "v", "backend": "nope"},
            {"title": "no id", "visual_desc": "v", "aspect_ratio": "5:7"},
        ),
        partial=True,
    )
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="sd", known_backends=["sd"])
    assert problems(exc) == [
        ("item 'a'", "prompt"),
        ("item 3", "id"),
        ("item 3", "aspect_ratio"),
        ("item 'b'", "backend"),
    ]


def test_items_that_are_not_a_list_of_objects_are_located() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch({"name": "x", "items": "slides"})
    assert problems(exc) == [("", "items")]
    with pytest.raises(SpecError) as exc:
        parse_batch({"name": "x", "items": [{"id": "a", "prompt": "p"}, ["b"]]})
    assert problems(exc) == [("item 2", "")]
    assert exc.value.problems[0].path == "items[1]"


def test_a_batch_needs_tasks_or_items() -> None:
    for data in ({"name": "x"}, {"name": "x", "items": []}, {"name": "x", "tasks": []}):
        with pytest.raises(SpecError, match="'tasks' or 'items'") as exc:
            parse_batch(data)
        assert problems(exc) == [("", "tasks")]
    assert len(parse_batch({"name": "x", "items": [{"id": 1, "prompt": "p"}]}).tasks) == 1


def test_a_template_that_is_not_valid_is_one_problem_of_the_batch() -> None:
    with pytest.raises(SpecError) as exc:
        parse_batch(storyboard({"id": "a"}, {"id": "b"}, template="{title!r}"))
    assert problems(exc) == [("", "template")]
    assert exc.value.problems[0].path == "template"


def test_a_spec_built_without_parse_batch_has_its_items_made_tasks_when_checked() -> None:
    spec = BatchSpec.model_validate(storyboard({"id": "a", "title": "t", "visual_desc": "v"}))
    [task] = resolve_tasks(spec, default_backend="placeholder")
    assert (task.key, task.prompt) == ("a", "ink wash. t: v")
    broken = BatchSpec.model_validate(storyboard({"id": "a", "title": "t"}))
    with pytest.raises(SpecError) as exc:
        resolve_tasks(broken, default_backend="placeholder")
    assert problems(exc) == [("item 'a'", "prompt")]


def test_task_places_name_tasks_and_items() -> None:
    spec = parse_batch(
        storyboard({"id": "a", "title": "t", "visual_desc": "v"}, tasks=[{"prompt": "p"}])
    )
    where = TaskPlaces.of(spec)
    assert (where(0), where(1)) == ("task 1", "item 'a'")


def test_the_top_level_keys_name_items_template_and_vars() -> None:
    assert {"items", "template", "vars"} <= set(BATCH_KEYS)


def test_a_template_that_is_not_text_is_one_problem_too() -> None:
    spec = parse_batch(storyboard({"id": "a"}, {"id": "b"}, template=["x"]), partial=True)
    with pytest.raises(SpecError) as exc:
        resolve_tasks(spec, default_backend="placeholder")
    assert problems(exc) == [("", "template")]
