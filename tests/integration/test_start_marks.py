"""Attempts are spent when a request goes out: start marks, grouped, committed before it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.batches import NewBatch, cancel_batch, create_batch
from pixelkiln.db.database import Database
from pixelkiln.db.leases import claim_tasks
from pixelkiln.db.tasks import get_task, list_tasks
from pixelkiln.engine.starts import StartMarks, TakenAwayError
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def db(suite_database: str) -> Iterator[Database]:
    opened = Database.open(suite_database)
    yield opened
    opened.close()


def _batch(db: Database, n: int) -> int:
    spec = parse_batch({"name": "b", "tasks": [{"prompt": f"p{i}"} for i in range(n)]})
    tasks = resolve_tasks(spec, default_backend="placeholder")
    return db.write(create_batch, NewBatch(name="b", source="cli", max_attempts=3, tasks=tasks))


async def test_marks_of_tasks_starting_together_go_in_one_write(db: Database) -> None:
    _batch(db, 8)
    claimed = db.write(claim_tasks, "me", {"placeholder": 8}, 3600.0, None)
    writes: list[Any] = []
    real = db.submit

    def counting(fn: Any, *args: Any) -> Any:
        writes.append(args)
        return real(fn, *args)

    db.submit = counting  # type: ignore[method-assign]
    marks = StartMarks(db, "me")
    await asyncio.gather(*(marks.mark(t.id) for t in claimed))
    assert len(writes) == 1 and sorted(writes[0][1]) == [t.id for t in claimed]
    assert all(db.read(get_task, t.id).attempts == 1 for t in claimed)


async def test_a_task_taken_away_before_it_starts_is_not_sent(db: Database) -> None:
    batch_id = _batch(db, 2)
    first, second = db.write(claim_tasks, "me", {"placeholder": 2}, 3600.0, None)
    marks = StartMarks(db, "me")
    await marks.mark(first.id)
    db.write(cancel_batch, batch_id)
    with pytest.raises(TakenAwayError):
        await marks.mark(second.id)
    assert db.read(get_task, second.id).attempts == 0


async def test_every_attempt_counted_is_a_request_the_generator_received(tmp_path: Path) -> None:
    with FakeSDWebUI(latency=0.02) as webui:
        webui.faults.fail_next(500, 500, 500, 500)  # four tries fail and are retried
        backends = [{"name": "sd", "type": "sdwebui", "urls": [webui.url], "concurrency": 2}]
        settings = make_settings(tmp_path, backends=backends, scheduler={"concurrency": 2})
        async with Kiln(settings) as kiln:
            spec = parse_batch(
                {
                    "name": "t",
                    "defaults": {"width": 64, "height": 64},
                    "tasks": [{"prompt": f"prompt {i}", "key": f"k{i}"} for i in range(8)],
                }
            )
            batch_id = await kiln.submit(spec)
            await kiln.run_until_done([batch_id])
            tasks = kiln.db.read(list_tasks, batch_id)
        sent = Counter(json.loads(r.body)["prompt"] for r in webui.received("/sdapi/v1/txt2img"))
    assert sum(sent.values()) == 8 + 4
    assert {t.prompt: t.attempts for t in tasks} == dict(sent)
