"""A scheduler's running jobs against cancels and lost leases that arrive at awkward moments.

A cancel reaches ``kiln serve``'s scheduler from the API's thread, between two steps of
its loop, so it can land in the very turn a job was started, before the job's first
step. Such a job runs none of its own code, not even its ``finally``: the scheduler has
to free its slot and forget it by itself, or the backend keeps one slot less until the
process ends (with two, a batch that is retried afterwards waits for ever).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.batches import cancel_batch, get_batch, retry_batch
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.models import BatchStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _spec(name: str, count: int) -> Any:
    tasks = [{"prompt": f"{name} {i}", "key": f"{name}{i}"} for i in range(count)]
    return parse_batch({"name": name, "defaults": {"width": 64, "height": 64}, "tasks": tasks})


async def test_jobs_cancelled_in_the_turn_they_start_free_their_slots(tmp_path: Path) -> None:
    backend = {"name": "placeholder", "type": "placeholder", "concurrency": 2, "latency": 0.05}
    async with Kiln(make_settings(tmp_path, backends=[backend])) as kiln:
        doomed = await kiln.submit(_spec("doomed", 2))
        later = await kiln.submit(_spec("later", 4))
        scheduler = kiln.new_scheduler()
        start = scheduler._start

        def start_then_cancel(task: ClaimedTask) -> None:
            start(task)
            if task.batch_id == doomed:
                # the API cancels the batch, and its call reaches the scheduler before the
                # job just created has run a step (as by call_soon_threadsafe)
                if kiln.db.read(get_batch, doomed).status != BatchStatus.CANCELLED:
                    kiln.db.write(cancel_batch, doomed)
                scheduler.cancel_batch(doomed)

        scheduler._start = start_then_cancel  # type: ignore[method-assign]
        run = asyncio.create_task(scheduler.run())
        try:
            # both slots were taken by the doomed batch's two jobs; the other batch still
            # gets them (before the fix it never started: the slots stayed counted)
            await wait_until(lambda: kiln.db.read(get_batch, later).status.finished)
            assert kiln.db.read(get_batch, later).counts.succeeded == 4
            # the cancelled tasks again, on the same scheduler
            kiln.db.write(retry_batch, doomed, include_cancelled=True)
            scheduler._start = start  # type: ignore[method-assign]
            scheduler.wake()
            await wait_until(lambda: kiln.db.read(get_batch, doomed).status.finished)
            assert kiln.db.read(get_batch, doomed).status == BatchStatus.COMPLETED
            # its outcomes are committed (what the read saw) a moment before the scheduler
            # hears of it and forgets their jobs: nothing may stay held after that
            await wait_until(lambda: scheduler.status().held == 0, timeout=10)
            assert sum(scheduler.status().generating.values()) == 0
        finally:
            scheduler.stop()
            await asyncio.wait_for(run, 10)
