"""An items batch with nested fields out to a spreadsheet and in again, as a user types it:
`kiln run examples/storyboard.yaml`, `kiln export --to sb.csv|sb.xlsx`, `kiln run sb.csv
--template ...` gives the same tasks; and `kiln init --xlsx sub` says what to type next."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelkiln.db.tables import tasks
from pixelkiln.inputs.headers import COLUMN_NAMES
from tests.acceptance.test_cli import kiln
from tests.processes import query
from tests.sheets import sheet_rows

EXAMPLE = Path(__file__).parents[2] / "examples" / "storyboard.yaml"
TEMPLATE = "{style}. Shot {id}, {camera}: {action} {setting.place}, {setting.time}"
STYLE = "style=storybook watercolour, soft light"


def _tasks(folder: Path, batch: int) -> list[tuple[str, str, dict[str, object]]]:
    """(key, prompt, item without its parameter columns) of each task of the batch."""
    columns = select(tasks.c.key, tasks.c.prompt, tasks.c.item)
    rows = query(folder, columns.where(tasks.c.batch_id == batch).order_by(tasks.c.id))
    return [
        (str(key), str(prompt), {k: v for k, v in item.items() if k not in COLUMN_NAMES})
        for key, prompt, item in rows
    ]


@pytest.mark.parametrize(("target", "headers"), [("sb.csv", "en"), ("sb.xlsx", "zh")])
def test_an_exported_storyboard_runs_again_as_the_same_tasks(
    tmp_path: Path, target: str, headers: str
) -> None:
    shutil.copy(EXAMPLE, tmp_path / "storyboard.yaml")
    assert kiln(tmp_path, "run", "storyboard.yaml", "--quiet").returncode == 0
    done = kiln(tmp_path, "export", "storyboard", "--to", target, "--headers", headers)
    assert done.returncode == 0, done.stderr
    if target.endswith(".xlsx"):  # nested fields are columns of their own, by their path
        header = sheet_rows(tmp_path / target)[0]
        assert {"setting.place", "setting.time", "后端", "迭代步数"} <= set(header)
    again = kiln(tmp_path, "run", target, "--template", TEMPLATE, "--var", STYLE, "--quiet")
    assert again.returncode == 0, again.stderr
    first, second = _tasks(tmp_path, 1), _tasks(tmp_path, 2)
    assert len(second) == 6 and second == first
    assert first[0][2]["setting"] == {"place": "inside the lighthouse", "time": "at dusk"}


def test_chinese_nested_fields_go_round(tmp_path: Path) -> None:
    spec = {
        "name": "分镜",
        "template": "{画面.镜头}：{画面.描述}",  # noqa: RUF001
        "defaults": {"width": 64, "height": 64},
        "items": [
            {"id": "一", "画面": {"镜头": "远景", "描述": "灯塔"}},
            {"id": "二", "画面": {"镜头": "特写", "描述": "点灯的手"}},
        ],
    }
    (tmp_path / "分镜.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    assert kiln(tmp_path, "run", "分镜.json", "--quiet").returncode == 0
    assert kiln(tmp_path, "export", "1", "--to", "out.xlsx", "--headers", "zh").returncode == 0
    again = kiln(tmp_path, "run", "out.xlsx", "--template", spec["template"], "--quiet")
    assert again.returncode == 0, again.stderr
    assert _tasks(tmp_path, 2) == _tasks(tmp_path, 1)
    assert _tasks(tmp_path, 2)[1][1] == "特写：点灯的手"  # noqa: RUF001


def test_init_in_a_folder_says_what_to_type(tmp_path: Path) -> None:
    done = kiln(tmp_path, "init", "--xlsx", "my sub")
    assert done.returncode == 0, done.stderr
    assert "Next: cd 'my sub' && kiln run batch.yaml (or kiln run batch.xlsx)" in done.stdout
    here = kiln(tmp_path / "my sub", "init", "--force")
    assert "Next: kiln run batch.yaml\n" in here.stdout
