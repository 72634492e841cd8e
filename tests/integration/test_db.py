"""The database layer on real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import threading
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import update

from pixelkiln.db.batches import (
    NewBatch,
    cancel_batch,
    create_batch,
    get_batch,
    retry_batch,
    set_paused,
)
from pixelkiln.db.database import MIGRATIONS, SCHEMA_REVISION, Database, Tx
from pixelkiln.db.events import events_after
from pixelkiln.db.leases import (
    ClaimedTask,
    LeaseLook,
    claim_tasks,
    lease_look,
    recover_leases,
    release_tasks,
    renew_leases,
    start_tasks,
)
from pixelkiln.db.records import delete_batch
from pixelkiln.db.tables import SEARCH_OBJECTS, batches, metadata
from pixelkiln.db.tasks import (
    TaskFailure,
    TaskResult,
    complete_tasks,
    fail_tasks,
    get_task,
    list_images,
)
from pixelkiln.exceptions import InvalidStateError
from pixelkiln.models import BatchStatus, EventType, TaskStatus
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage


def _batch(
    db: Database, n: int, *, priority: int = 0, max_attempts: int = 3, backend: str = "placeholder"
) -> int:
    spec = parse_batch(
        {
            "name": f"b{n}",
            "priority": priority,
            "tasks": [{"prompt": f"p{i}", "n": 2} for i in range(n)],
        }
    )
    tasks = resolve_tasks(spec, default_backend=backend)
    return db.write(
        create_batch,
        NewBatch(
            name=spec.name, source="cli", max_attempts=max_attempts, tasks=tasks, priority=priority
        ),
    )


def _claim(db: Database, owner: str, n: int, lease: float = 30.0) -> list[ClaimedTask]:
    return db.write(claim_tasks, owner, {"placeholder": n}, lease, None)


def _started(db: Database, owner: str, tasks: list[ClaimedTask]) -> list[ClaimedTask]:
    """Mark claimed tasks as sent to their generator (their attempt spent)."""
    assert db.write(start_tasks, owner, [t.id for t in tasks]) == {t.id for t in tasks}
    return tasks


def _result(task: ClaimedTask, seed: int = 100) -> TaskResult:
    images = [
        (
            StoredImage(f"images/{task.batch_id}/x_{task.position}_{i}.png", 64, 64, 10, "0" * 64),
            seed + i,
        )
        for i in range(2)
    ]
    return TaskResult(task, images, 0.5)


def test_schema_of_migrations_matches_the_tables(db: Database) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION
    with db.read_engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": _described, "include_object": _described_object}
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def _described(name: str | None, type_: str, parent_names: object) -> bool:
    """Not the search index's objects (migration 0007), which metadata leaves out."""
    return not (name or "").startswith(SEARCH_OBJECTS)


def _described_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    return _described(name, type_, None)


def test_reopening_keeps_data_and_does_not_migrate_again(database_url: str) -> None:
    first = Database.open(database_url)
    batch_id = _batch(first, 3)
    first.close()
    second = Database.open(database_url)
    assert second.read(get_batch, batch_id).counts.total == 3
    second.close()


def test_claims_follow_priority_then_age(db: Database) -> None:
    low = _batch(db, 3)
    high = _batch(db, 2, priority=5)
    claimed = _claim(db, "w1", 4)
    assert [(t.batch_id, t.position) for t in claimed] == [(high, 1), (high, 2), (low, 1), (low, 2)]
    assert all(t.attempts == 1 for t in claimed)
    assert db.read(get_batch, high).status == BatchStatus.RUNNING
    assert db.read(get_batch, low).counts.running == 2


def test_concurrent_claimers_never_share_a_task(database_url: str) -> None:
    setup = Database.open(database_url)
    _batch(setup, 60)
    setup.close()
    seen: list[int] = []
    lock = threading.Lock()

    def worker(owner: str) -> None:
        db = Database.open(database_url)  # each its own process-like writer
        try:
            while claimed := _claim(db, owner, 3):
                with lock:
                    seen.extend(t.id for t in claimed)
        finally:
            db.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 60 and len(set(seen)) == 60


