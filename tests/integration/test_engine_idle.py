"""An idle scheduler's own looks for work: every ``poll_interval``, or less often while new
work is announced to its process (LISTEN/NOTIFY), but never past what only it notices."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, select

from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.tables import tasks
from pixelkiln.engine.scheduler import LISTENING_POLL
from pixelkiln.specs import parse_batch
from pixelkiln.testing import wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _attempts_and_due(conn: Connection, batch_id: int) -> tuple[int, float]:
    query = select(tasks.c.attempts, tasks.c.next_attempt_at).where(tasks.c.batch_id == batch_id)
    attempts, due = conn.execute(query).one()
    return int(attempts), float(due)


async def test_a_listening_scheduler_polls_less_but_wakes_for_its_own_retries(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "data",
        scheduler={"retry_base_delay": 3.0, "retry_max_delay": 3.0, "max_attempts": 2},
        backends=[{"name": "placeholder", "type": "placeholder", "fail_rate": 1.0}],
    )
    async with Kiln(settings) as kiln:
        scheduler = kiln.new_scheduler()
        assert scheduler.idle_poll(time.time()) == 0.05  # nothing announced: the setting
        scheduler.listening = lambda: True
        running = asyncio.create_task(scheduler.run())
        try:
            batch_id = await kiln.submit(parse_batch({"name": "b", "tasks": [{"prompt": "x"}]}))
            # the first try failed: the task waits 1.5-3 s for its retry, which no
            # announcement will bring, so the scheduler looks again when it is due

            async def retry_waits() -> bool:
                attempts, due = await kiln.db.aread(_attempts_and_due, batch_id)
                return attempts == 1 and due > time.time()

            await wait_until(retry_waits)
            _, due = await kiln.db.aread(_attempts_and_due, batch_id)
            await wait_until(lambda: scheduler.idle_poll(time.time()) < LISTENING_POLL)
            now = time.time()
            assert scheduler.idle_poll(now) == pytest.approx(due - now)

            async def ended() -> bool:
                return (await kiln.db.aread(get_batch, batch_id)).status.finished

            await wait_until(ended)  # the retry ran (and failed for good)
            # nothing of its own is due soon (the next recovery is lease/2 = 15 s away)
            assert scheduler.idle_poll(time.time()) == LISTENING_POLL
            scheduler.listening = lambda: False
            assert scheduler.idle_poll(time.time()) == 0.05
        finally:
            scheduler.stop()
            await running
