"""Sweeps and wildcard expansion: counts, keys, axes, located problems, the cap, storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.intake import prepare_batch
from pixelkiln.exceptions import SpecError
from pixelkiln.specs import parse_batch
from pixelkiln.storage import LocalStorage
from pixelkiln.sweeps import count_tasks

SWEEP = {"x": {"cfg_scale": [5, 7, 9]}, "y": {"sampler": ["Euler a", "DPM++ 2M"]}}


def batch(tasks: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"name": "grid", "defaults": {"width": 64, "height": 64}, "tasks": tasks, **top}


def prepare(data: dict[str, Any], folder: Path, **options: Any) -> NewBatch:
    spec = parse_batch(data, source="grid.yaml", partial=True)
    return prepare_batch(
        spec,
        storage=LocalStorage(folder / "data"),
        default_backend="placeholder",
        known_backends=["placeholder", "other"],
        max_attempts=3,
        source_name="grid.yaml",
        base_dir=folder,
        **options,
    )


def problems(data: dict[str, Any], folder: Path, **options: Any) -> list[tuple[str, str, str]]:
    with pytest.raises(SpecError) as exc:
        prepare(data, folder, **options)
    return [(p.where, p.field, p.message) for p in exc.value.problems]


def test_every_task_times_every_combination_keyed_by_its_values(tmp_path: Path) -> None:
    data = batch([{"prompt": "a fox", "key": "fox"}, {"prompt": "a hen"}], sweep=SWEEP)
    assert count_tasks(parse_batch(data)) == 12
    new = prepare(data, tmp_path)
    assert [t.position for t in new.tasks] == list(range(1, 13))
    assert [t.key for t in new.tasks[:3]] == [
        "fox|cfg_scale=5|sampler=Euler a",
        "fox|cfg_scale=7|sampler=Euler a",
        "fox|cfg_scale=9|sampler=Euler a",
    ]
    assert new.tasks[6].key == "2|cfg_scale=5|sampler=Euler a"  # a task without a key: its place
    made = [(t.cfg_scale, t.sampler) for t in new.tasks[3:5]]
    assert made == [(5.0, "DPM++ 2M"), (7.0, "DPM++ 2M")]
    assert new.tasks[4].axes == {"x": {"cfg_scale": 7}, "y": {"sampler": "DPM++ 2M"}}
    assert len({t.key for t in new.tasks}) == 12
    assert new.extra == {"sweep": SWEEP}


def test_sizes_fragments_and_wildcards_multiply(tmp_path: Path) -> None:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "styles.txt").write_text("# styles\nink\n{oil|water}colour\n")
    data = batch(
        [{"prompt": "a {red|blue} fox, __styles__, $mood", "key": "fox"}],
        sweep={"x": {"size": ["512x512", "640x448"]}, "z": {"$mood": ["calm", "angry"]}},
    )
    assert count_tasks(parse_batch(data), tmp_path) == 2 * 3 * 2 * 2
    new = prepare(data, tmp_path)
    assert len(new.tasks) == 24
    first, second = new.tasks[0], new.tasks[1]
    assert first.key == "fox#1|size=512x512|$mood=calm"
    assert (first.prompt, first.width, first.height) == ("a red fox, ink, calm", 512, 512)
    assert (second.width, second.height) == (640, 448)
    assert new.tasks[2].axes == {"x": {"size": "512x512"}, "z": {"$mood": "angry"}}
    assert {t.prompt for t in new.tasks if t.key.startswith("fox#6|")} == {
        "a blue fox, watercolour, calm",
        "a blue fox, watercolour, angry",
    }


def test_negative_prompts_expand_with_the_prompt(tmp_path: Path) -> None:
    data = batch([{"prompt": "{a|b|c}", "negative_prompt": "{x|y}"}])
    new = prepare(data, tmp_path)
    assert [(t.prompt, t.negative_prompt) for t in new.tasks] == [
        (p, n) for p in "abc" for n in "xy"
    ]
    assert [t.key for t in new.tasks] == [f"1#{i}" for i in range(1, 7)]
    assert new.extra == {}


def test_random_draws_are_recorded_and_reproducible(tmp_path: Path) -> None:
    data = batch([{"prompt": "{1::red|9::blue} {fox|hen|owl}"}], expand={"random": 20})
    new = prepare(data, tmp_path)
    assert len(new.tasks) == 20 and [t.key for t in new.tasks][:2] == ["1#1", "1#2"]
    seed = new.extra["expand"]["seed"]
    assert new.extra["expand"] == {"random": 20, "seed": seed}
    again = prepare(batch(data["tasks"], expand={"random": 20, "seed": seed}), tmp_path)
    assert [t.prompt for t in again.tasks] == [t.prompt for t in new.tasks]
    assert sum(t.prompt.startswith("blue") for t in new.tasks) > 10


def test_a_spec_that_expands_nothing_is_made_as_before(tmp_path: Path) -> None:
    new = prepare(batch([{"prompt": "a {{literal}} fox", "key": "k"}, {"prompt": "b"}]), tmp_path)
    assert [(t.key, t.prompt, t.axes) for t in new.tasks] == [
        ("k", "a {{literal}} fox", None),  # braces without "|" are text, as written
        ("2", "b", None),
    ]


def test_long_keys_keep_their_start_and_a_hash(tmp_path: Path) -> None:
    data = batch([{"prompt": "p", "key": "k" * 195}], sweep={"x": {"seed": [1, 2]}})
    keys = [t.key for t in prepare(data, tmp_path).tasks]
    assert all(len(k) == 200 and k.startswith("k" * 183 + "~") for k in keys)
    assert len(set(keys)) == 2


def test_bad_axis_values_are_located_in_the_sweep(tmp_path: Path) -> None:
    data = batch(
        [{"prompt": "a fox"}],
        sweep={
            "x": {"cfg_scale": [5, 7, 500]},
            "y": {"backend": ["placeholder", "nope"]},
            "z": {"size": ["512x512", "big"]},
        },
    )
    found = problems(data, tmp_path)
    assert [field for _, field, _ in found] == [
        "sweep.x.cfg_scale[2]",
        "sweep.y.backend[1]",
        "sweep.z.size[1]",
    ]
    assert "less than or equal to 100" in found[0][2]
    assert found[1][2].startswith("unknown backend 'nope'")


def test_bad_axes_say_what_an_axis_is(tmp_path: Path) -> None:
    data = batch(
        [{"prompt": "a fox"}],
        sweep={"w": {"steps": [1]}, "x": {"prompt": ["a"]}, "y": {"seed": [1, 1]}, "z": {}},
    )
    found = problems(data, tmp_path)
    assert [field for _, field, _ in found] == [
        "sweep.w",
        "sweep.x.prompt",
        "sweep.y.seed[1]",
        "sweep.z",
    ]
    assert "prompt fragment '$name'" in found[1][2]
    assert found[2][2] == "is the value at [0] again; an axis lists each value once"
    unused = problems(batch([{"prompt": "a fox"}], sweep={"x": {"$mood": ["calm"]}}), tmp_path)
    assert unused == [("", "sweep.x.$mood", "no prompt has '$mood' in it to replace")]


def test_wildcard_problems_name_the_task_and_field(tmp_path: Path) -> None:
    (tmp_path / "wildcards").mkdir()
    data = batch([{"prompt": "fine"}, {"prompt": "a {0::b|c}", "negative_prompt": "__nope__"}])
    assert problems(data, tmp_path) == [
        ("task 2", "prompt", "the weight at column 4 must be more than 0"),
        ("task 2", "negative_prompt", "'__nope__' at column 1: no file wildcards/nope.txt"),
    ]


def test_over_the_cap_nothing_is_made(tmp_path: Path) -> None:
    data = batch([{"prompt": "{a|b|c|d|e|f|g|h|i|j}" * 6}], sweep=SWEEP)
    assert count_tasks(parse_batch(data)) == 6_000_000
    found = problems(data, tmp_path, max_tasks=1000)
    assert len(found) == 1
    assert found[0][2].startswith("the batch makes 6,000,000 tasks, more than the 1,000")


def test_api_submissions_have_no_lists(tmp_path: Path) -> None:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "x.txt").write_text("a\n")
    new = prepare(batch([{"prompt": "__x__"}]), tmp_path, uploads_only=True)
    assert [t.prompt for t in new.tasks] == ["__x__"]  # no folder: text


def test_stored_tasks_keep_their_axes_and_the_batch_its_sweep(db: Database, tmp_path: Path) -> None:
    new = prepare(batch([{"prompt": "a {red|blue} fox", "key": "fox"}], sweep=SWEEP), tmp_path)
    batch_id = db.write(create_batch, new)
    tasks = db.read(list_tasks, batch_id)
    assert len(tasks) == 12
    assert tasks[0].key == "fox#1|cfg_scale=5|sampler=Euler a"
    assert tasks[0].axes == {"x": {"cfg_scale": 5}, "y": {"sampler": "Euler a"}}
    assert tasks[-1].axes == {"x": {"cfg_scale": 9}, "y": {"sampler": "DPM++ 2M"}}
    assert tasks[-1].prompt == "a blue fox"
    assert db.read(get_batch, batch_id).extra == {"sweep": SWEEP}
