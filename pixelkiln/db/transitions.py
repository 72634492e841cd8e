"""Every move of a task or a batch between statuses: rows, counters, refunds and events.

Each move is one helper here, run in the caller's transaction: it changes the
rows, adjusts the batch counters by the rows it actually moved (in-place
deltas, one statement per batch, never a recount), refunds the credits of a
task that ends without images (failed for good, or cancelled), and appends
its events through the builders of :mod:`.events`, so all of it commits
together or not at all. Charging is the service layer's; refunds are here.

Every move is called as ``transitions.<move>``; the larger ones are written in
parts that only this family of modules calls: the claim and the batches' own
limits in :mod:`.transition_claim`, recording tries in
:mod:`.transition_outcomes`, the counters and a batch's start and end in
:mod:`.transition_counts`, refunds and the refund policy in
:mod:`.transition_refunds`, a regenerated task's runs in
:mod:`.transition_runs`, and the SQL in :mod:`.transition_sql`.

Tasks (``models.TaskStatus``)::

    pending ──claim──▶ running ──start (attempt spent)──▶ running ──succeed──▶ succeeded
    running (started) ──unstart (its request never went out)──▶ running (attempt back)
    running ──retry later · release · recover──▶ pending
    running ──fail · recover after the last attempt──▶ failed            (refund)
    pending, running ──cancel──▶ cancelled                               (refund)
    failed, cancelled ──retry──▶ pending
    succeeded, failed, cancelled ──regenerate (run + 1)──▶ pending

Batches (``models.BatchStatus``): created queued; queued ──first claim──▶
running; queued, running ⇄ paused; nothing left open ──▶ completed, partial or
failed; cancel ──▶ cancelled; retry ──▶ queued (or paused); regenerate ──▶ queued
when it had ended (else as it was).

A regenerated task's images of earlier runs stay current until its new run
succeeds; then they become history (``images.superseded``), or are deleted with
``replace``. ``batches.n_images`` counts the current (not superseded) images.

An attempt is spent when its generation starts (:func:`start`, just before the
request goes out), not when the task is claimed: tasks claimed ahead and lost
with their runner go back without losing one. A recorded outcome of a task
never marked started counts as its try.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Row, select

from pixelkiln.db import driver, returning
from pixelkiln.db import events as ev
from pixelkiln.db import transition_runs as runs
from pixelkiln.db import transition_sql as sql
from pixelkiln.db.database import Tx
from pixelkiln.db.notify import WORK, notify
from pixelkiln.db.tables import batches, tasks
from pixelkiln.db.transition_claim import claim
from pixelkiln.db.transition_counts import Counts, Progress, finish_done, set_final
from pixelkiln.db.transition_outcomes import record_outcomes
from pixelkiln.db.transition_refunds import charged_under, refund_failed, refund_where
from pixelkiln.db.transition_runs import DroppedImage
from pixelkiln.exceptions import InvalidStateError, NotFoundError
from pixelkiln.models import Batch, BatchStatus, TaskStatus

#: moves written in the parts named above, called here like every other move
__all__ = [
    "DroppedImage",
    "cancel",
    "charged_under",
    "claim",
    "created",
    "image_deleted",
    "pause",
    "record_outcomes",
    "recover",
    "regenerate",
    "release",
    "renew",
    "retry",
    "start",
    "unstart",
]

PENDING, RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED
LAST_ATTEMPT = "the runner stopped during the last attempt (lease expired)"
PUT_BACK = "the runner stopped (lease expired); task put back in the queue"


# -- batches ----------------------------------------------------------------------------------


def created(tx: Tx, batch_id: int, name: str, total: int) -> None:
    """A new batch is queued (its rows are stored by ``batches.create_batch``)."""
    notify(tx, WORK)
    ev.append_events(tx, [ev.batch_update(batch_id, BatchStatus.QUEUED, name=name, total=total)])


def cancel(tx: Tx, batch: Batch) -> None:
    """Pending and running tasks → cancelled and refunded; the batch ends cancelled.

    A runner working on one of them learns it at its next lease renewal.

    The task rows are locked before the batch's (the order of every runner's write:
    its tasks, then their batch's counters); locking the batch first deadlocked with
    workers recording this batch's tasks.
    """
    if batch.status.finished:
        _not_deleting(tx, batch.id)  # one being deleted is gone rather than finished
        raise InvalidStateError(f"batch {batch.id} already finished ({batch.status})")
    counts = Counts()
    for source in (PENDING, RUNNING):
        moved = tx.conn.execute(sql.cancel_tasks(batch.id, source, tx.now)).rowcount
        counts.shift(batch.id, source, CANCELLED, moved)
    _not_deleting(tx, batch.id)  # a retention step's mark undoes the moves (rolled back)
    refund_where(tx, (tasks.c.batch_id == batch.id) & (tasks.c.status == CANCELLED))
    set_final(tx, counts.apply(tx)[batch.id], BatchStatus.CANCELLED)


def retry(
    tx: Tx, batch: Batch, *, include_cancelled: bool = False, task_ids: Iterable[int] | None = None
) -> int:
    """Failed (and optionally cancelled) tasks → pending with fresh attempts; returns how many.

    The batch is queued again (paused stays paused). Charging for the retry is
    the caller's (the service layer's) part of the same transaction.
    """
    _not_deleting(tx, batch.id)
    sources = [FAILED] + ([CANCELLED] if include_cancelled else [])
    only = None if task_ids is None else list(task_ids)
    counts = Counts()
    for source in sources:
        moved = tx.conn.execute(sql.retry_tasks(batch.id, source, only)).rowcount
        counts.shift(batch.id, source, PENDING, moved)
    retried = counts.deltas[batch.id][PENDING]
    if not retried:
        what = " or ".join(sources)
        if only is not None and len(only) <= 20:  # name what was asked for (a retry of one)
            keys = select(tasks.c.key).where(tasks.c.batch_id == batch.id, tasks.c.id.in_(only))
            named = ", ".join(tx.conn.execute(keys.order_by(tasks.c.position)).scalars())
            raise InvalidStateError(f"batch {batch.id}: task {named or '?'} is not {what}")
        raise InvalidStateError(f"batch {batch.id} has no {what} task to retry")
    counts.apply(tx)
    status = BatchStatus.PAUSED if batch.status == BatchStatus.PAUSED else BatchStatus.QUEUED
    tx.conn.execute(sql.set_batch(batch.id, status=status, finished_at=None))
    ev.append_events(tx, [ev.batch_update(batch.id, status, retried=retried)])
    return retried


def regenerate(tx: Tx, batch: Batch, task_ids: Sequence[int], *, replace: bool = False) -> int:
    """Finished tasks (succeeded, failed, cancelled) → pending as their next run; how many.

    Each task's ``run`` goes up by one, so its next images are kept apart from the
    earlier ones, and a seed that was drawn at random is drawn again (see
    :mod:`.transition_runs`). InvalidStateError naming the tasks still
    pending or running. A batch that had ended is queued again and ends again.
    Charging is the caller's part of the same transaction, as for a retry.
    """
    _not_deleting(tx, batch.id)
    only = sorted(set(task_ids))
    _refuse_busy(tx, batch.id, only)
    counts = Counts()
    for source in (SUCCEEDED, FAILED, CANCELLED):
        moved = tx.conn.execute(sql.regenerate_tasks(batch.id, source, only)).rowcount
        counts.shift(batch.id, source, PENDING, moved)
    regenerated = counts.deltas[batch.id][PENDING]
    if regenerated != len(only):  # one was claimed meanwhile: the whole move rolls back
        _refuse_busy(tx, batch.id, only, regenerated)
    counts.apply(tx)
    status = BatchStatus.QUEUED if batch.status.finished else batch.status
    runs.mark_replacing(tx, only, replace)
    runs.reseed(tx, only)
    tx.conn.execute(sql.set_batch(batch.id, status=status, finished_at=None))
    ev.append_events(tx, [ev.batch_update(batch.id, status, retried=regenerated)])
    return regenerated


def _not_deleting(tx: Tx, batch_id: int) -> None:
    """NotFoundError when retention began deleting the batch (``batches.deleting_at``): it is
    gone, and no move may re-queue what is half deleted.

    The row is read under a row lock (PostgreSQL; SQLite has one writer): a retention step
    marking the batch meanwhile waits for this move to commit, or this move for that step,
    then sees its mark; the step checks the status in the same UPDATE that marks.
    """
    query = select(batches.c.deleting_at).where(batches.c.id == batch_id).with_for_update()
    if tx.conn.execute(query).scalar() is not None:
        raise NotFoundError(f"no batch {batch_id} (it is being deleted)")


def _refuse_busy(tx: Tx, batch_id: int, only: list[int], moved: int | None = None) -> None:
    """InvalidStateError naming the tasks of ``only`` that are pending or running."""
    busy = select(tasks.c.key).where(
        tasks.c.batch_id == batch_id, tasks.c.id.in_(only), tasks.c.status.in_([PENDING, RUNNING])
    )
    keys = list(tx.conn.execute(busy.order_by(tasks.c.position)).scalars())
    if keys or moved is not None:
        raise InvalidStateError(
            f"batch {batch_id}: task(s) {', '.join(keys) or '?'} are still pending or running; "
            "only finished tasks can be regenerated (cancel the batch first)"
        )


def pause(tx: Tx, batch: Batch, paused: bool) -> bool:
    """Pause (no new task starts) or resume a batch; False when it already was so."""
    _not_deleting(tx, batch.id)
    if batch.status.finished:
        raise InvalidStateError(f"batch {batch.id} already finished ({batch.status})")
    if paused == (batch.status == BatchStatus.PAUSED):
        return False
    if paused:
        status = BatchStatus.PAUSED
    else:
        status = BatchStatus.RUNNING if batch.started_at else BatchStatus.QUEUED
    tx.conn.execute(sql.set_batch(batch.id, status=status))
    ev.append_events(tx, [ev.batch_update(batch.id, status)])
    if not paused:
        notify(tx, WORK)  # its pending tasks may start again, in any process
    return True


def image_deleted(tx: Tx, batch_id: int, superseded: bool = False) -> None:
    """One image of the batch was deleted (its task stays succeeded); history is not counted."""
    if superseded:
        return
    counts = Counts()
    counts.deltas[batch_id]["images"] -= 1
    counts.apply(tx)


# -- tasks: start -----------------------------------------------------------------------------


def start(tx: Tx, owner: str, task_ids: Sequence[int], *, paced: bool = False) -> set[int]:
    """Spend an attempt of each task about to be sent to its generator.

    Commit it before the request goes out: a task that kills its runner then
    still runs out of attempts. Returns the ids marked; one missing was taken
    away (cancelled, or recovered) and must not be sent. ``paced``: some of them
    belong to batches with a ``delay``, whose wait then runs from now.
    """
    if not task_ids:
        return set()
    if tx.dialect == "sqlite":
        cursor = tx.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(sql.start_sqlite(len(task_ids)), [tx.now, *task_ids, owner])
        marked = {row[0] for row in cursor.fetchall()}
        cursor.close()
    elif tx.dialect == "postgresql":  # through the driver too: see db.driver
        marked = {r[0] for r in driver.rows(tx, sql.START_PG, (tx.now, list(task_ids), owner))}
    else:
        params = {"s_ids": list(task_ids), "s_owner": owner, "s_now": tx.now}
        marked = set(returning.execute(tx.conn, sql.START, params).scalars())
    if marked and paced:  # a batch's ``delay`` counts from its task's real start
        tx.conn.execute(sql.PACED_MARKED, {"m_ids": sorted(marked), "m_now": tx.now})
    return marked


def unstart(tx: Tx, owner: str, starts: Mapping[int, float]) -> int:
    """Undo :func:`start` for tasks whose requests never went out: ``starts`` maps each to
    the moment it was marked (a start marked with a slot take whose caller was cancelled as
    the grant arrived: engine.shared_limits). Only tasks still held and marked at that
    moment; how many."""
    undone = 0
    for at in sorted(set(starts.values())):
        ids = sorted(t for t, when in starts.items() if when == at)
        params = {"u_ids": ids, "u_owner": owner, "u_at": at}
        undone += int(tx.conn.execute(sql.UNSTART, params).rowcount)
    return undone


def renew(tx: Tx, owner: str, task_ids: Sequence[int], until: float) -> set[int]:
    """Extend ``owner``'s leases on ``task_ids`` (no status moves); the ids it still holds."""
    if not task_ids:
        return set()
    if tx.dialect == "postgresql":  # through the driver too: every runner, every 2 s
        return {r[0] for r in driver.rows(tx, sql.RENEW_PG, (until, list(task_ids), owner))}
    params = {"r_ids": list(task_ids), "r_owner": owner, "r_until": until}
    return set(returning.execute(tx.conn, sql.RENEW, params).scalars())


