"""A sweep batch file through `kiln run`: its tasks stored with their axes and keys, the
batch with its sweep, and the example's wildcard lists read from beside the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sqlalchemy import select
from test_cli import REPO, kiln, query

from pixelkiln.db.tables import batches, tasks


def test_the_sweep_example_runs_and_records_its_axes(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples" / "wildcards", tmp_path / "wildcards")
    shutil.copy(REPO / "examples" / "sweep.yaml", tmp_path / "sweep.yaml")
    ran = kiln(tmp_path, "run", "sweep.yaml", "--quiet", "--report", "report.json")
    assert ran.returncode == 0, ran.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["succeeded"] == report["totals"]["tasks"] == 72

    (extra,) = query(tmp_path, select(batches.c.extra))[0]
    assert extra["sweep"] == {
        "x": {"cfg_scale": [5, 7, 9]},
        "y": {"sampler": ["Euler a", "DPM++ 2M"]},
        "z": {"$mood": ["calm morning", "stormy night"]},
    }
    columns = select(tasks.c.key, tasks.c.prompt, tasks.c.axes, tasks.c.params)
    rows = query(tmp_path, columns.order_by(tasks.c.position))
    key, prompt, axes, params = rows[4]
    assert key == "scene#1|cfg_scale=7|sampler=DPM++ 2M|$mood=calm morning"
    assert prompt == "a fox in a forest, ink drawing, calm morning"
    assert axes == {
        "x": {"cfg_scale": 7},
        "y": {"sampler": "DPM++ 2M"},
        "z": {"$mood": "calm morning"},
    }
    assert params["sampler"] == "DPM++ 2M"
    assert len({row[0] for row in rows}) == 72
    assert {row[1] for row in rows if row[0].startswith("scene#6|")} == {
        f"a owl in a forest, watercolour painting, warm palette, {mood}"
        for mood in ("calm morning", "stormy night")
    }


def test_a_bad_sweep_exits_2_naming_the_value(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(
        "name: g\ntasks: [{prompt: 'a {0::fox|owl}'}]\nsweep: {x: {cfg_scale: [5, 500]}}\n"
    )
    ran = kiln(tmp_path, "run", "grid.yaml")
    assert ran.returncode == 2
    assert "sweep.x.cfg_scale[1]" in ran.stderr
    assert "the weight at column 4 must be more than 0" in ran.stderr
