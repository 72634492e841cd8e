"""Every status move on SQLite and PostgreSQL: counters, refunds, attempts and events after it.

After each move the stored counters must equal a recount of the tasks, the
owner's balance must show exactly the refunds due, and every event written
must carry exactly the fields its builder documents.
"""

from __future__ import annotations

import time
from typing import get_type_hints

import pytest
from sqlalchemy import Connection, func, select, update

from pixelkiln.db.batches import (
    NewBatch,
    cancel_batch,
    create_batch,
    get_batch,
    retry_batch,
    set_paused,
)
from pixelkiln.db.credits import balance, charge, grant, ledger, set_task_costs
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.events import PAYLOADS, events_after
from pixelkiln.db.leases import (
    claim_tasks,
    recover_leases,
    release_tasks,
    renew_leases,
    start_tasks,
)
from pixelkiln.db.tables import batches, images, tasks
from pixelkiln.db.tasks import get_task, record_outcomes
from pixelkiln.db.users import create_user
from pixelkiln.models import (
    Batch,
    BatchStatus,
    ClaimedTask,
    Event,
    EventType,
    TaskFailure,
    TaskResult,
    TaskStatus,
)
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage

COST = 2  # credits per task
DEAD = "host-that-died:1:x"


@pytest.fixture
def user_id(db: Database) -> int:
    def make(tx: Tx) -> int:
        user = create_user(tx, "ann")
        grant(tx, user.id, 100)
        return user.id

    return db.write(make)


def _batch(db: Database, user_id: int, n: int, max_attempts: int = 3) -> int:
    """A batch of ``n`` one-image tasks owned by ``user_id``, charged COST each."""
    spec = parse_batch(
        {"name": "b", "tasks": [{"prompt": f"p{i}", "key": f"k{i}"} for i in range(n)]}
    )

    def create(tx: Tx) -> int:
        new = NewBatch(
            name="b",
            source="api",
            max_attempts=max_attempts,
            tasks=resolve_tasks(spec, default_backend="placeholder"),
            owner_id=user_id,
        )
        batch_id = create_batch(tx, new)
        set_task_costs(tx, batch_id, [COST] * n)
        charge(tx, user_id, COST * n, batch_id)
        return batch_id

    return db.write(create)


def _claim(db: Database, n: int, owner: str = "w1") -> list[ClaimedTask]:
    return db.write(claim_tasks, owner, {"placeholder": n}, 3600.0, None)


def _start(db: Database, claimed: list[ClaimedTask], owner: str = "w1") -> None:
    assert db.write(start_tasks, owner, [t.id for t in claimed]) == {t.id for t in claimed}


def _ok(task: ClaimedTask) -> TaskResult:
    image = StoredImage(f"images/{task.batch_id}/{task.key}.png", 64, 64, 10, "0" * 64)
    return TaskResult(task, [(image, 1)], 0.1)


def _recount(conn: Connection, batch_id: int) -> dict[str, int]:
    rows = conn.execute(
        select(tasks.c.status, func.count())
        .where(tasks.c.batch_id == batch_id)
        .group_by(tasks.c.status)
    ).all()
    counted = {str(s): 0 for s in TaskStatus} | {status: n for status, n in rows}
    where = images.c.batch_id == batch_id
    counted["images"] = conn.execute(
        select(func.count()).select_from(images).where(where)
    ).scalar_one()
    return counted


def checked(db: Database, batch_id: int) -> Batch:
    """The batch, after checking its counters against a recount and its events' fields."""
    batch = db.read(get_batch, batch_id)
    c = batch.counts
    stored = {"pending": c.pending, "running": c.running, "succeeded": c.succeeded}
    stored |= {"failed": c.failed, "cancelled": c.cancelled, "images": c.images}
    assert stored == db.read(_recount, batch_id)
    assert c.total == sum(v for k, v in stored.items() if k != "images")
    for event in db.read(events_after, 0, batch_id=batch_id, limit=10_000):
        _check_fields(event)
    return batch