# -- tasks: giving back -----------------------------------------------------------------------


def release(tx: Tx, owner: str, task_ids: Iterable[int]) -> int:
    """running → pending, untried (shutdown, Ctrl-C): a started try gives its attempt back."""
    ids = list(task_ids)
    if not ids:
        return 0
    moved = (
        returning.execute(tx.conn, sql.RELEASE, {"l_ids": ids, "l_owner": owner}).scalars().all()
    )
    counts = Counts()
    counts.moved(moved, RUNNING, PENDING)
    counts.apply(tx)
    return len(moved)


def recover(tx: Tx, dead_owners: Sequence[str] = ()) -> int:
    """Running tasks whose lease expired, or whose runner is known dead, → pending.

    A task whose last attempt had started fails instead (refunded), so a task
    that kills its runner cannot loop for ever; one that never started loses
    nothing. Returns how many tasks moved.
    """
    lapsed = sql.lapsed(tx.now, list(dead_owners))
    failed = returning.execute(tx.conn, sql.recover_failed(lapsed, tx.now, LAST_ATTEMPT)).all()
    back = returning.execute(tx.conn, sql.recover_back(lapsed, tx.now, PUT_BACK)).all()
    if not failed and not back:
        return 0
    refund_failed(tx, [r.id for r in failed])
    counts = Counts()
    counts.moved((r.batch_id for r in failed), RUNNING, FAILED)
    counts.moved((r.batch_id for r in back), RUNNING, PENDING)
    after = counts.apply(tx)
    events = [_put_back_warning(r) for r in back]
    progress = Progress(after, (r.batch_id for r in failed))
    for r in failed:
        events.append(ev.error(r.batch_id, r.id, error=LAST_ATTEMPT, item_key=r.key))
        events.append(progress.event(r.batch_id, r.id, r.key, f"failed: {LAST_ATTEMPT}"))
    ev.append_events(tx, events)
    finish_done(tx, after.values())
    return len(failed) + len(back)


def _put_back_warning(row: Row[Any]) -> ev.PendingEvent:
    unstarted = " (it had not started: no attempt spent)" if row.started_at is None else ""
    return ev.warning(
        row.batch_id,
        f"runner stopped; task put back in the queue{unstarted}",
        task_id=row.id,
        item_key=row.key,
    )