def test_success_records_images_and_events_in_one_go(db: Database) -> None:
    batch_id = _batch(db, 2)
    claimed = _claim(db, "w1", 2)
    accepted = db.write(complete_tasks, "w1", [_result(t) for t in claimed])
    assert accepted == {t.id for t in claimed}
    batch = db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.COMPLETED
    assert (batch.counts.succeeded, batch.counts.images, batch.counts.running) == (2, 4, 0)
    assert len(db.read(list_images, batch_id)) == 4
    kinds = [e.type for e in db.read(events_after, 0, batch_id=batch_id)]
    assert kinds.count(EventType.IMAGE_GENERATED) == 4
    assert kinds.count(EventType.PROGRESS) == 2
    assert kinds[-1] == EventType.DONE


def test_the_largest_seeds_are_stored(db: Database) -> None:
    batch_id = _batch(db, 1)
    [task] = _claim(db, "w1", 1)
    db.write(complete_tasks, "w1", [_result(task, seed=2**32 - 2)])
    assert [i.seed for i in db.read(list_images, batch_id)] == [2**32 - 2, 2**32 - 1]


def test_a_late_write_from_a_runner_that_lost_its_lease_changes_nothing(db: Database) -> None:
    batch_id = _batch(db, 1)
    [task] = _started(db, "dead", _claim(db, "dead", 1, lease=0.01))
    time.sleep(0.05)
    assert db.write(recover_leases) == 1
    [again] = _claim(db, "alive", 1)
    assert db.write(complete_tasks, "dead", [_result(task)]) == set()
    assert db.read(list_images, batch_id) == []
    assert db.write(complete_tasks, "alive", [_result(again)]) == {again.id}
    assert db.read(get_task, again.id).attempts == 2


def test_recovering_on_the_last_attempt_fails_the_task(db: Database) -> None:
    batch_id = _batch(db, 1, max_attempts=1)
    _started(db, "dead", _claim(db, "dead", 1, lease=0.01))
    time.sleep(0.05)
    db.write(recover_leases)
    batch = db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.FAILED
    assert "last attempt" in (db.read(get_task, 1).last_error or "")


def test_dead_owner_is_recovered_before_its_lease_expires(db: Database) -> None:
    _batch(db, 2)
    _claim(db, "host:1:dead", 2, lease=3600)
    assert db.write(recover_leases, ["host:1:dead"]) == 2
    assert len(_claim(db, "w2", 2)) == 2


def test_the_lease_look_finds_what_a_recovery_would(db: Database) -> None:
    _batch(db, 3)
    assert db.read(lease_look, time.time()) == LeaseLook([], False)  # nothing running
    _claim(db, "w1", 2, lease=3600)
    look = db.read(lease_look, time.time())
    assert look == LeaseLook(["w1"], False)  # held and live: a runner writes nothing
    _claim(db, "w2", 1, lease=0.01)
    time.sleep(0.05)
    look = db.read(lease_look, time.time())
    assert sorted(look.owners) == ["w1", "w2"] and look.lapsed
    assert db.write(recover_leases) == 1  # what the look saw lapse
    assert db.read(lease_look, time.time()) == LeaseLook(["w1"], False)


def test_renewal_reports_tasks_taken_away(db: Database) -> None:
    batch_id = _batch(db, 3)
    claimed = _claim(db, "w1", 3)
    db.write(cancel_batch, batch_id)
    assert db.write(renew_leases, "w1", [t.id for t in claimed], time.time() + 30) == set()


def test_retryable_failure_waits_then_final_failure_records_the_error(db: Database) -> None:
    batch_id = _batch(db, 1, max_attempts=2)
    [task] = _claim(db, "w1", 1)
    db.write(fail_tasks, "w1", [TaskFailure(task, "boom", retry_at=time.time() + 3600)])
    assert _claim(db, "w1", 1) == []  # not before its retry time
    db.write(fail_tasks, "w1", [])
    stored = db.read(get_task, task.id)
    assert (stored.status, stored.last_error) == (TaskStatus.PENDING, "boom")

    def due_now(tx: Tx) -> None:
        tx.conn.exec_driver_sql("UPDATE tasks SET next_attempt_at = 0")

    db.write(due_now)
    [again] = _claim(db, "w1", 1)
    assert again.attempts == 2
    db.write(fail_tasks, "w1", [TaskFailure(again, "still broken", retry_at=None)])
    batch = db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.FAILED
    errors = [e for e in db.read(events_after, 0, batch_id=batch_id) if e.type == EventType.ERROR]
    assert errors[0].data["error"] == "still broken"


