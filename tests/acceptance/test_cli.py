"""The `kiln` command as a user runs it: subprocesses on a real data folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from pixelkiln.db.tables import events
from pixelkiln.testing import FakeSDWebUI
from tests.processes import count, env, query, wait_for

REPO = Path(__file__).resolve().parents[2]


def kiln(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixelkiln.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(cwd),
    )


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pixelkiln.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cwd),
    )


def _env(cwd: Path | None = None) -> dict[str, str]:
    return {**env(cwd), "COLUMNS": "200"}


def write_webui_config(folder: Path, url: str, concurrency: int) -> None:
    """A config whose one backend is a fake WebUI the test holds and releases."""
    (folder / "kiln.toml").write_text(
        f"""
[scheduler]
concurrency = {concurrency}
retry_base_delay = 0.05
poll_interval = 0.05

[[backends]]
name = "webui"
type = "sdwebui"
urls = ["{url}"]
concurrency = {concurrency}
"""
    )


def write_batch(folder: Path, tasks: int, n: int = 1) -> Path:
    spec = {
        "name": "big",
        "defaults": {"width": 64, "height": 64, "n": n},
        "tasks": [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(tasks)],
    }
    path = folder / "big.json"
    path.write_text(json.dumps(spec))
    return path


def test_quickstart_runs_writes_report_log_and_images(tmp_path: Path) -> None:
    done = kiln(
        tmp_path, "run", str(REPO / "examples" / "quickstart.yaml"), "--report", "report.json"
    )
    assert done.returncode == 0, done.stderr
    assert "Batch 1" in done.stdout and "completed" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["succeeded"] == report["totals"]["tasks"] > 0
    assert report["success_rate"] == 1.0
    logs = list((tmp_path / "kiln-data" / "logs").glob("kiln_*.log"))
    assert len(logs) == 1 and "[1/" in logs[0].read_text()
    pngs = list((tmp_path / "kiln-data" / "images" / "1").glob("*.png"))
    assert len(pngs) == report["totals"]["images"]


def test_bad_input_exits_2_naming_file_row_and_field(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("prompt,n,aspect_ratio\na cat,3,1:1\na dog,11,1:1\n,1,5:4\n")
    done = kiln(tmp_path, "run", str(rows))
    assert done.returncode == 2
    assert "row 3, field 'n'" in done.stderr
    assert "row 4, field 'aspect_ratio'" in done.stderr
    assert "Traceback" not in done.stderr
    assert count(tmp_path, "batches") == 0
    missing = kiln(tmp_path, "run", "nope.yaml")
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    unknown = kiln(tmp_path, "status", "42")
    assert unknown.returncode == 2 and "no batch 42" in unknown.stderr


@pytest.mark.slow
def test_killed_mid_batch_then_resumed_every_task_succeeds_exactly_once(tmp_path: Path) -> None:
    with FakeSDWebUI() as webui:
        webui.hold()  # 60 tasks finish, then the next four stay running until it is killed
        webui.release(60)
        write_webui_config(tmp_path, webui.url, concurrency=4)
        spec = write_batch(tmp_path, tasks=300, n=2)
        runner = start(tmp_path, "run", str(spec), "--quiet")
        wait_for(tmp_path, "SELECT n_succeeded FROM batches WHERE id = 1", 60)
        wait_for(tmp_path, "SELECT n_running FROM batches WHERE id = 1", 4)
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=60)
        before = query(tmp_path, "SELECT n_succeeded, n_running FROM batches")[0]
        assert 60 <= before[0] < 300 and before[1] > 0  # leases left behind by the dead process

        webui.release()
        resumed = kiln(tmp_path, "resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert query(tmp_path, "SELECT status, n_succeeded, n_images FROM batches") == [
        ("completed", 300, 600)
    ]
    per_task = query(tmp_path, "SELECT task_id, COUNT(*) FROM images GROUP BY task_id")
    assert len(per_task) == 300 and all(count == 2 for _, count in per_task)
    files = list((tmp_path / "kiln-data" / "images" / "1").iterdir())
    assert len(files) == 600 and all(f.suffix == ".png" for f in files)
    progress = select(events.c.data).where(events.c.type == "progress")
    successes = Counter(data["item_key"] for (data,) in query(tmp_path, progress))
    assert len(successes) == 300 and set(successes.values()) == {1}


def test_ctrl_c_leaves_the_batch_resumable_and_says_how(tmp_path: Path) -> None:
    with FakeSDWebUI() as webui:
        webui.hold()  # five tasks finish, then two stay running until Ctrl-C
        webui.release(5)
        write_webui_config(tmp_path, webui.url, concurrency=2)
        spec = write_batch(tmp_path, tasks=100)
        runner = start(tmp_path, "run", str(spec), "--quiet")
        wait_for(tmp_path, "SELECT n_succeeded FROM batches WHERE id = 1", 5)
        wait_for(tmp_path, "SELECT n_running FROM batches WHERE id = 1", 2)
        runner.send_signal(signal.SIGINT)
        _, stderr = runner.communicate(timeout=60)
        assert runner.returncode == 130
        assert "kiln resume 1" in stderr
        assert query(tmp_path, "SELECT n_running FROM batches") == [(0,)]
        status = json.loads(kiln(tmp_path, "status", "1", "--json").stdout)
        assert status["status"] == "running" and status["pending"] > 0
        webui.release()
        resumed = kiln(tmp_path, "resume", "1", "--quiet")
    assert resumed.returncode == 0
    assert query(tmp_path, "SELECT status, n_succeeded FROM batches") == [("completed", 100)]
    assert query(tmp_path, "SELECT MAX(attempts) FROM tasks") == [(1,)]


def test_cancel_from_another_terminal_stops_a_running_batch(tmp_path: Path) -> None:
    with FakeSDWebUI() as webui:
        # two tasks finish, the rest wait: however long `kiln cancel` takes to start
        webui.hold()
        webui.release(2)
        write_webui_config(tmp_path, webui.url, concurrency=2)
        spec = write_batch(tmp_path, tasks=200)
        runner = start(tmp_path, "run", str(spec), "--quiet")
        wait_for(tmp_path, "SELECT n_succeeded FROM batches WHERE id = 1", 2)
        cancelled = kiln(tmp_path, "cancel", "big")
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        runner.communicate(timeout=60)
    assert runner.returncode == 1
    status, succeeded, cancelled_n = query(
        tmp_path, "SELECT status, n_succeeded, n_cancelled FROM batches"
    )[0]
    assert status == "cancelled" and succeeded + cancelled_n == 200 and cancelled_n > 150


def test_retry_report_and_export(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(
        '[scheduler]\nretry_base_delay = 0.01\n[[backends]]\nname = "placeholder"\n'
        'type = "placeholder"\n[backends.options]\nreject_if_prompt_contains = "bad"\n'
    )
    spec = tmp_path / "b.yaml"
    spec.write_text(
        "name: mixed\ndefaults: {width: 64, height: 64}\n"
        "tasks:\n  - {prompt: good one, key: a}\n  - {prompt: bad one, key: b}\n"
    )
    first = kiln(tmp_path, "run", str(spec), "--quiet")
    assert first.returncode == 1
    assert "b: failed after 1 attempt(s): placeholder rejects" in first.stdout
    report = json.loads(kiln(tmp_path, "report", "1", "--format", "json").stdout)
    assert report["totals"] == {
        "tasks": 2,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "pending": 0,
        "running": 0,
        "images": 1,
        "fell_back": 0,
    }
    assert report["failures"][0]["key"] == "b"
    again = kiln(tmp_path, "retry", "1", "--quiet")
    assert again.returncode == 1 and "1 task(s) back in the queue" in again.stdout

    exported = kiln(tmp_path, "export", "mixed", "--to", "out")
    assert exported.returncode == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [m["key"] for m in manifest] == ["a"]
    assert (tmp_path / "out" / manifest[0]["file"]).is_file()
    assert kiln(tmp_path, "export", "1", "--to", "out.zip").returncode == 0
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert sorted(archive.namelist()) == sorted([manifest[0]["file"], "manifest.json"])


def test_init_writes_samples_that_run(tmp_path: Path) -> None:
    assert kiln(tmp_path, "init").returncode == 0
    assert kiln(tmp_path, "init").stderr.count("left as it is") == 2
    done = kiln(tmp_path, "run", "batch.yaml", "--quiet")
    assert done.returncode == 0, done.stderr
