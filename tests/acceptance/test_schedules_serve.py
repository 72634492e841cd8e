"""Schedules through the CLI and `kiln serve` as subprocesses (the issue's proof).

- Two `kiln serve` processes on one PostgreSQL database run a schedule due every
  three seconds (a 6-field cron) once per slot, not twice: each slot is claimed in
  one log only, and each claim made one batch.
- A server stopped across two due times runs the missed slot once at start-up.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import update

from pixelkiln.db.batches import list_batches
from pixelkiln.db.database import Database
from pixelkiln.db.schedules import get_schedule
from pixelkiln.db.tables import schedules
from tests.processes import KILN, env, free_port, wait_healthy

BATCH = "name: tick\ndefaults: {width: 64, height: 64}\ntasks:\n  - prompt: a clock\n"
CONFIG = """
[storage]
database_url = "{url}"

[[backends]]
name = "placeholder"
type = "placeholder"

[scheduler]
poll_interval = 0.05

[schedules]
poll_interval = 0.5
"""
CLAIMED = re.compile(r"schedule (\d+): slot (\d+) claimed")


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=60
    )


def installation(root: Path, name: str, url: str) -> Path:
    """A folder with its own kiln.toml (and data folder, logs) on the database ``url``."""
    folder = root / name
    folder.mkdir()
    (folder / "kiln.toml").write_text(CONFIG.replace("{url}", url))
    return folder


@contextmanager
def serving(*folders: Path) -> Iterator[None]:
    """`kiln serve` in each folder, on free ports, started together; yields once every
    one answers /healthz; SIGINT at the end (each must exit 0)."""
    with ExitStack() as stack:
        started = []
        for cwd in folders:
            out_path = cwd / "serve.out"
            out = stack.enter_context(out_path.open("w"))
            port = free_port()
            command = [*KILN, "serve", "--port", str(port), "--log-level", "warning"]
            process = subprocess.Popen(
                command, cwd=cwd, env=env(cwd), stdout=out, stderr=subprocess.STDOUT
            )
            stack.callback(stop, process, out_path)
            started.append((f"http://127.0.0.1:{port}", process, out_path))
        for url, process, out_path in started:
            wait_healthy(url, process, out_path)
        yield


def stop(process: subprocess.Popen[bytes], out_path: Path) -> None:
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=30) == 0, out_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()


def claims(folder: Path) -> list[int]:
    """The slots this installation's server logs say it claimed."""
    text = "".join(p.read_text() for p in sorted((folder / "kiln-data" / "logs").glob("*.log")))
    return [int(slot) for _, slot in CLAIMED.findall(text)]


def scheduled_batches(db: Database) -> int:
    return sum(1 for b in db.read(list_batches, limit=1000) if b.source == "schedule")


def wait_for(condition: object, timeout: float = 60.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_servers_on_one_database_run_each_slot_once(tmp_path: Path, postgres_url: str) -> None:
    (tmp_path / "tick.yaml").write_text(BATCH)
    first = installation(tmp_path, "a", postgres_url)
    second = installation(tmp_path, "b", postgres_url)
    added = kiln(first, "schedule", "add", "* * * * * */3", "batch", "../tick.yaml")
    assert added.returncode == 0, added.stderr
    db = Database.open(postgres_url)
    try:
        with serving(first, second):
            both_up = scheduled_batches(db)  # slots before both were up may be one's alone
            wait_for(lambda: scheduled_batches(db) >= both_up + 4)
        made = scheduled_batches(db)
        stored = db.read(get_schedule, 1)
    finally:
        db.close()
    slots = sorted(claims(first) + claims(second))
    print(f"claims: a {len(claims(first))}, b {len(claims(second))}; batches {made}")
    assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
    assert len(slots) == made >= 4  # one batch per claimed slot
    assert all(slot % 3 == 0 for slot in slots)
    assert stored.last_error is None and stored.last_run_id is not None
    listed = kiln(first, "schedule", "list")
    assert listed.returncode == 0 and "*/3" in listed.stdout and "batch" in listed.stdout


@pytest.mark.slow
def test_a_server_stopped_across_two_due_times_runs_the_missed_slot_once(
    tmp_path: Path, suite_database: str
) -> None:
    (tmp_path / "tick.yaml").write_text(BATCH)
    url = suite_database
    folder = installation(tmp_path, "a", url)
    added = kiln(folder, "schedule", "add", "0 3 * * *", "../tick.yaml", "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    with serving(folder):
        pass  # up, nothing due, stopped
    db = Database.open(url)
    try:
        # the server stays stopped across two due times: its 03:00 slots of the last two days
        slot = (int(time.time()) // 86400 - 1) * 86400 + 3 * 3600
        moved = update(schedules).where(schedules.c.id == 1).values(next_run_at=slot - 86400)
        db.write(lambda tx: tx.conn.execute(moved))
        assert scheduled_batches(db) == 0
        with serving(folder):
            wait_for(lambda: db.read(get_schedule, 1).last_run_id is not None)
        stored = db.read(get_schedule, 1)
        made = scheduled_batches(db)
    finally:
        db.close()
    assert made == 1 and claims(folder) == [slot - 86400]
    assert stored.next_run_at is not None and stored.next_run_at > time.time()
    assert stored.next_run_at % 86400 == 3 * 3600  # the next 03:00, not a missed one
