"""A batch's cancel locks its task rows before its batch row, as every runner's write does.

A worker recording a task locks the task's row, then its batch's row (the counters).
The cancel used to lock the batch's row first and then wait for the running task's row:
a cycle, which PostgreSQL broke by rolling one of them back (the scale-out acceptance
test's cancel answered 503 after two of those in a row). Here the worker's side of the
cycle is a second connection whose ``deadlock_timeout`` is short, so that in a cycle it
would be the one rolled back: with the cancel in the runners' order there is no cycle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, text

from pixelkiln.db.batches import cancel_batch, get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.leases import claim_tasks
from pixelkiln.models import BatchStatus
from tests.integration.test_start_marks import _batch

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    opened = Database.open(postgres_url)
    yield opened
    opened.close()


def test_a_cancel_waits_for_a_worker_recording_its_task_without_a_deadlock(
    db: Database, postgres_url: str
) -> None:
    batch_id = _batch(db, 3)
    [running] = db.write(claim_tasks, "worker:1:x", {"placeholder": 1}, 3600.0, [batch_id])
    writer = db.write(lambda tx: tx.conn.execute(text("SELECT pg_backend_pid()")).scalar())
    engine = create_engine(postgres_url)
    cancelled: list[object] = []
    try:
        with engine.connect() as worker:
            with worker.begin():
                worker.execute(text("SET LOCAL deadlock_timeout = '20ms'"))  # a cycle's victim
                # the worker's outcome write: its task's row first...
                worker.execute(
                    text("UPDATE tasks SET attempts = attempts WHERE id = :t"), {"t": running.id}
                )
                thread = threading.Thread(
                    target=lambda: cancelled.append(db.write(cancel_batch, batch_id))
                )
                thread.start()
                _until_waiting(worker, writer)  # the cancel waits for that task's row
                # ...then its batch's counters (the cancel must not hold that row by now)
                worker.execute(
                    text("UPDATE batches SET n_running = n_running WHERE id = :b"),
                    {"b": batch_id},
                )
            thread.join(30)
    finally:
        engine.dispose()
    assert len(cancelled) == 1
    batch = db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.CANCELLED and batch.counts.cancelled == 3


def _until_waiting(conn: Connection, pid: object, seconds: float = 20.0) -> None:
    """Until the session ``pid`` (the database's writer) waits for a row lock."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + seconds
    while not conn.execute(query, {"pid": pid}).scalar():
        assert time.monotonic() < deadline, "the cancel never waited for the task's row"
        time.sleep(0.01)