def _check_fields(event: Event) -> None:
    payload = PAYLOADS[event.type]
    required, optional = payload.__required_keys__, payload.__optional_keys__  # type: ignore[attr-defined]
    assert required <= set(event.data) <= required | optional, (event.type, event.data)
    assert set(get_type_hints(payload)) == required | optional


def _events(db: Database, batch_id: int, kind: EventType) -> list[Event]:
    return [e for e in db.read(events_after, 0, batch_id=batch_id, limit=10_000) if e.type == kind]


def _attempts(db: Database, task_id: int) -> int:
    return db.read(get_task, task_id).attempts


def test_claim_spends_no_attempt_and_starts_the_batch_once(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 3)
    first = _claim(db, 2)
    assert [t.attempts for t in first] == [1, 1]  # the try a start would make
    batch = checked(db, batch_id)
    assert (batch.status, batch.counts.pending, batch.counts.running) == ("running", 1, 2)
    assert all(_attempts(db, t.id) == 0 for t in first)
    _claim(db, 2)
    assert checked(db, batch_id).counts.running == 3
    updates = [e.data["status"] for e in _events(db, batch_id, EventType.BATCH_UPDATE)]
    assert updates == ["queued", "running"]


def test_start_spends_one_attempt_for_held_tasks_only(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 3)
    claimed = _claim(db, 3)
    assert db.write(start_tasks, "someone else", [claimed[0].id]) == set()
    _start(db, claimed[:2])
    assert db.write(start_tasks, "w1", [claimed[0].id]) == set()  # already started
    assert [_attempts(db, t.id) for t in claimed] == [1, 1, 0]
    assert db.read(get_task, claimed[0].id).started_at is not None
    assert db.read(get_task, claimed[2].id).started_at is None
    db.write(cancel_batch, batch_id)
    assert db.write(start_tasks, "w1", [claimed[2].id]) == set()  # taken away: not sent


def test_success_counts_images_numbers_progress_and_completes(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 3)
    claimed = _claim(db, 3)
    _start(db, claimed)
    assert db.write(record_outcomes, "w1", [_ok(claimed[0])], []) == {claimed[0].id}
    assert checked(db, batch_id).counts.succeeded == 1
    db.write(record_outcomes, "w1", [_ok(t) for t in claimed[1:]], [])
    batch = checked(db, batch_id)
    assert (batch.status, batch.counts.images) == (BatchStatus.COMPLETED, 3)
    progress = _events(db, batch_id, EventType.PROGRESS)
    assert [(e.data["current"], e.data["total"]) for e in progress] == [(1, 3), (2, 3), (3, 3)]
    assert [e.data["item_key"] for e in progress] == ["k0", "k1", "k2"]
    image = _events(db, batch_id, EventType.IMAGE_GENERATED)[0].data
    assert image["item_key"] == "k0" and image["image"]["path"] == "images/1/k0.png"
    [done] = _events(db, batch_id, EventType.DONE)
    assert done.data["summary"]["succeeded"] == 3 and done.data["summary"]["status"] == "completed"
    assert db.read(balance, user_id) == 100 - 3 * COST  # nothing refunded
    assert [_attempts(db, t.id) for t in claimed] == [1, 1, 1]


def test_a_success_recorded_again_keeps_one_image_row_and_a_lost_one_changes_nothing(
    db: Database, user_id: int
) -> None:
    batch_id = _batch(db, user_id, 2)
    [a, b] = _claim(db, 2)
    _start(db, [a, b])
    assert db.write(record_outcomes, "w1", [_ok(a)], []) == {a.id}

    def running_again(tx: Tx) -> None:  # its run again, as after a crash (counters along)
        again = {"status": TaskStatus.RUNNING, "lease_owner": "w1", "lease_expires_at": 1e12}
        tx.conn.execute(update(tasks).where(tasks.c.id == a.id).values(again))
        moved = {"n_succeeded": batches.c.n_succeeded - 1, "n_running": batches.c.n_running + 1}
        tx.conn.execute(update(batches).where(batches.c.id == batch_id).values(moved))

    db.write(running_again)
    assert db.write(record_outcomes, "w1", [_ok(a)], []) == {a.id}
    assert db.write(record_outcomes, "someone else", [_ok(b)], []) == set()  # not held
    batch = checked(db, batch_id)
    assert (batch.counts.succeeded, batch.counts.running, batch.counts.images) == (1, 1, 1)
    count = select(func.count()).select_from(images).where(images.c.task_id == a.id)
    assert db.read(lambda conn: conn.execute(count).scalar_one()) == 1
    assert db.read(get_task, b.id).status == TaskStatus.RUNNING


