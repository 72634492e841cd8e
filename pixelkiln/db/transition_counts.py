"""The bookkeeping every move of :mod:`.transitions` shares: batch counters, the numbering of
``progress`` events, and a batch following its tasks (its first start, its end).

A move collects its counter deltas in a :class:`Counts` from the rows it actually
changed and applies them once, in place (one statement per batch, never a
recount); the rows read back decide whether a batch started or ended. Only the
``transition*`` modules call this one, inside their moves.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from pixelkiln.db import driver, returning, speeds
from pixelkiln.db import events as ev
from pixelkiln.db import transition_sql as sql
from pixelkiln.db.database import Tx
from pixelkiln.db.notify import WORK, notify
from pixelkiln.models import BatchStatus, TaskStatus


class BatchCounts(NamedTuple):
    """A batch's row after its counters moved (ADJUST_COUNTS' RETURNING)."""

    id: int
    status: str
    started_at: float | None
    n_tasks: int
    n_pending: int
    n_running: int
    n_succeeded: int
    n_failed: int
    n_cancelled: int
    n_images: int


class Counts:
    """Counter deltas per batch, from the rows a move changed; applied in place, once."""

    def __init__(self) -> None:
        self.deltas: defaultdict[int, Counter[str]] = defaultdict(Counter)

    def shift(self, batch_id: int, source: str, target: str, k: int = 1) -> None:
        delta = self.deltas[batch_id]
        delta[source] -= k
        delta[target] += k

    def moved(self, batch_ids: Iterable[int], source: str, target: str) -> None:
        for batch_id in batch_ids:
            self.shift(batch_id, source, target)

    def apply(self, tx: Tx) -> dict[int, BatchCounts]:
        """Adjust each batch's counters; returns its row after (status, started_at, n_*).

        Tasks that went back to pending are work for every scheduler: it is told so
        (:mod:`.notify`) in this transaction. Through the driver where the database
        returns rows from an UPDATE (db.driver: it runs in every claim and record).
        """
        after = {}
        if any(delta[TaskStatus.PENDING] > 0 for delta in self.deltas.values()):
            notify(tx, WORK)
        text = sql.ADJUST_COUNTS_TEXT.get(tx.dialect)
        for batch_id, delta in self.deltas.items():
            if text is not None:
                (row,) = driver.rows(tx, text, [*(delta[k] for k in sql.COUNTED), batch_id])
                after[batch_id] = BatchCounts._make(row)
                continue
            params = {f"k_{k}": delta[k] for k in sql.COUNTED}
            found = returning.execute(tx.conn, sql.ADJUST_COUNTS, {"k_batch": batch_id, **params})
            after[batch_id] = BatchCounts._make(found.one())
        return after


class Progress:
    """Numbers the ``progress`` events of the tasks one move finished."""

    def __init__(self, after: dict[int, BatchCounts], finished: Iterable[int]) -> None:
        self._after = after
        self._current = {b: r.n_succeeded + r.n_failed + r.n_cancelled for b, r in after.items()}
        for batch_id in finished:  # count up to the totals read after the move
            self._current[batch_id] -= 1

    def event(self, batch_id: int, task_id: int, item_key: str, message: str) -> ev.PendingEvent:
        self._current[batch_id] += 1
        return ev.progress(
            batch_id,
            task_id,
            current=self._current[batch_id],
            total=self._after[batch_id].n_tasks,
            message=message,
            item_key=item_key,
        )


def start_batches(tx: Tx, after: dict[int, BatchCounts]) -> None:
    """queued → running for batches whose first task was just claimed."""
    for batch_id, row in after.items():
        if row.status != BatchStatus.QUEUED:
            continue
        if tx.conn.execute(sql.START_BATCH, {"m_batch": batch_id, "m_now": tx.now}).rowcount:
            ev.append_events(tx, [ev.batch_update(batch_id, BatchStatus.RUNNING)])


def finish_done(tx: Tx, after: Iterable[BatchCounts]) -> None:
    """Batches with no task pending or running end completed, partial or failed."""
    for row in after:
        if row.n_pending or row.n_running or BatchStatus(row.status).finished:
            continue
        if row.n_succeeded == row.n_tasks:
            set_final(tx, row, BatchStatus.COMPLETED)
        else:
            set_final(tx, row, BatchStatus.PARTIAL if row.n_succeeded else BatchStatus.FAILED)


def set_final(tx: Tx, row: BatchCounts, status: BatchStatus) -> None:
    """The batch ends ``status``: its row, the ``batch_update`` and ``done`` events, and its
    succeeded tasks' speeds folded into the measured ones (what plans estimate from)."""
    tx.conn.execute(sql.set_batch(row.id, status=status, finished_at=tx.now))
    if row.n_succeeded:
        speeds.record_batch(tx, row.id)
    summary: ev.Summary = {
        "status": str(status),
        "total": row.n_tasks,
        "succeeded": row.n_succeeded,
        "failed": row.n_failed,
        "cancelled": row.n_cancelled,
        "images": row.n_images,
        "started_at": row.started_at,
        "finished_at": tx.now,
    }
    ev.append_events(tx, [ev.batch_update(row.id, status), ev.done(row.id, summary=summary)])
