"""Items and templates end to end: batch files in every format run through ``Kiln``.

A storyboard of six items (two the placeholder backend refuses) is written as
YAML, TOML and JSON; each runs on a real database and scheduler, and its tasks
are keyed by item id, hold the final prompt and keep their item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.tasks import list_tasks
from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import load_batch_file
from pixelkiln.models import TaskStatus
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]

ITEMS: list[dict[str, Any]] = [
    {"id": "s1", "title": "Dawn", "visual_desc": "a harbour", "scene": {"mood": "calm"}},
    {"id": "s2", "title": "Storm", "visual_desc": "REJECT waves", "scene": {"mood": "wild"}},
    {"id": "s3", "title": "Gulls", "visual_desc": "birds", "scene": {"mood": "calm"}, "n": 2},
    {"id": 4, "title": "Quay", "visual_desc": "a boat", "scene": {"mood": "tired"}},
    {"id": "s5", "title": "Night", "visual_desc": "REJECT lamp", "scene": {"mood": "dark"}},
    {"id": "s6", "title": "Sunrise", "visual_desc": "gold", "scene": {"mood": "warm"}, "seed": 9},
]
TEMPLATE = "{style}. {title}: {visual_desc} ({scene.mood})"


def yaml_text() -> str:
    lines = [
        "name: story",
        f'template: "{TEMPLATE}"',
        "vars: {style: ink wash}",
        "defaults: {width: 64, height: 64}",
        "items:",
    ]
    for item in ITEMS:
        lines.append(f"  - {json.dumps(item)}")  # JSON is YAML: one flow mapping per item
    return "\n".join(lines) + "\n"


def toml_text() -> str:
    head = f'name = "story"\ntemplate = "{TEMPLATE}"\n[vars]\nstyle = "ink wash"\n'
    head += "[defaults]\nwidth = 64\nheight = 64\n"
    blocks = []
    for item in ITEMS:
        scene = item["scene"]
        fields = {k: v for k, v in item.items() if k != "scene"}
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
        blocks.append(f'[[items]]\n{body}\nscene = {{ mood = "{scene["mood"]}" }}\n')
    return head + "\n".join(blocks)


def json_text() -> str:
    spec = {
        "name": "story",
        "template": TEMPLATE,
        "vars": {"style": "ink wash"},
        "defaults": {"width": 64, "height": 64},
        "items": ITEMS,
    }
    return json.dumps(spec)


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> Any:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[
            {
                "name": "placeholder",
                "type": "placeholder",
                "options": {"reject_if_prompt_contains": "REJECT"},
            }
        ],
    )
    async with Kiln(settings) as opened:
        yield opened


@pytest.mark.parametrize(
    ("name", "text"),
    [("story.yaml", yaml_text), ("story.toml", toml_text), ("story.json", json_text)],
)
async def test_a_storyboard_runs_one_task_per_item(
    kiln: Kiln, tmp_path: Path, name: str, text: Any
) -> None:
    path = tmp_path / name
    path.write_text(text())
    loaded = load_batch_file(path)
    batch_id = await kiln.submit(
        loaded.spec, source_name=loaded.source, base_dir=loaded.base_dir, where=loaded.where
    )
    await kiln.run_until_done([batch_id])
    tasks = await kiln.db.aread(list_tasks, batch_id)
    assert [t.key for t in tasks] == ["s1", "s2", "s3", "4", "s5", "s6"]
    assert tasks[0].prompt == "ink wash. Dawn: a harbour (calm)"
    assert tasks[3].prompt == "ink wash. Quay: a boat (tired)"
    assert [t.item for t in tasks] == ITEMS
    statuses = [t.status for t in tasks]
    assert statuses.count(TaskStatus.FAILED) == 2 and statuses.count(TaskStatus.SUCCEEDED) == 4
    assert [t.key for t in tasks if t.status == TaskStatus.FAILED] == ["s2", "s5"]
    assert tasks[2].params["n"] == 2 and tasks[5].params["seed"] == 9


async def test_the_storyboard_example_runs_as_it_is(kiln: Kiln) -> None:
    loaded = load_batch_file(REPO / "examples" / "storyboard.yaml")
    batch_id = await kiln.submit(loaded.spec, base_dir=loaded.base_dir, where=loaded.where)
    await kiln.run_until_done([batch_id])
    tasks = await kiln.db.aread(list_tasks, batch_id)
    assert [t.key for t in tasks] == [f"s0{i}" for i in range(1, 7)]
    assert all(t.status == TaskStatus.SUCCEEDED for t in tasks)
    assert tasks[0].prompt.startswith("storybook watercolour, soft light. Shot s01, wide shot:")
    assert "warm morning light" in tasks[5].prompt


def test_every_problem_of_a_bad_storyboard_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
name: story
template: "{style}. {title}: {visual_desc}"
vars: {style: ink}
tasks:
  - {key: cover, prompt: a cover, n: 0}
items:
  - {id: slide-3, title: Dawn}
  - {id: cover, title: a, visual_desc: b}
  - {title: no id, visual_desc: c, aspect_ratio: "5:7"}
  - {id: s4, title: t, visual_desc: v, init_image: missing.png}
"""
    path = tmp_path / "story.yaml"
    path.write_text(text)
    loaded = load_batch_file(path, partial=True)
    with pytest.raises(SpecError) as exc:
        loaded.resolve(default_backend="placeholder")
    assert [(p.where, p.field) for p in exc.value.problems] == [
        ("task 1", "n"),
        ("item 'slide-3'", "prompt"),
        ("item 2", "id"),
        ("item 3", "id"),
        ("item 3", "aspect_ratio"),
        ("item 's4'", "init_image"),
    ]
    assert str(exc.value.problems[1]) == (
        f"{path}, item 'slide-3', field 'prompt': template field 'visual_desc' is missing"
    )


def test_yaml_dates_in_an_item_are_stored_as_text(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("name: d\nitems:\n  - {id: a, prompt: p, shot_on: 2024-05-01}\n")
    [task] = load_batch_file(path).resolve(default_backend="placeholder")
    assert task.item == {"id": "a", "prompt": "p", "shot_on": "2024-05-01"}