def test_retry_later_then_failure_refunds_once(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 2, max_attempts=2)
    [a, b] = _claim(db, 2)
    _start(db, [a, b])
    db.write(record_outcomes, "w1", [_ok(b)], [TaskFailure(a, "boom", retry_at=0.0)])
    assert checked(db, batch_id).counts.pending == 1
    assert db.read(balance, user_id) == 100 - 2 * COST
    [warning] = _events(db, batch_id, EventType.WARNING)
    assert (warning.data["item_key"], warning.data["attempt"]) == ("k0", 1)
    [again] = _claim(db, 1)
    assert again.attempts == 2
    _start(db, [again])
    details = {"error_type": "ServerError"}
    db.write(record_outcomes, "w1", [], [TaskFailure(again, "still", None, 0.1, details)])
    batch = checked(db, batch_id)
    assert (batch.status, batch.counts.failed) == (BatchStatus.PARTIAL, 1)
    assert db.read(balance, user_id) == 100 - COST  # the failed task's credits came back
    assert [e.reason for e in db.read(ledger, user_id)] == ["refund", "charge", "grant"]
    [error] = _events(db, batch_id, EventType.ERROR)
    assert error.data == {"error": "still", "item_key": "k0", "error_type": "ServerError"}
    assert _attempts(db, a.id) == 2
    # a late duplicate of the same outcome changes nothing, and refunds nothing again
    assert db.write(record_outcomes, "w1", [], [TaskFailure(again, "still", None)]) == set()
    assert db.read(balance, user_id) == 100 - COST


def test_waiting_for_a_down_backend_gives_the_attempt_back(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 1)
    [task] = _claim(db, 1)
    _start(db, [task])
    down = TaskFailure(task, "every server down", retry_at=0.0, spend_attempt=False)
    db.write(record_outcomes, "w1", [], [down])
    assert _attempts(db, task.id) == 0 and checked(db, batch_id).counts.pending == 1
    assert _events(db, batch_id, EventType.WARNING) == []  # the scheduler notes it once


def test_an_outcome_without_a_start_mark_still_counts_as_a_try(db: Database, user_id: int) -> None:
    _batch(db, user_id, 2)
    [a, b] = _claim(db, 2)
    db.write(record_outcomes, "w1", [_ok(a)], [TaskFailure(b, "bad input", retry_at=0.0)])
    assert (_attempts(db, a.id), _attempts(db, b.id)) == (1, 1)


def test_release_gives_back_started_attempts_only(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 3)
    claimed = _claim(db, 3)
    _start(db, claimed[:1])
    assert db.write(release_tasks, "w1", [t.id for t in claimed]) == 3
    batch = checked(db, batch_id)
    assert (batch.counts.pending, batch.counts.running) == (3, 0)
    assert [_attempts(db, t.id) for t in claimed] == [0, 0, 0]
    assert [t.attempts for t in _claim(db, 3)] == [1, 1, 1]


