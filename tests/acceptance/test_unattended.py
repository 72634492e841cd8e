"""Unattended runs always end: generators killed during `kiln run`, a disk that fills up.

Real `kiln` subprocesses, real fake WebUI servers (`kiln dev fake-backend`)
killed with SIGKILL, and a data folder on a small tmpfs.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from test_cli import _env, kiln, start
from test_serve import free_port, serving

from pixelkiln.db.tables import events
from tests.processes import database_of, query, wait_for

#: quick probes of servers that are down, and retries of steps that fail
SCHEDULER = """
[scheduler]
concurrency = 4
retry_base_delay = 0.05
poll_interval = 0.05
"""

FAKE_WEBUI = [sys.executable, "-m", "pixelkiln.cli", "dev", "fake-backend", "--kind", "sdwebui"]


def webui(port: int) -> subprocess.Popen[str]:
    """A fake WebUI in a process of its own (so it can be killed), once it answers."""
    process = subprocess.Popen(
        [*FAKE_WEBUI, "--port", str(port), "--latency", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=1).is_success:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the fake WebUI on port {port} did not come up")


@contextmanager
def webuis(ports: list[int]) -> Iterator[list[subprocess.Popen[str]]]:
    processes = [webui(port) for port in ports]
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def write_config(folder: Path, ports: list[int], *, fallback: bool, scheduler: str = "") -> None:
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in ports)
    (folder / "kiln.toml").write_text(
        SCHEDULER
        + scheduler
        + f"""
[[backends]]
name = "a1111"
type = "sdwebui"
urls = [{urls}]
options = {{ open_seconds = 0.2, max_open_seconds = 1 }}
{"fallback = ['placeholder']" if fallback else ""}

[[backends]]
name = "placeholder"
type = "placeholder"
concurrency = 2
"""
    )


def write_batch(folder: Path, tasks: int) -> Path:
    spec = {
        "name": "night",
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(tasks)],
    }
    path = folder / "night.json"
    path.write_text(json.dumps(spec))
    return path


def kill(processes: list[subprocess.Popen[str]]) -> float:
    for process in processes:
        process.send_signal(signal.SIGKILL)
    for process in processes:
        process.wait(timeout=10)
    return time.time()


def test_both_webui_servers_killed_the_run_ends_on_the_fallback(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    write_config(tmp_path, ports, fallback=True)
    spec = write_batch(tmp_path, 60)
    with webuis(ports) as servers:
        runner = start(tmp_path, "run", str(spec), "--quiet", "--report", "report.json")
        wait_for(tmp_path, "SELECT n_succeeded FROM batches WHERE id = 1", 6, timeout=120)
        killed = kill(servers)
        out, err = runner.communicate(timeout=180)
    assert runner.returncode == 0, out + err
    assert query(tmp_path, "SELECT status, n_succeeded, n_images FROM batches") == [
        ("completed", 60, 60)
    ]
    files = list((tmp_path / "kiln-data" / "images" / "1").glob("*.png"))
    per_task = query(tmp_path, "SELECT task_id, COUNT(*) FROM images GROUP BY task_id")
    assert len(files) == 60 and len(per_task) == 60 and {n for _, n in per_task} == {1}
    progress = select(events.c.data).where(events.c.type == "progress")
    successes = Counter(data["item_key"] for (data,) in query(tmp_path, progress))
    assert len(successes) == 60 and set(successes.values()) == {1}  # each ended once
    backends = dict(query(tmp_path, "SELECT id, backend FROM tasks"))
    moved = {
        task_id
        for task_id, data in query(
            tmp_path, select(events.c.task_id, events.c.data).where(events.c.type == "info")
        )
        if data.get("fallback_from") == "a1111"
    }
    assert moved == {t for t, b in backends.items() if b == "placeholder"}
    assert 6 <= Counter(backends.values())["a1111"] < 60
    # nothing falls back before the servers die: every placeholder image came after
    [(first_fallback_image,)] = query(
        tmp_path,
        "SELECT MIN(i.created_at) FROM images i JOIN tasks t ON t.id = i.task_id "
        "WHERE t.backend = 'placeholder'",
    )
    assert first_fallback_image >= killed - 1  # the same clock; 1 s for rounding
    # each image records the backend that made it: the task's backend after any move
    made_by = dict(query(tmp_path, "SELECT task_id, backend FROM images"))
    assert made_by == backends
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["fell_back"] == len(moved)
    assert report["backends"]["placeholder"]["succeeded"] == len(moved)


@pytest.mark.slow
def test_without_a_fallback_the_run_ends_at_the_deadline_and_retry_finishes(
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port()]
    write_config(tmp_path, ports, fallback=False, scheduler="down_timeout = 5\n")
    spec = write_batch(tmp_path, 60)
    with webuis(ports) as servers:
        runner = start(tmp_path, "run", str(spec), "--quiet", "--report", "report.json")
        wait_for(tmp_path, "SELECT n_succeeded FROM batches WHERE id = 1", 6, timeout=120)
        kill(servers)
        out, err = runner.communicate(timeout=180)  # ends by itself: no hang
    assert runner.returncode == 1, out + err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["failed"] > 0
    reasons = {f["error"] for f in report["failures"]}
    assert reasons == {"backend 'a1111': every server down for 5 s"}
    assert "every server down for 5 s" in out
    assert query(tmp_path, "SELECT COUNT(*) FROM tasks WHERE backend != 'a1111'") == [(0,)]

    with webuis(ports):  # the servers are back
        again = kiln(tmp_path, "retry", "1", "--quiet", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert query(tmp_path, "SELECT status, n_succeeded FROM batches") == [("completed", 60)]


#: room left for images on the small disk when the database is not on it
ROOM = 256 * 1024


@contextmanager
def small_tmpfs(folder: Path) -> Iterator[Path]:
    """A 2 MB disk mounted on ``folder``. On SQLite, the database (file and WAL) and the
    images fill it; where the suite's database lives elsewhere (``KILN_TEST_DATABASE``), a
    ballast file leaves the images :data:`ROOM` bytes, so they fill it as soon."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not permitted'}")
    try:
        if not database_of(folder.parent, folder).startswith("sqlite"):
            free = shutil.disk_usage(folder).free
            (folder / "ballast").write_bytes(b"\0" * max(0, free - ROOM))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_under_kiln_serve_is_survived_and_every_task_ends_once(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "data") as data:
        (tmp_path / "kiln.toml").write_text(
            f"""
[storage]
data_dir = "{data}"

[scheduler]
poll_interval = 0.05
retry_base_delay = 0.01
stall_seconds = 1

[[backends]]
name = "placeholder"
type = "placeholder"
concurrency = 4
latency = 0.05
"""
        )
        tasks = [{"prompt": f"a long night scene number {i}", "key": f"s{i}"} for i in range(40)]
        body = {"name": "big", "defaults": {"width": 512, "height": 512, "n": 2}, "tasks": tasks}
        with serving(tmp_path) as url:
            created = httpx.post(f"{url}/api/v1/batches", json=body, timeout=30)
            assert created.status_code == 201, created.text
            batch = created.json()["id"]
            scheduler = _wait_unhealthy(url)["scheduler"]
            assert scheduler["state"] == "retrying"
            assert any(w in scheduler["last_error"] for w in ("disk is full", "No space left"))
            subprocess.run(["mount", "-o", "remount,size=64m", str(data)], check=True)
            final = _wait_finished(url, batch)
            assert final["status"] == "completed", final
            assert _wait_healthy_again(url)["scheduler"]["failing"] == []
        files = list((data / "images" / str(batch)).glob("*.png"))
        rows = query(tmp_path, "SELECT COUNT(*) FROM images", data_dir=data)[0][0]
        assert rows == len(files) == 80
        for kind in ("progress", "image_generated"):
            per_task = query(
                tmp_path,
                "SELECT task_id, COUNT(*) FROM events WHERE type = :kind GROUP BY task_id",
                {"kind": kind},
                data_dir=data,
            )
            expected = 1 if kind == "progress" else 2
            assert len(per_task) == 40 and {n for _, n in per_task} == {expected}, kind