def test_waiting_for_a_down_backend_spends_no_attempt(db: Database) -> None:
    _batch(db, 1)
    [task] = _claim(db, "w1", 1)
    db.write(fail_tasks, "w1", [TaskFailure(task, "down", retry_at=0.0, spend_attempt=False)])
    assert db.read(get_task, task.id).attempts == 0


def test_release_gives_tasks_back_untried(db: Database) -> None:
    batch_id = _batch(db, 2)
    claimed = _claim(db, "w1", 2)
    assert db.write(release_tasks, "w1", [t.id for t in claimed]) == 2
    batch = db.read(get_batch, batch_id)
    assert (batch.counts.pending, batch.counts.running) == (2, 0)
    assert all(db.read(get_task, t.id).attempts == 0 for t in claimed)


def test_cancel_then_retry(db: Database) -> None:
    batch_id = _batch(db, 4)
    [first] = _claim(db, "w1", 1)
    db.write(complete_tasks, "w1", [_result(first)])
    cancelled = db.write(cancel_batch, batch_id)
    assert cancelled.status == BatchStatus.CANCELLED
    assert (cancelled.counts.succeeded, cancelled.counts.cancelled) == (1, 3)
    with pytest.raises(InvalidStateError):
        db.write(cancel_batch, batch_id)
    with pytest.raises(InvalidStateError):
        db.write(retry_batch, batch_id)  # nothing failed
    assert db.write(retry_batch, batch_id, include_cancelled=True) == 3
    assert db.read(get_batch, batch_id).status == BatchStatus.QUEUED
    assert len(_claim(db, "w1", 10)) == 3


def test_paused_batches_are_not_claimed(db: Database) -> None:
    batch_id = _batch(db, 2)
    db.write(set_paused, batch_id, True)
    assert _claim(db, "w1", 2) == []
    db.write(set_paused, batch_id, False)
    assert len(_claim(db, "w1", 2)) == 2


def test_a_failing_write_in_a_group_does_not_sink_the_others(db: Database) -> None:
    batch_id = _batch(db, 1)

    def bad(tx: Tx) -> None:
        raise ValueError("bad write")

    results: list[object] = []
    gate = threading.Event()

    def slow(tx: Tx) -> None:
        gate.wait(2)

    blocker = threading.Thread(target=db.write, args=(slow,))
    blocker.start()  # holds the writer so the next writes queue up into one group
    callers = [
        threading.Thread(target=lambda: results.append(_try(db, bad))),
        threading.Thread(target=lambda: results.append(_try(db, set_paused, batch_id, True))),
    ]
    for t in callers:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in [blocker, *callers]:
        t.join()
    assert any(isinstance(r, ValueError) for r in results)
    assert db.read(get_batch, batch_id).status == BatchStatus.PAUSED


def _try(db: Database, fn: object, *args: object) -> object:
    try:
        return db.write(fn, *args)  # type: ignore[arg-type]
    except Exception as exc:
        return exc


@pytest.mark.anyio
async def test_a_caller_giving_up_does_not_stop_the_writer(db: Database) -> None:
    import asyncio

    gate = threading.Event()

    def slow(tx: Tx) -> int:
        gate.wait(2)
        return 1

    waiting = asyncio.ensure_future(db.awrite(slow))
    await asyncio.sleep(0.05)
    waiting.cancel()  # cancels the future the writer will try to complete
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.sleep(0.1)
    assert db._thread is not None and db._thread.is_alive()
    assert await asyncio.wait_for(db.awrite(lambda tx: 7), 5) == 7


def test_event_ids_are_never_reused_after_the_newest_batch_is_deleted(db: Database) -> None:
    """Event ids are SSE cursors: a reused id would be skipped by a client resuming after it."""
    _batch(db, 1)
    newest = _batch(db, 1)
    highest = max(e.id for e in db.read(events_after, 0, limit=1000))
    db.write(lambda tx: tx.conn.execute(update(batches).values(status="completed")))
    db.write(delete_batch, newest)
    later = _batch(db, 1)
    assert all(e.id > highest for e in db.read(events_after, 0, batch_id=later, limit=1000))
