"""Per-batch limits (``max_workers``, ``delay``) kept by the claim, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from pixelkiln.db.batches import NewBatch, create_batch, get_batch, runnable_batch_ids
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.leases import Claim, claim, claim_tasks, outlook, release_tasks, start_tasks
from pixelkiln.db.tables import batches
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch


def _batch(
    db: Database, n: int, *, max_workers: int | None = None, delay: float | None = None
) -> int:
    spec = parse_batch({"name": "b", "tasks": [{"prompt": f"p{i}"} for i in range(n)]})
    tasks = resolve_tasks(spec, default_backend="placeholder")
    new = NewBatch(
        name="b", source="cli", max_attempts=3, tasks=tasks, max_workers=max_workers, delay=delay
    )
    return db.write(create_batch, new)


def _claim(db: Database, n: int, free: int | None = None) -> Claim:
    wants = {"placeholder": n}
    return db.write(claim, "me", wants, 30.0, None, None if free is None else {"placeholder": free})


def _by_batch(got: Claim) -> dict[int, int]:
    counts: dict[int, int] = {}
    for task in got.tasks:
        counts[task.batch_id] = counts.get(task.batch_id, 0) + 1
    return counts


def _started_ago(db: Database, batch_id: int, seconds: float) -> None:
    def move(tx: Tx) -> None:
        stmt = update(batches).where(batches.c.id == batch_id)
        tx.conn.execute(stmt.values(last_start_at=tx.now - seconds))

    db.write(move)


def _last_start(db: Database, batch_id: int) -> float | None:
    query = select(batches.c.last_start_at).where(batches.c.id == batch_id)
    return db.read(lambda conn: conn.execute(query).scalar_one())


def test_a_capped_batch_gives_up_its_share_to_the_next(db: Database) -> None:
    capped, other = _batch(db, 10, max_workers=3), _batch(db, 10)
    got = _claim(db, 8)
    assert _by_batch(got) == {capped: 3, other: 5}
    # full: the next claim takes only the other batch's tasks, however many are wanted
    assert _by_batch(_claim(db, 8)) == {other: 5}
    assert db.read(runnable_batch_ids, time.time()) == []


def test_the_cap_counts_running_tasks_and_frees_as_they_end(db: Database) -> None:
    capped = _batch(db, 10, max_workers=2)
    first = db.write(claim_tasks, "a", {"placeholder": 10}, 30.0, None)
    assert len(first) == 2
    assert db.write(claim_tasks, "b", {"placeholder": 10}, 30.0, None) == []  # another runner
    assert not db.read(outlook, time.time(), None).runnable
    db.write(release_tasks, "a", [first[0].id])
    again = db.write(claim_tasks, "b", {"placeholder": 10}, 30.0, None)
    assert len(again) == 1
    assert db.read(get_batch, capped).counts.running == 2


def test_a_paced_batch_starts_one_task_per_delay_into_a_free_slot(db: Database) -> None:
    paced = _batch(db, 5, delay=60.0)
    assert _claim(db, 4, free=0).tasks == []  # no slot free now: nothing claimed ahead
    assert _last_start(db, paced) is None
    before = time.time()
    got = _claim(db, 4, free=2)
    assert len(got.tasks) == 1 and got.paced == {got.tasks[0].id}
    started = _last_start(db, paced)
    assert started is not None and started >= before - 1
    assert got.wake_at == started + 60.0
    later = _claim(db, 4, free=2)
    assert later.tasks == [] and later.wake_at == started + 60.0
    look = db.read(outlook, time.time(), None)
    assert (look.runnable, look.wake_at) == (False, started + 60.0)
    _started_ago(db, paced, 61.0)  # as if the delay had passed
    assert len(_claim(db, 4, free=2).tasks) == 1


def test_a_paced_batch_within_its_cap_and_an_open_batch_share_a_claim(db: Database) -> None:
    paced, other = _batch(db, 5, delay=30.0, max_workers=1), _batch(db, 5)
    got = _claim(db, 4, free=4)
    assert _by_batch(got) == {paced: 1, other: 3}
    assert got.paced == {t.id for t in got.tasks if t.batch_id == paced}
    _started_ago(db, paced, 31.0)
    assert _by_batch(_claim(db, 4, free=4)) == {other: 2}  # due, but its one worker is busy


def test_a_paced_batch_s_wait_runs_from_its_task_s_real_start(db: Database) -> None:
    """A claimed task may wait before its request goes out; the delay counts from then."""
    paced, open_batch = _batch(db, 3, delay=60.0), _batch(db, 2)
    got = _claim(db, 2, free=2)
    [paced_task] = [t for t in got.tasks if t.batch_id == paced]
    [open_task] = [t for t in got.tasks if t.batch_id == open_batch]
    _started_ago(db, paced, 50.0)  # claimed 50 s ago; its request goes out only now
    before = _last_start(db, paced)
    assert db.write(start_tasks, "me", [open_task.id], False) == {open_task.id}
    assert _last_start(db, paced) == before  # an unpaced start moves nothing
    assert db.write(start_tasks, "me", [paced_task.id], True) == {paced_task.id}
    after = _last_start(db, paced)
    assert after is not None and before is not None and after > before + 40
    assert _by_batch(_claim(db, 2, free=2)).get(paced) is None  # 60 s from the start
    assert _last_start(db, open_batch) is None  # a batch without a delay is never touched
