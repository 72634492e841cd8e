"""Contact sheets through `kiln`: a 3 × 3 × 2 sweep against the fake WebUI, `kiln run`
killed half way (SIGKILL), `kiln sheet` drawing placeholders for what is missing, `kiln
resume`, and the sheets then byte-equal to those of a run that was never interrupted;
each cell the matching task's image, a label over each column and left of each row."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from test_cli import kiln, start, wait_for

from pixelkiln.db.tables import images, tasks
from pixelkiln.sheets import PLACEHOLDER, Cell, Layout, SheetPlan, layout
from pixelkiln.testing import FakeSDWebUI
from tests.processes import query
from tests.sheet_sweeps import SWEEP, mark_sweep_in, plain_spec

#: the spec's own sweep: seeds across, so every cell differs
REAL_SWEEP = {
    "x": {"seed": [11, 12, 13]},
    "y": {"sampler": ["Euler", "DDIM", "DPM++ 2M"]},
    "z": {"model": ["m1", "m2"]},
}


def _config(folder: Path, url: str) -> None:
    folder.mkdir()
    (folder / "kiln.toml").write_text(
        f"""
[scheduler]
concurrency = 2
retry_base_delay = 0.05
poll_interval = 0.05

[[backends]]
name = "webui"
type = "sdwebui"
urls = ["{url}"]
concurrency = 2
"""
    )


def _geometry(sweep: dict[str, dict[str, list[Any]]], title: str) -> Layout:
    (x_name, xs), (y_name, ys) = next(iter(sweep["x"].items())), next(iter(sweep["y"].items()))
    empty = tuple(tuple(Cell() for _ in xs) for _ in ys)
    columns = tuple(f"{x_name}={v}" for v in xs)
    rows = tuple(f"{y_name}={v}" for v in ys)
    return layout(SheetPlan(title, columns, rows, empty, (64, 64)))


def _inked(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    return sum(1 for p in image.crop(box).convert("L").tobytes() if p < 250)


def _check_sheet(folder: Path, sheet: Path, sweep: dict[str, dict[str, list[Any]]], z: str) -> int:
    """Labels in place; each cell its task's image or a grey placeholder. Returns how many
    cells are placeholders."""
    box = _geometry(sweep, f"sweep · model={z}")
    image = Image.open(sheet).convert("RGB")
    assert image.size == (box.width, box.height)
    assert all(_inked(image, box.header_box(c)) > 30 for c in range(3))
    assert all(_inked(image, box.label_box(r)) > 30 for r in range(3))
    (x_name, xs), (y_name, ys) = next(iter(sweep["x"].items())), next(iter(sweep["y"].items()))
    first = (
        select(images.c.path)
        .where(images.c.task_id == tasks.c.id, images.c.index == 0)
        .scalar_subquery()
    )
    found = query(folder, select(tasks.c.axes, first).where(tasks.c.batch_id == 1))
    grey = 0
    for axes, path in found:
        if axes["z"]["model"] != z:
            continue
        r, c = ys.index(axes["y"][y_name]), xs.index(axes["x"][x_name])
        cell = image.crop(box.cell_box(r, c))
        if path is None:
            assert cell.getpixel((1, 1)) == PLACEHOLDER, (r, c)
            grey += 1
            continue
        stored = Image.open(folder / "kiln-data" / path).convert("RGB")
        expected = stored.resize(cell.size, Image.Resampling.LANCZOS)
        assert cell.tobytes() == expected.tobytes(), (r, c)
    return grey


def _kill_half_way(folder: Path, webui: FakeSDWebUI, spec: str) -> None:
    webui.hold()  # nine tasks finish, then two stay running until the process is killed
    webui.release(9)
    runner = start(folder, "run", spec, "--quiet")
    wait_for(folder, "SELECT n_succeeded FROM batches WHERE id = 1", 9)
    wait_for(folder, "SELECT n_running FROM batches WHERE id = 1", 2)
    runner.send_signal(signal.SIGKILL)
    runner.communicate(timeout=60)


def _sheets(folder: Path, out: str) -> list[Path]:
    done = kiln(folder, "sheet", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    paths = [folder / out / f"batch-1-sheet-z{i}-m{i}.png" for i in (1, 2)]
    for path in paths:
        assert f"Wrote {path.relative_to(folder)}" in done.stdout or str(path) in done.stdout
    return paths


def _resume_and_compare(
    straight: Path, halted: Path, webui: FakeSDWebUI, sweep: dict[str, dict[str, list[Any]]]
) -> None:
    succeeded = query(halted, "SELECT n_succeeded FROM batches")[0][0]
    assert 9 <= succeeded < 18
    partial = _sheets(halted, "partial")
    greys = [_check_sheet(halted, p, sweep, f"m{i}") for i, p in enumerate(partial, 1)]
    assert sum(greys) == 18 - succeeded

    webui.release()
    resumed = kiln(halted, "resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    after, before = _sheets(halted, "sheets"), _sheets(straight, "sheets")
    for i, (one, other) in enumerate(zip(after, before, strict=True), 1):
        assert _check_sheet(halted, one, sweep, f"m{i}") == 0
        assert one.read_bytes() == other.read_bytes()
        # a sheet with placeholders filled in changed; one complete before did not
        assert (partial[i - 1].read_bytes() != one.read_bytes()) is (greys[i - 1] > 0)


@pytest.mark.slow
def test_a_sweep_killed_half_way_and_resumed_draws_the_uninterrupted_sheets(
    tmp_path: Path, own_database: Callable[[Path], None]
) -> None:
    """The sweep recorded on a plain batch (as a sweep expansion records it)."""
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    with FakeSDWebUI(models=("m1", "m2")) as webui:
        for folder in (straight, halted):
            _config(folder, webui.url)
            own_database(folder)
            (folder / "sweep.json").write_text(json.dumps(plain_spec(name="sweep")))
        done = kiln(straight, "run", "sweep.json", "--quiet")
        assert done.returncode == 0, done.stderr
        _kill_half_way(halted, webui, "sweep.json")
        for folder in (straight, halted):
            mark_sweep_in(folder, 1)
        _resume_and_compare(straight, halted, webui, SWEEP)


@pytest.mark.slow
def test_a_sweep_spec_killed_half_way_and_resumed_draws_the_uninterrupted_sheets(
    tmp_path: Path, own_database: Callable[[Path], None]
) -> None:
    """The same, from a spec's own ``sweep:`` with explicit seeds."""
    spec = {
        "name": "sweep",
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": "a lighthouse", "key": "lighthouse"}],
        "sweep": REAL_SWEEP,
    }
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    with FakeSDWebUI(models=("m1", "m2")) as webui:
        for folder in (straight, halted):
            _config(folder, webui.url)
            own_database(folder)
            (folder / "sweep.json").write_text(json.dumps(spec))
        done = kiln(straight, "run", "sweep.json", "--quiet")
        assert done.returncode == 0, done.stderr
        assert query(straight, "SELECT n_tasks FROM batches") == [(18,)]
        _kill_half_way(halted, webui, "sweep.json")
        _resume_and_compare(straight, halted, webui, REAL_SWEEP)