def _wait_unhealthy(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/healthz", timeout=10)
        if answer.status_code == 503:
            body: dict[str, Any] = answer.json()
            return body
        time.sleep(0.1)
    raise AssertionError("the disk filled up but /healthz never said so")


def _wait_healthy_again(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/healthz", timeout=10)
        body: dict[str, Any] = answer.json()
        if answer.status_code == 200 and not body["scheduler"]["failing"]:
            return body
        time.sleep(0.2)
    raise AssertionError(f"/healthz stayed unhappy after the disk was enlarged: {body}")


def _wait_finished(url: str, batch: int) -> dict[str, object]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body: dict[str, object] = httpx.get(f"{url}/api/v1/batches/{batch}", timeout=10).json()
        if body.get("finished"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"batch {batch} did not finish after the disk was enlarged")


def test_kiln_run_on_a_disk_that_stays_full_exits_1_with_the_reason(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data") as data:
        (tmp_path / "kiln.toml").write_text(
            f'[storage]\ndata_dir = "{data}"\n[scheduler]\nstall_seconds = 2\n'
            "poll_interval = 0.05\nretry_base_delay = 0.01\n"
        )
        tasks = [{"prompt": f"a long night scene number {i}", "key": f"s{i}"} for i in range(40)]
        body = {"name": "big", "defaults": {"width": 512, "height": 512, "n": 2}, "tasks": tasks}
        (tmp_path / "big.json").write_text(json.dumps(body))
        done = kiln(tmp_path, "run", "big.json", "--quiet", timeout=180)  # ends: no hang
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the scheduler could not go on" in done.stderr
    assert "disk is full" in done.stderr or "No space left" in done.stderr
    after = done.stderr.split("Stopped:", 1)[1]  # (the log file's own errors come before)
    assert "kiln resume 1" in after and "Traceback" not in after
