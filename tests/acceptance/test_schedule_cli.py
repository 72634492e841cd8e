"""`kiln schedule` as a subprocess: bad input exits 2 naming it; add, list, run-now, remove."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.processes import KILN, env

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "projects"
BATCH = "name: tick\ndefaults: {width: 64, height: 64}\ntasks:\n  - prompt: a clock\n"


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("0 0 * *", "batch", "tick.yaml"), "field 'cron'"),
        (("0 0 * * *", "batch", "tick.yaml", "--timezone", "Mars/Olympus"), "Mars/Olympus"),
        (("0 0 * * *", "batch", "missing.yaml"), "missing.yaml: file not found"),
        (("0 0 * * *", "projects", "tick.yaml"), "tick.yaml"),
        (("0 0 * * *", "tick.yaml", "--language", "zh"), "--language"),
    ],
)
def test_bad_input_exits_2_naming_what_is_wrong(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    (tmp_path / "tick.yaml").write_text(BATCH)
    done = kiln(tmp_path, "schedule", "add", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in " ".join((done.stdout + done.stderr).split())
    assert "Traceback" not in done.stderr


def test_a_batch_schedule_is_added_listed_run_now_and_removed(tmp_path: Path) -> None:
    (tmp_path / "tick.yaml").write_text(BATCH)
    added = kiln(tmp_path, "schedule", "add", "0 3 * * *", "tick.yaml", "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    assert "next run" in added.stdout and "03:00:00 UTC" in added.stdout
    ran = kiln(tmp_path, "schedule", "run-now", "1", "--quiet")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "batch 1 started" in ran.stdout and "completed" in ran.stdout
    listed = kiln(tmp_path, "schedule", "list")
    assert "batch 1" in listed.stdout  # the last result
    assert kiln(tmp_path, "schedule", "remove", "1").returncode == 0
    gone = kiln(tmp_path, "schedule", "remove", "1")
    assert gone.returncode == 2 and "no schedule 1" in gone.stderr


def test_run_now_drives_a_project_run_to_its_report(tmp_path: Path) -> None:
    folder = tmp_path / "studio"
    shutil.copytree(EXAMPLE, folder)
    added = kiln(folder, "schedule", "add", "0 0 * * *", "projects", "nightly.json")
    assert added.returncode == 0, added.stderr
    ran = kiln(folder, "schedule", "run-now", "1", "--quiet")
    text = " ".join(ran.stdout.split())
    assert ran.returncode == 1, ran.stdout + ran.stderr  # demo002 waits for its subtitles
    assert "project run 1 started" in text
    assert "1 succeeded, 1 failed of 2" in text and "missing demo002_en.srt" in text
    assert list((folder / "kiln-data" / "runs").glob("run-1-*.json"))


def test_list_shows_a_schedules_overrides_and_whole_target(tmp_path: Path) -> None:
    folder = tmp_path / "a-rather-long-studio-folder-name" / "nightly-projects"
    shutil.copytree(EXAMPLE, folder)
    added = kiln(
        folder,
        "schedule",
        "add",
        "0 0 * * *",
        "projects",
        "nightly.json",
        "--pid",
        "demo001",
        "--description",
        "two words",
    )
    assert added.returncode == 0, added.stdout + added.stderr
    wide = env() | {"COLUMNS": "400"}  # one line per schedule
    listed = subprocess.run(
        [*KILN, "schedule", "list"], cwd=folder, env=wide, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert str(folder / "nightly.json") in listed.stdout
    assert "--pid demo001" in listed.stdout and "--description 'two words'" in listed.stdout