@pytest.mark.slow
def test_kiln_sheet_says_clearly_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text('[[backends]]\nname = "p"\ntype = "placeholder"\n')
    (tmp_path / "plain.json").write_text(json.dumps({"name": "plain", "tasks": [{"prompt": "a"}]}))
    assert kiln(tmp_path, "run", "plain.json", "--quiet").returncode == 0
    plain = kiln(tmp_path, "sheet", "1")
    assert plain.returncode == 2 and "batch 1 is not a sweep" in plain.stderr
    (tmp_path / "sweep.json").write_text(json.dumps(plain_spec(name="grid")))
    assert kiln(tmp_path, "run", "sweep.json", "--quiet").returncode == 0
    mark_sweep_in(tmp_path, 2)
    unknown = kiln(tmp_path, "sheet", "grid", "--z", "m7")
    assert unknown.returncode == 2 and "its values: m1, m2" in unknown.stderr
    one_file = kiln(tmp_path, "sheet", "2", "--out", "all.png")
    assert one_file.returncode == 2 and "2 sheets" in one_file.stderr
    chosen = kiln(tmp_path, "sheet", "grid", "--z", "m2", "--out", "m2.png")
    assert chosen.returncode == 0, chosen.stderr
    with Image.open(tmp_path / "m2.png") as drawn:
        assert drawn.format == "PNG"
    assert "Traceback" not in plain.stderr + unknown.stderr + one_file.stderr
    assert kiln(tmp_path, "sheet", "99").returncode == 2
