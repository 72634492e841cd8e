"""A drain (SIGTERM of a worker or of `kiln serve`) or a stop that arrives while the
scheduler waits for its claim to be written must not start what that claim brings: those
tasks go back to the queue untried, and no request reaches the generator.

The claim's write is the database's own (SQLite and PostgreSQL); the drain is made to
arrive exactly in the gap, by the scheduler's database answering the claim and calling
``drain()`` (or ``stop()``) before the scheduler sees the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.database import Database
from pixelkiln.db.leases import claim
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.scheduler import Scheduler
from pixelkiln.models import TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def webui() -> AsyncIterator[FakeSDWebUI]:
    with FakeSDWebUI(latency=0.01) as fake:
        yield fake


def _interrupt_first_claim(
    monkeypatch: pytest.MonkeyPatch, db: Database, interrupt: Callable[[], None]
) -> list[int]:
    """The first claim is written, then ``interrupt()`` runs before its answer arrives;
    returns the ids that claim took (once it has)."""
    awrite = db.awrite
    took: list[int] = []

    async def claim_then_interrupt(fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = await awrite(fn, *args, **kwargs)
        if fn is claim and not took:
            took.extend(t.id for t in result.tasks)
            interrupt()
        return result

    monkeypatch.setattr(db, "awrite", claim_then_interrupt)
    return took


@pytest.mark.parametrize("how", ["drain", "stop"])
async def test_a_drain_during_the_claim_starts_nothing_it_brought(
    tmp_path: Path,
    database_url: str,
    webui: FakeSDWebUI,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[{"name": "sd", "type": "sdwebui", "urls": [webui.url], "concurrency": 2}],
        scheduler={"concurrency": 2, "shutdown_seconds": 60},
    )
    spec = parse_batch(
        {
            "name": "drained",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"p{i}"} for i in range(4)],
        }
    )
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(spec)
        scheduler: Scheduler = kiln.new_scheduler()

        def interrupt() -> None:
            scheduler.drain(60) if how == "drain" else scheduler.stop()

        took = _interrupt_first_claim(monkeypatch, kiln.db, interrupt)
        await asyncio.wait_for(scheduler.run(), 30)  # nothing runs: the drain ends it now
        tasks = await kiln.db.aread(list_tasks, batch_id)
    assert took  # the claim did take tasks
    assert webui.received("/sdapi/v1/txt2img") == []
    assert {t.status for t in tasks} == {TaskStatus.PENDING}
    assert all(t.attempts == 0 for t in tasks)
    assert scheduler.tally.given_back == len(took)
