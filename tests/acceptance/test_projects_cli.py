"""The studio's night through the CLI: `kiln projects run` over real project folders and two
fake WebUI servers (processes of their own), one of them killed mid-run; then a killed
`kiln projects run` resumed. Run from another working directory, as cron would."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from test_cli import _env, kiln, start
from test_serve import free_port
from test_unattended import kill, webuis

from pixelkiln.db.tables import runs
from tests.processes import query, wait_for
from tests.unit.test_projects_config import make_project, scenes, write_config

SIZES = {"project001": 3, "project002": 3, "project003": 30, "project004": 3, "project005": 3}


def studio(root: Path, ports: list[int], lease_seconds: float = 30.0) -> Path:
    """The studio's folder: kiln.toml beside the config, projects under a relative data_dir.

    ``lease_seconds``: how soon a killed process's tasks (and run) come back."""
    folder = root / "studio"
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in ports)
    folder.mkdir(parents=True)
    (folder / "kiln.toml").write_text(
        f"""
[storage]
data_dir = "kiln-data"

[scheduler]
concurrency = 4
retry_base_delay = 0.05
poll_interval = 0.05
max_attempts = 5
lease_seconds = {lease_seconds}

[[backends]]
name = "a1111"
type = "sdwebui"
urls = [{urls}]
options = {{ open_seconds = 0.2, max_open_seconds = 1 }}

[channels.world_zh]
style = "ink wash"
cfg_scale = 9
"""
    )
    for pid, count in SIZES.items():
        skip = ("project005_zh.srt",) if pid == "project005" else ()
        make_project(folder / "data", pid, scenes(count), skip=skip)
    return write_config(
        folder / "nightly.json",
        {
            "description": "nightly",
            "data_dir": "data",
            "prompt_field": "image_prompt",
            "prompt_template": "{description}. {prompt}, {style}",
            "output": "project",
            "default_settings": {
                "language": "zh",
                "channel": "world_zh",
                "description": "documentary",
                "width": 64,
                "height": 64,
                "delay_between_projects": 0.2,
            },
            "projects": [{"pid": pid} for pid in SIZES],
        },
    )


PROJECT3_DONE = "SELECT n_succeeded FROM batches WHERE name = 'project003'"


def test_five_projects_one_missing_its_srt_one_server_killed_mid_run(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    config = studio(tmp_path, ports)
    folder = config.parent
    elsewhere = tmp_path / "elsewhere"  # cron runs from another folder
    elsewhere.mkdir()
    with webuis(ports) as servers:
        runner = start(elsewhere, "projects", "run", str(config), "--quiet")
        wait_for(folder, PROJECT3_DONE, 5)
        kill(servers[:1])
        out, err = runner.communicate(timeout=240)
    assert runner.returncode == 1, out + err  # one project failed
    assert "4 succeeded, 1 failed of 5" in out
    assert "project005: FAILED" in out and "missing project005_zh.srt" in out
    assert list(elsewhere.iterdir()) == []  # nothing written where it ran from

    batches = query(
        folder, "SELECT name, status, n_images, run_id, source FROM batches ORDER BY id"
    )
    assert batches == [
        (pid, "completed", SIZES[pid], 1, "project") for pid in SIZES if pid != "project005"
    ]
    # one after another: each project starts after the one before ended
    times = [
        (float(str(start)), float(str(end)))
        for start, end in query(folder, "SELECT started_at, finished_at FROM batches ORDER BY id")
    ]
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(times))
    prompts = query(folder, "SELECT prompt FROM tasks ORDER BY id LIMIT 1")
    assert prompts == [("documentary. scene 1, ink wash",)]

    [report_file] = (folder / "logs").glob("run-1-*.json")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["projects_total"] == 5 and report["projects_succeeded"] == 4
    assert report["projects_failed"] == 1 and report["success_rate"] == 0.8
    assert report["images_per_project"] == {**SIZES, "project005": 0}
    assert report["images_total"] == 39 == query(folder, "SELECT COUNT(*) FROM images")[0][0]
    [failed] = report["failed_projects"]
    assert failed["pid"] == "project005" and "project005_zh.srt" in failed["reason"]
    assert set(report["seconds_per_project"]) == set(SIZES)
    assert report["time_range"]["start"] <= report["time_range"]["end"]
    [(stored,)] = query(folder, select(runs.c.report).where(runs.c.id == 1))
    assert stored == report

    log = Path(report["files"]["log"]).read_text(encoding="utf-8")
    assert Path(report["files"]["log"]).parent == folder / "logs"
    order = [line.split(" ", 2)[2] for line in log.splitlines() if " project " in line]
    started = [line.split()[1] for line in order if line.endswith("task(s)")]
    assert started == [pid for pid in SIZES if pid != "project005"]
    assert "project project005 failed: missing project005_zh.srt" in order
    assert sum(1 for line in order if " succeeded: " in line) == 4
    for pid, count in SIZES.items():
        images = folder / "data" / pid / "images"
        made = sorted(images.iterdir()) if images.exists() else []
        assert len(made) == (0 if pid == "project005" else count)
    # the other server took the killed one's work
    answered = query(folder, "SELECT server, COUNT(*) FROM images GROUP BY server")
    assert {str(url).rsplit(":", 1)[1] for url, _ in answered} == {str(p) for p in ports}


def test_a_killed_run_is_resumed_without_redoing_finished_projects(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    config = studio(tmp_path, ports, lease_seconds=3.0)  # the killed run's leases lapse soon
    folder = config.parent
    with webuis(ports):
        runner = start(folder, "projects", "run", "nightly.json", "--quiet")
        wait_for(folder, PROJECT3_DONE, 3)
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=30)
        checked = kiln(tmp_path, "projects", "check", "studio/nightly.json")
        resumed = kiln(folder, "projects", "run", "--resume", "1", "--quiet", timeout=240)
    assert checked.returncode == 1 and "project003" in checked.stdout  # project005 missing
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "resumed" in resumed.stdout and "4 succeeded, 1 failed of 5" in resumed.stdout
    names = [name for (name,) in query(folder, "SELECT name FROM batches ORDER BY id")]
    assert names == ["project001", "project002", "project003", "project004"]  # each once
    per_task = query(folder, "SELECT COUNT(*) FROM images GROUP BY task_id")
    assert len(per_task) == 39 and {n for (n,) in per_task} == {1}
    assert query(folder, "SELECT status FROM runs") == [("partial",)]


def test_sample_writes_a_config_that_check_accepts(tmp_path: Path) -> None:
    written = subprocess.run(
        [sys.executable, "-m", "pixelkiln.cli", "projects", "sample", "night"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    checked = kiln(tmp_path, "projects", "check", "night/projects.json", "--json")
    assert written.returncode == 0, written.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr
    [project] = json.loads(checked.stdout)
    assert project["ready"] and project["images"] == 3