def test_recovery_counts_only_tries_that_started(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 3, max_attempts=1)
    claimed = _claim(db, 3, owner=DEAD)
    _start(db, claimed[:1], owner=DEAD)
    assert db.write(recover_leases, [DEAD]) == 3
    batch = checked(db, batch_id)
    assert (batch.counts.failed, batch.counts.pending, batch.counts.running) == (1, 2, 0)
    first = db.read(get_task, claimed[0].id)
    assert first.status == TaskStatus.FAILED and "last attempt" in (first.last_error or "")
    assert [_attempts(db, t.id) for t in claimed[1:]] == [0, 0]
    assert db.read(balance, user_id) == 100 - 2 * COST  # the failed one refunded
    [error] = _events(db, batch_id, EventType.ERROR)
    assert error.data["item_key"] == "k0"
    warnings = [e.data["message"] for e in _events(db, batch_id, EventType.WARNING)]
    assert len(warnings) == 2 and all("no attempt spent" in w for w in warnings)
    assert [e.data["current"] for e in _events(db, batch_id, EventType.PROGRESS)] == [1]


def test_recovery_of_an_expired_lease_puts_a_started_task_back(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 1)
    [task] = db.write(claim_tasks, "w1", {"placeholder": 1}, 0.01, None)
    _start(db, [task])
    time.sleep(0.05)
    assert db.write(recover_leases) == 1
    stored = db.read(get_task, task.id)
    assert (stored.status, stored.attempts) == (TaskStatus.PENDING, 1)
    assert "put back" in (stored.last_error or "")
    assert db.write(renew_leases, "w1", [task.id], time.time() + 30) == set()
    assert checked(db, batch_id).counts.pending == 1


def test_cancel_refunds_open_tasks_exactly_once(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 4)
    done, failed, running = _claim(db, 3)
    _start(db, [done, failed, running])
    db.write(record_outcomes, "w1", [_ok(done)], [TaskFailure(failed, "no", retry_at=None)])
    assert db.read(balance, user_id) == 100 - 3 * COST
    cancelled = db.write(cancel_batch, batch_id)
    assert cancelled.status == BatchStatus.CANCELLED
    batch = checked(db, batch_id)
    assert (batch.counts.cancelled, batch.counts.succeeded, batch.counts.failed) == (2, 1, 1)
    assert db.read(balance, user_id) == 100 - COST  # only the image that was made is paid
    assert db.write(renew_leases, "w1", [running.id], time.time() + 30) == set()
    [done_event] = _events(db, batch_id, EventType.DONE)
    assert done_event.data["summary"]["cancelled"] == 2

    assert db.write(retry_batch, batch_id, include_cancelled=True) == 3
    batch = checked(db, batch_id)
    assert (batch.status, batch.counts.pending, batch.finished_at) == ("queued", 3, None)
    assert db.read(balance, user_id) == 100 - COST  # charging a retry is the service's part
    assert all(_attempts(db, t.id) == 0 for t in (failed, running))
    assert db.read(get_task, running.id).started_at is None
    retried = _events(db, batch_id, EventType.BATCH_UPDATE)[-1].data
    assert retried == {"status": "queued", "retried": 3}


def test_a_batch_with_nothing_succeeded_fails(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 2)
    claimed = _claim(db, 2)
    db.write(record_outcomes, "w1", [], [TaskFailure(t, "no", retry_at=None) for t in claimed])
    batch = checked(db, batch_id)
    assert (batch.status, batch.counts.failed) == (BatchStatus.FAILED, 2)
    assert db.read(balance, user_id) == 100
    updates = [e.data["status"] for e in _events(db, batch_id, EventType.BATCH_UPDATE)]
    assert updates == ["queued", "running", "failed"]


def test_pause_and_resume(db: Database, user_id: int) -> None:
    batch_id = _batch(db, user_id, 2)
    assert db.write(set_paused, batch_id, True).status == BatchStatus.PAUSED
    assert db.write(set_paused, batch_id, True).status == BatchStatus.PAUSED  # no second event
    assert _claim(db, 2) == []
    assert db.write(set_paused, batch_id, False).status == BatchStatus.QUEUED
    _claim(db, 1)
    db.write(set_paused, batch_id, True)
    assert db.write(set_paused, batch_id, False).status == BatchStatus.RUNNING  # it had started
    updates = [e.data["status"] for e in _events(db, batch_id, EventType.BATCH_UPDATE)]
    assert updates == ["queued", "paused", "queued", "running", "paused", "running"]
    checked(db, batch_id)
