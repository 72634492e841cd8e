"""Backends outside their hours take no task: the real scheduler on SQLite and PostgreSQL.

A window around the present (an hour either side) is "now" for as long as a test runs;
where a window must open during the test, the scheduler's clock is injected instead.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.hours import Hours
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def window(start_hours: float, end_hours: float) -> str:
    """``HH:MM-HH:MM`` from ``start_hours`` to ``end_hours`` from now (local time)."""
    now = datetime.now()
    start, end = now + timedelta(hours=start_hours), now + timedelta(hours=end_hours)
    return f"{start:%H:%M}-{end:%H:%M}"


def placeholder(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "placeholder", "concurrency": 2, **extra}


def spec(backend: str | list[str], count: int = 3) -> Any:
    return parse_batch(
        {
            "name": f"on {backend}",
            "defaults": {"width": 64, "height": 64, "backend": backend},
            "tasks": [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(count)],
        }
    )


def settings_for(tmp_path: Path, database_url: str, backends: list[dict[str, Any]]) -> Any:
    return make_settings(
        tmp_path / "data", storage={"database_url": database_url}, backends=backends
    )


async def test_a_backend_outside_its_hours_takes_no_task_and_its_tasks_wait(
    tmp_path: Path, database_url: str
) -> None:
    backends = [
        placeholder("quiet", quiet_hours=window(-1, 1)),  # inside its quiet window now
        placeholder("asleep", active_hours=window(2, 4)),  # outside its active window now
        placeholder("open", quiet_hours=window(2, 4)),  # its quiet window is later
    ]
    async with Kiln(settings_for(tmp_path, database_url, backends)) as kiln:
        ids = {name: await kiln.submit(spec(name)) for name in ("quiet", "asleep", "open")}
        scheduler = kiln.new_scheduler(list(ids.values()))
        runner = asyncio.create_task(scheduler.run())
        try:
            await wait_until(
                lambda: kiln.db.read(get_batch, ids["open"]).status == BatchStatus.COMPLETED
            )
            # nothing of the closed ones claimed ahead (the last open task leaves soon)
            await wait_until(lambda: scheduler.status().held == 0)
        finally:
            scheduler.stop()
            await runner
        waiting = {
            name: [(t.status, t.attempts) for t in kiln.db.read(list_tasks, ids[name])]
            for name in ("quiet", "asleep")
        }
    assert waiting == {name: [(TaskStatus.PENDING, 0)] * 3 for name in ("quiet", "asleep")}


class Clock:
    """Local wall-clock time the test sets: noon, or midnight."""

    def __init__(self) -> None:
        self.local = datetime(2026, 3, 10, 12, 0)

    def __call__(self, timestamp: float) -> datetime:
        return self.local


async def test_tasks_start_when_the_window_opens(tmp_path: Path, database_url: str) -> None:
    backends = [placeholder("night", active_hours="22:00-06:00")]
    clock = Clock()
    async with Kiln(settings_for(tmp_path, database_url, backends)) as kiln:
        batch_id = await kiln.submit(spec("night"))
        scheduler = kiln.new_scheduler([batch_id])
        scheduler.hours = scheduler.routes.hours = Hours(scheduler.hours.windows, local=clock)
        runner = asyncio.create_task(scheduler.run(until_done=True))
        await wait_until(lambda: scheduler.status().health is not None)
        await asyncio.sleep(0.3)  # several polls at noon: nothing may start
        assert kiln.db.read(get_batch, batch_id).counts.succeeded == 0
        clock.local = datetime(2026, 3, 10, 23, 0)  # the night window is open
        await asyncio.wait_for(runner, 60)
        batch = kiln.db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.COMPLETED and batch.counts.succeeded == 3


async def test_a_backend_outside_its_hours_is_no_fallback_target(
    tmp_path: Path, database_url: str
) -> None:
    with socket.socket() as sock:  # nothing listens there: the WebUI is down from the start
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backends = [
        {"name": "sd", "type": "sdwebui", "urls": [f"http://127.0.0.1:{port}"]},
        placeholder("quiet", quiet_hours=window(-1, 1)),
        placeholder("open"),
    ]
    async with Kiln(settings_for(tmp_path, database_url, backends)) as kiln:
        batch_id = await kiln.submit(spec(["sd", "quiet", "open"], count=2))
        await asyncio.wait_for(kiln.run_until_done([batch_id]), 60)
        tasks = kiln.db.read(list_tasks, batch_id)
    assert [(t.status, t.backend) for t in tasks] == [(TaskStatus.SUCCEEDED, "open")] * 2
