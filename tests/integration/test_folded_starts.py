"""With shared limits, a task's start is marked in the write that takes its server slot.

A request took a slot (db.slots.exchange) and then marked its start (db.leases.start_tasks),
two writes one after the other before it went out. A slot granted with no rpm wait now
marks the start of the task it is for in the same write; these tests hold the rules that
must survive the fold: the attempt is spent once and only for a request that goes out, a
taken-away task is not sent, an rpm wait still comes first, a failed write marks nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.backends.pool import pool_of
from pixelkiln.db.batches import NewBatch, cancel_batch, create_batch
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.leases import ClaimedTask, claim_tasks
from pixelkiln.db.slots import Bucket, SlotWant, ensure_rows, exchange, slots_held
from pixelkiln.db.tasks import get_task, list_tasks
from pixelkiln.engine.shared_limits import SlotExchange
from pixelkiln.engine.starts import TryStart
from pixelkiln.models import Task, TaskStatus
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI
from tests.conftest import make_settings
from tests.integration.test_shared_limits import cancel_as_granted, give_up_before_the_answer

pytestmark = pytest.mark.anyio
ME = "me:1:x"


def _claimed(db: Database, n: int) -> tuple[int, list[ClaimedTask]]:
    """A batch of ``n`` tasks, all claimed by :data:`ME` (none started)."""
    spec = parse_batch({"name": "b", "tasks": [{"prompt": f"p{i}"} for i in range(n)]})
    tasks = resolve_tasks(spec, default_backend="placeholder")
    new = NewBatch(name="b", source="cli", max_attempts=3, tasks=tasks)
    batch_id = db.write(create_batch, new)
    only = [batch_id]
    return batch_id, db.write(claim_tasks, ME, {"placeholder": n}, 3600.0, only)


def _task(db: Database, task: ClaimedTask) -> Task:
    return db.read(get_task, task.id)


def test_a_slot_granted_without_rpm_wait_marks_the_start_of_its_task(db: Database) -> None:
    _, (first, second) = _claimed(db, 2)
    gone_batch, (gone,) = _claimed(db, 1)
    db.write(cancel_batch, gone_batch)  # taken away before its slot came
    db.write(ensure_rows, {"srv": 3})
    want = SlotWant("srv", 3, 3, starts=(first.id, None, gone.id))
    got = db.write(exchange, ME, [], [want], time.time() + 30)[("srv", None)]
    assert got.slots == [0, 1, 2]  # the slots are granted either way
    assert got.marks == [True, None, False]  # the second named no task; the third not held
    assert (_task(db, first).attempts, _task(db, first).started_at) == (1, got.at)
    assert (_task(db, second).attempts, _task(db, second).started_at) == (0, None)
    assert _task(db, gone).attempts == 0


def test_a_grant_with_an_rpm_wait_leaves_the_start_for_when_it_goes_out(db: Database) -> None:
    _, (now, later) = _claimed(db, 2)
    db.write(ensure_rows, {"srv": 2}, ["bk"])
    want = SlotWant("srv", 2, 2, Bucket("bk", interval=2.0), starts=(now.id, later.id))
    got = db.write(exchange, ME, [], [want], time.time() + 30)[("srv", "bk")]
    assert got.slots == [0, 1] and got.delays[0] == 0.0 and got.delays[1] > 1.0
    assert got.marks == [True, None]  # the second sleeps first: marked when it goes out
    assert (_task(db, now).attempts, _task(db, later).attempts) == (1, 0)


async def test_a_start_marked_for_a_take_cancelled_as_it_was_granted_is_given_back(
    db: Database,
) -> None:
    # the grant (and its start mark) is settled, then, in the same turn and before the
    # taker resumes, the taker is cancelled: the request never goes out, so the attempt
    # must not stay spent; it goes back with the slot
    _, (task,) = _claimed(db, 1)
    slots = SlotExchange(db, ME, lease_seconds=30.0)
    start = TryStart(task.id, paced=False)
    await cancel_as_granted(db, slots, start)
    after = _task(db, task)
    assert (after.status, after.attempts, after.started_at) == (TaskStatus.RUNNING, 0, None)
    assert db.read(slots_held, "srv", 0.0) == {}
    assert start.open  # marked nowhere: a later take (or the hook) marks it afresh


async def test_a_start_marked_for_a_take_given_up_before_its_answer_is_given_back(
    db: Database,
) -> None:
    _, (task,) = _claimed(db, 1)
    slots = SlotExchange(db, ME, lease_seconds=30.0)
    await give_up_before_the_answer(db, slots, TryStart(task.id, paced=False))
    assert (_task(db, task).attempts, _task(db, task).started_at) == (0, None)
    assert db.read(slots_held, "srv", 0.0) == {}


async def test_a_failed_slot_write_leaves_no_start_mark(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pixelkiln.engine.shared_limits as module

    _, (task,) = _claimed(db, 1)
    slots = SlotExchange(db, ME, lease_seconds=30.0)
    assert await slots.take("srv", 1) == 0.0  # rows added; the slot given back below
    slots.give_back("srv")
    await slots.settled()

    def fails_after(tx: Tx, *args: Any) -> Any:
        exchange(tx, *args)  # slots taken, start marked, then the transaction fails
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(module, "exchange", fails_after)
    start = TryStart(task.id, paced=False)
    assert await slots.take("srv", 1, start=start) is None  # refused, as if all were held
    assert start.open
    assert (_task(db, task).attempts, _task(db, task).started_at) == (0, None)
    assert db.read(slots_held, "srv", 0.0) == {}
    monkeypatch.setattr(module, "exchange", exchange)
    await asyncio.sleep(slots.retry_in("srv"))
    assert await slots.take("srv", 1, start=start) == 0.0
    assert start.taken_with is True
    assert _task(db, task).attempts == 1
    slots.give_back("srv")
    await slots.settled()


async def _run_counting_writes(
    settings: Any, count: int
) -> tuple[Counter[str], list[Task], list[int]]:
    """Run ``count`` tasks; how many writes of each function were sent, the tasks, and the
    server failures per URL."""
    writes: Counter[str] = Counter()
    async with Kiln(settings) as kiln:
        real = kiln.db.submit

        def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            writes[getattr(fn, "__name__", "?")] += 1
            return real(fn, *args, **kwargs)

        kiln.db.submit = counting  # type: ignore[method-assign]
        spec = parse_batch(
            {
                "name": "t",
                "defaults": {"width": 64, "height": 64, "backend": "webui"},
                "tasks": [{"prompt": f"p {i}", "key": f"k{i}"} for i in range(count)],
            }
        )
        batch_id = await kiln.submit(spec)
        await kiln.run_until_done([batch_id])
        pool = pool_of(kiln.engine().backends["webui"])
        assert pool is not None
        return writes, kiln.db.read(list_tasks, batch_id), [s.failed for s in pool.servers]


def _webui_settings(tmp_path: Path, database_url: str, urls: list[str], **backend: Any) -> Any:
    generator = {"name": "webui", "type": "sdwebui", "urls": urls, "concurrency": 2}
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[{**generator, **backend}],
        scheduler={"concurrency": 4},
    )


async def test_a_request_sent_through_a_shared_slot_needs_no_start_write_of_its_own(
    tmp_path: Path, database_url: str
) -> None:
    with FakeSDWebUI(latency=0.01) as webui:
        settings = _webui_settings(tmp_path, database_url, [webui.url])
        writes, tasks, _ = await _run_counting_writes(settings, 6)
        received = len(webui.received("/sdapi/v1/txt2img"))
    assert [(t.status, t.attempts) for t in tasks] == [(TaskStatus.SUCCEEDED, 1)] * 6
    assert received == 6
    assert writes["exchange"] >= 1 and writes["start_tasks"] == 0  # every start folded


async def test_a_request_that_waits_for_its_rpm_start_marks_it_when_it_goes_out(
    tmp_path: Path, database_url: str
) -> None:
    with FakeSDWebUI(latency=0.01) as webui:  # a start every 0.1 s: most wait for theirs
        settings = _webui_settings(tmp_path, database_url, [webui.url], rpm=600)
        writes, tasks, _ = await _run_counting_writes(settings, 4)
        received = len(webui.received("/sdapi/v1/txt2img"))
    assert [(t.status, t.attempts) for t in tasks] == [(TaskStatus.SUCCEEDED, 1)] * 4
    assert received == 4
    assert writes["start_tasks"] >= 1  # those that slept were marked after their wait


async def test_a_try_that_fails_over_to_another_server_spends_one_attempt(
    tmp_path: Path, database_url: str
) -> None:
    with FakeSDWebUI() as gone:
        dead = gone.url  # its port is closed from here on: connections are refused
    with FakeSDWebUI(latency=0.01) as webui:
        options = {"failure_threshold": 100}  # it stays in the pool: every try may meet it
        settings = _webui_settings(tmp_path, database_url, [dead, webui.url], options=options)
        _, tasks, failed = await _run_counting_writes(settings, 4)
    assert failed[0] >= 1  # a try met the dead server first, and went on to the other
    # the second server's take must not mark the start again (it would find it marked,
    # and call the task taken away)
    assert [(t.status, t.attempts) for t in tasks] == [(TaskStatus.SUCCEEDED, 1)] * 4
