"""A batch too big for one retention step, deleted over several transactions (SQLite and
PostgreSQL): once its first step commits it is gone to every reader, no move re-queues
it, no claim takes its tasks, and a later pass finishes it whatever it finds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.db import transitions
from pixelkiln.db.batches import find_batch, get_batch, list_batches
from pixelkiln.db.database import Tx
from pixelkiln.db.leases import claim_tasks
from pixelkiln.db.records import (
    ImageQuery,
    batch_images,
    count_images,
    get_image,
    search_batches,
    search_images,
)
from pixelkiln.db.retention import delete_batch_step
from pixelkiln.db.tables import batches, events, tasks
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import Batch
from pixelkiln.service import LOCAL
from pixelkiln.service.retention import plan, sweep
from pixelkiln.specs import parse_batch
from tests.integration.test_retention import _age, _count, _exists, _opened, _run

pytestmark = pytest.mark.anyio


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    opened = await _opened(tmp_path, database_url, images_days=7)
    yield opened
    await opened.aclose()


async def _half_deleted(kiln: Kiln) -> tuple[Batch, float]:
    """A finished batch of 5 tasks (one failed) after the first of its steps of 2 tasks:
    the batch as read before that step, and its end."""
    batch_id = await _run(kiln, "big", "a", "b", "REJECT c", "d", "e")
    await _age(kiln, batch_id, 10)
    before = await kiln.service.read(get_batch, batch_id)
    assert before.finished_at is not None
    first = await kiln.db.awrite(delete_batch_step, batch_id, before.finished_at, chunk=2)
    assert (first.tasks, first.done, first.kept) == (2, False, "")
    return before, before.finished_at


def _marked(kiln: Kiln, batch_id: int) -> Any:
    def read(conn: Any) -> Any:
        query = select(batches.c.status, batches.c.deleting_at, batches.c.n_tasks)
        return conn.execute(query.where(batches.c.id == batch_id)).first()

    return kiln.db.read(read)


async def test_a_retry_between_steps_is_refused_and_the_delete_goes_on(kiln: Kiln) -> None:
    """The reviewer's case: a retry between two steps made a queued batch of 5 counted
    tasks with 3 rows, no events and orphaned files."""
    before, ended = await _half_deleted(kiln)
    with pytest.raises(NotFoundError, match="no batch"):
        await service.retry(kiln.service, LOCAL, before.id)
    row = _marked(kiln, before.id)
    assert row.status == "partial" and row.deleting_at is not None
    steps = [await kiln.db.awrite(delete_batch_step, before.id, ended, chunk=2) for _ in range(2)]
    assert [(s.tasks, s.done, s.kept) for s in steps] == [(2, False, ""), (1, True, "")]
    assert _marked(kiln, before.id) is None


async def test_every_move_refuses_a_batch_being_deleted(kiln: Kiln) -> None:
    """Each move checks in its own transaction (a face that read the batch before the
    first step committed gets no further)."""
    before, _ = await _half_deleted(kiln)
    moves = {
        "retry": lambda tx: transitions.retry(tx, before),
        "regenerate": lambda tx: transitions.regenerate(tx, before, [1]),
        "pause": lambda tx: transitions.pause(tx, before, True),
        "resume": lambda tx: transitions.pause(tx, before, False),
        "cancel": lambda tx: transitions.cancel(tx, before),
    }
    for name, move in moves.items():
        with pytest.raises(NotFoundError, match="being deleted"):
            await kiln.db.awrite(move)
        assert _marked(kiln, before.id).status == "partial", name
    for face in (service.pause, service.resume, service.cancel):
        with pytest.raises(NotFoundError):
            await face(kiln.service, LOCAL, before.id)
    with pytest.raises(NotFoundError):
        await service.regenerate(kiln.service, LOCAL, before.id, keys=["k4"])


async def test_a_batch_being_deleted_is_gone_to_every_reader(kiln: Kiln) -> None:
    kept = await _run(kiln, "kept", "x")
    kept_image = (await kiln.service.read(batch_images, kept))[0].image
    going = await _run(kiln, "going", *"abcde")
    going_image = (await kiln.service.read(batch_images, going))[-1].image
    await _age(kiln, going, 10)
    ended = (await kiln.service.read(get_batch, going)).finished_at
    assert ended is not None
    await kiln.db.awrite(delete_batch_step, going, ended, chunk=2)

    read = kiln.service.read
    for reader in (get_batch, find_batch):
        with pytest.raises(NotFoundError):
            await read(reader, going if reader is get_batch else "going")
    assert [b.id for b in await read(list_batches)] == [kept]
    found, total = await read(search_batches, owner_id=None)
    assert ([b.id for b in found], total) == ([kept], 1)
    records = await read(search_images, ImageQuery(), owner_id=None, limit=50)
    assert [r.image.id for r in records] == [kept_image.id]
    assert await read(count_images, ImageQuery(), owner_id=None) == 1
    assert await read(count_images, ImageQuery(text="a"), owner_id=None) == 0
    with pytest.raises(NotFoundError):
        await read(get_image, going_image.id)
    with pytest.raises(NotFoundError):
        await kiln.service.read(get_batch, going)


async def test_the_claim_never_takes_the_tasks_of_a_batch_being_deleted(kiln: Kiln) -> None:
    queued = await kiln.submit(parse_batch({"name": "waits", "tasks": [{"prompt": "a"}]}))

    def mark(tx: Tx) -> None:  # however it came to be, a marked batch is not worked on
        tx.conn.execute(update(batches).where(batches.c.id == queued).values(deleting_at=1.0))

    await kiln.db.awrite(mark)
    claimed = await kiln.db.awrite(claim_tasks, "runner", {"placeholder": 4}, 60.0)
    assert claimed == []


async def test_later_steps_go_on_whatever_the_status(kiln: Kiln) -> None:
    before, ended = await _half_deleted(kiln)

    def requeue(tx: Tx) -> None:  # a status changed behind retention's back
        tx.conn.execute(update(batches).where(batches.c.id == before.id).values(status="queued"))

    await kiln.db.awrite(requeue)
    steps = [await kiln.db.awrite(delete_batch_step, before.id, ended, chunk=2) for _ in range(2)]
    assert [(s.done, s.kept) for s in steps] == [(False, ""), (True, "")]
    assert _count(kiln, tasks, tasks.c.batch_id == before.id) == 0


async def test_a_pass_finishes_a_half_deleted_batch_first(
    tmp_path: Path, database_url: str
) -> None:
    kiln = await _opened(tmp_path, database_url, images_days=7)
    try:
        before, _ = await _half_deleted(kiln)
        folder = kiln.storage.absolute(f"images/{before.id}")
        assert folder.exists()
        await _age(kiln, before.id, 1)  # its end moved since: no rule names it any more
    finally:
        await kiln.aclose()
    # the next process, every rule off: the batch is finished all the same
    kiln = await _opened(tmp_path, database_url)
    try:
        other = await _run(kiln, "other", "z")
        found = await plan(kiln.service, LOCAL)
        assert [b.id for b in found.batches] == [before.id] and found.batch_files[0][0] > 0
        done = await sweep(kiln.service, LOCAL)
        assert (done.batches, done.tasks, done.kept) == (1, 3, [])
        assert _marked(kiln, before.id) is None and not folder.exists()
        assert _count(kiln, events, events.c.batch_id == before.id) == 0
        assert await _exists(kiln, other)
        assert (await plan(kiln.service, LOCAL)).empty
    finally:
        await kiln.aclose()
