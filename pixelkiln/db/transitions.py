"""Every move of a task or a batch between statuses: rows, counters, refunds and events.

Each move is one helper here, run in the caller's transaction: it changes the
rows, adjusts the batch counters by the rows it actually moved (in-place
deltas, one statement per batch, never a recount), refunds the credits of a
task that ends without images (failed for good, or cancelled), and appends
its events through the builders of :mod:`.events`, so all of it commits
together or not at all. Charging is the service layer's; refunds are here.
The SQL it runs is in :mod:`.transition_sql`.

Tasks (``models.TaskStatus``)::

    pending ──claim──▶ running ──start (attempt spent)──▶ running ──succeed──▶ succeeded
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

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, select

from pixelkiln.db import events as ev
from pixelkiln.db import transition_runs as runs
from pixelkiln.db import transition_sql as sql
from pixelkiln.db.credits import chunks, record_entry
from pixelkiln.db.database import Tx
from pixelkiln.db.pacing import BatchLimits
from pixelkiln.db.tables import tasks
from pixelkiln.db.transition_runs import DroppedImage
from pixelkiln.exceptions import InvalidStateError
from pixelkiln.models import Batch, BatchStatus, ClaimedTask, TaskFailure, TaskResult, TaskStatus

PENDING, RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED
LAST_ATTEMPT = "the runner stopped during the last attempt (lease expired)"
PUT_BACK = "the runner stopped (lease expired); task put back in the queue"


# -- counters ---------------------------------------------------------------------------------


class _Counts:
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

    def apply(self, tx: Tx) -> dict[int, Row[Any]]:
        """Adjust each batch's counters; returns its row after (status, started_at, n_*)."""
        after = {}
        for batch_id, delta in self.deltas.items():
            params = {f"k_{k}": delta[k] for k in sql.COUNTED}
            after[batch_id] = tx.conn.execute(
                sql.ADJUST_COUNTS, {"k_batch": batch_id, **params}
            ).one()
        return after


class _Progress:
    """Numbers the ``progress`` events of the tasks one move finished."""

    def __init__(self, after: dict[int, Row[Any]], finished: Iterable[int]) -> None:
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


# -- batches ----------------------------------------------------------------------------------


def created(tx: Tx, batch_id: int, name: str, total: int) -> None:
    """A new batch is queued (its rows are stored by ``batches.create_batch``)."""
    ev.append_events(tx, [ev.batch_update(batch_id, BatchStatus.QUEUED, name=name, total=total)])


def _start_batches(tx: Tx, after: dict[int, Row[Any]]) -> None:
    """queued → running for batches whose first task was just claimed."""
    for batch_id, row in after.items():
        if row.status != BatchStatus.QUEUED:
            continue
        if tx.conn.execute(sql.START_BATCH, {"m_batch": batch_id, "m_now": tx.now}).rowcount:
            ev.append_events(tx, [ev.batch_update(batch_id, BatchStatus.RUNNING)])


def _finish_done(tx: Tx, after: Iterable[Row[Any]]) -> None:
    """Batches with no task pending or running end completed, partial or failed."""
    for row in after:
        if row.n_pending or row.n_running or BatchStatus(row.status).finished:
            continue
        if row.n_succeeded == row.n_tasks:
            _set_final(tx, row, BatchStatus.COMPLETED)
        else:
            _set_final(tx, row, BatchStatus.PARTIAL if row.n_succeeded else BatchStatus.FAILED)


def _set_final(tx: Tx, row: Row[Any], status: BatchStatus) -> None:
    tx.conn.execute(sql.set_batch(row.id, status=status, finished_at=tx.now))
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


def cancel(tx: Tx, batch: Batch) -> None:
    """Pending and running tasks → cancelled and refunded; the batch ends cancelled.

    A runner working on one of them learns it at its next lease renewal.
    """
    if batch.status.finished:
        raise InvalidStateError(f"batch {batch.id} already finished ({batch.status})")
    counts = _Counts()
    for source in (PENDING, RUNNING):
        moved = tx.conn.execute(sql.cancel_tasks(batch.id, source, tx.now)).rowcount
        counts.shift(batch.id, source, CANCELLED, moved)
    _refund_where(tx, (tasks.c.batch_id == batch.id) & (tasks.c.status == CANCELLED))
    _set_final(tx, counts.apply(tx)[batch.id], BatchStatus.CANCELLED)


def retry(
    tx: Tx, batch: Batch, *, include_cancelled: bool = False, task_ids: Iterable[int] | None = None
) -> int:
    """Failed (and optionally cancelled) tasks → pending with fresh attempts; returns how many.

    The batch is queued again (paused stays paused). Charging for the retry is
    the caller's (the service layer's) part of the same transaction.
    """
    sources = [FAILED] + ([CANCELLED] if include_cancelled else [])
    only = None if task_ids is None else list(task_ids)
    counts = _Counts()
    for source in sources:
        moved = tx.conn.execute(sql.retry_tasks(batch.id, source, only)).rowcount
        counts.shift(batch.id, source, PENDING, moved)
    retried = counts.deltas[batch.id][PENDING]
    if not retried:
        raise InvalidStateError(f"batch {batch.id} has no {' or '.join(sources)} task to retry")
    counts.apply(tx)
    status = BatchStatus.PAUSED if batch.status == BatchStatus.PAUSED else BatchStatus.QUEUED
    tx.conn.execute(sql.set_batch(batch.id, status=status, finished_at=None))
    ev.append_events(tx, [ev.batch_update(batch.id, status, retried=retried)])
    return retried


def regenerate(tx: Tx, batch: Batch, task_ids: Sequence[int], *, replace: bool = False) -> int:
    """Finished tasks (succeeded, failed, cancelled) → pending as their next run; how many.

    Each task's ``run`` goes up by one, so its next images are kept apart from the
    earlier ones (see :mod:`.transition_runs`). InvalidStateError naming the tasks still
    pending or running. A batch that had ended is queued again and ends again.
    Charging is the caller's part of the same transaction, as for a retry.
    """
    only = sorted(set(task_ids))
    _refuse_busy(tx, batch.id, only)
    counts = _Counts()
    for source in (SUCCEEDED, FAILED, CANCELLED):
        moved = tx.conn.execute(sql.regenerate_tasks(batch.id, source, only)).rowcount
        counts.shift(batch.id, source, PENDING, moved)
    regenerated = counts.deltas[batch.id][PENDING]
    if regenerated != len(only):  # one was claimed meanwhile: the whole move rolls back
        _refuse_busy(tx, batch.id, only, regenerated)
    counts.apply(tx)
    status = BatchStatus.QUEUED if batch.status.finished else batch.status
    runs.mark_replacing(tx, only, replace)
    tx.conn.execute(sql.set_batch(batch.id, status=status, finished_at=None))
    ev.append_events(tx, [ev.batch_update(batch.id, status, retried=regenerated)])
    return regenerated


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
    return True


def image_deleted(tx: Tx, batch_id: int, superseded: bool = False) -> None:
    """One image of the batch was deleted (its task stays succeeded); history is not counted."""
    if superseded:
        return
    counts = _Counts()
    counts.deltas[batch_id]["images"] -= 1
    counts.apply(tx)


def charged_under(tx: Tx, batch_id: int, refund_failed: bool) -> None:
    """Remember the refund policy a batch was (last) charged under: with ``refund_failed``
    False, its tasks that fail for good keep their charge (cancelled ones are refunded)."""
    runs.charged_under(tx, batch_id, refund_failed)


# -- tasks: claim and start -------------------------------------------------------------------


def claim(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    batch_ids: Sequence[int],
    limits: Mapping[int, BatchLimits] | None = None,
    free: Mapping[str, int] | None = None,
) -> list[ClaimedTask]:
    """pending → running under ``owner``'s lease, spending no attempt yet.

    Up to ``wants[backend]`` tasks per backend from ``batch_ids``, in that order
    (priority, then age), each batch's in position order. One UPDATE … RETURNING
    per (backend, batch); on PostgreSQL the inner select is ``FOR UPDATE SKIP
    LOCKED``, so workers on several machines never claim the same task.

    A batch in ``limits`` gets no more than its own limits allow (db.pacing);
    one with a ``delay`` only from a backend with a slot ``free`` now (default:
    its want), and its ``last_start_at`` becomes now. Its share left over goes
    to the batches after it, so a capped batch never holds the others back.
    """
    room = _Room(_allowances(tx, limits or {}), {b.id for b in (limits or {}).values() if b.paced})
    lease = {"c_owner": owner, "c_now": tx.now, "c_expires": tx.now + lease_seconds}
    claimed: list[ClaimedTask] = []
    for backend, want in wants.items():
        spare = want if free is None else free.get(backend, 0)
        claimed += _claim_backend(tx, lease, backend, want, spare, batch_ids, room)
    if not claimed:
        return []
    return _claimed(tx, claimed, batch_ids, room.paced)


@dataclass
class _Room:
    """What batches with limits of their own may still claim, spent as a claim goes."""

    allow: dict[int, int]  #: batch id → tasks it may still claim (limited batches only)
    paced: set[int]  #: batches with a delay: claimed only into a slot free now

    def limit(self, batch_id: int, want: int, spare: int) -> int:
        own = self.allow.get(batch_id)  # None: no limit of its own
        if own is None:
            return want
        return min(want, own, spare) if batch_id in self.paced else min(want, own)

    def spend(self, batch_id: int, n: int) -> int:
        """Count ``n`` claimed tasks of the batch; returns the free slots they took."""
        if batch_id in self.allow:
            self.allow[batch_id] -= n
        return n if batch_id in self.paced else 0


def _claim_backend(
    tx: Tx,
    lease: dict[str, Any],
    backend: str,
    want: int,
    spare: int,
    batch_ids: Sequence[int],
    room: _Room,
) -> list[ClaimedTask]:
    """One backend's share of a claim, batch after batch."""
    statement = sql.CLAIM_PG if tx.dialect == "postgresql" else sql.CLAIM
    claimed: list[ClaimedTask] = []
    for batch_id in batch_ids:
        if want <= 0:
            break
        limit = room.limit(batch_id, want, spare)
        if limit <= 0:
            continue
        params = {"c_batch": batch_id, "c_backend": backend, "c_limit": limit, **lease}
        rows = tx.conn.execute(statement, params).all()
        want -= len(rows)
        spare -= room.spend(batch_id, len(rows))
        claimed.extend(ClaimedTask(*row) for row in rows)
    return claimed


def _allowances(tx: Tx, limits: Mapping[int, BatchLimits]) -> dict[int, int]:
    """What each limited batch may still claim; read again under a lock on PostgreSQL."""
    if not limits:
        return {}
    current: Iterable[BatchLimits] = limits.values()
    if tx.dialect == "postgresql":
        rows = tx.conn.execute(sql.BATCH_LIMITS_PG, {"l_ids": list(limits)})
        current = [BatchLimits(*row) for row in rows]
    allow = {b.id: b.allowance(tx.now) for b in current}
    return {batch_id: n for batch_id, n in allow.items() if n is not None}


def _claimed(
    tx: Tx, claimed: list[ClaimedTask], batch_ids: Sequence[int], paced: set[int]
) -> list[ClaimedTask]:
    """Counters, batches' first start and paced starts of a claim; the tasks in order."""
    counts = _Counts()
    counts.moved((t.batch_id for t in claimed), PENDING, RUNNING)
    _start_batches(tx, counts.apply(tx))
    started = paced.intersection(t.batch_id for t in claimed)
    if started:
        tx.conn.execute(sql.PACED_START, {"p_ids": sorted(started), "p_now": tx.now})
    order = {batch_id: i for i, batch_id in enumerate(batch_ids)}
    claimed.sort(key=lambda t: (order[t.batch_id], t.position))
    return claimed


def start(tx: Tx, owner: str, task_ids: Sequence[int]) -> set[int]:
    """Spend an attempt of each task about to be sent to its generator.

    Commit it before the request goes out: a task that kills its runner then
    still runs out of attempts. Returns the ids marked; one missing was taken
    away (cancelled, or recovered) and must not be sent.
    """
    if not task_ids:
        return set()
    if tx.dialect == "sqlite":
        cursor = tx.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(sql.start_sqlite(len(task_ids)), [tx.now, *task_ids, owner])
        marked = {row[0] for row in cursor.fetchall()}
        cursor.close()
        return marked
    params = {"s_ids": list(task_ids), "s_owner": owner, "s_now": tx.now}
    return set(tx.conn.execute(sql.START, params).scalars())


# -- tasks: outcomes --------------------------------------------------------------------------


def record_outcomes(
    tx: Tx,
    owner: str,
    results: Sequence[TaskResult],
    failures: Sequence[TaskFailure],
    dropped: list[DroppedImage] | None = None,
) -> set[int]:
    """Record a group of finished tries (succeed, retry later, fail); returns the ids accepted.

    A try whose lease ``owner`` lost (presumed dead, or the batch was
    cancelled) changes nothing. Images of earlier runs that a regenerated task's
    success deleted (``replace``) are added to ``dropped``: remove their files
    once this transaction has committed.
    """
    ids = [r.task.id for r in results] + [f.task.id for f in failures]
    if not ids:
        return set()
    held_query = sql.HELD_PG if tx.dialect == "postgresql" else sql.HELD
    held = set(tx.conn.execute(held_query, {"h_ids": ids, "h_owner": owner}).scalars())
    done = [r for r in results if r.task.id in held]
    later = [f for f in failures if f.task.id in held and f.retry_at is not None]
    final = [f for f in failures if f.task.id in held and f.retry_at is None]
    counts = _Counts()
    image_ids = iter(_succeed(tx, done, counts, dropped if dropped is not None else []))
    _retry_later(tx, later, counts)
    _fail(tx, final, counts)
    after = counts.apply(tx)
    progress = _Progress(after, [t.batch_id for t in _tasks(done) + _tasks(final)])
    events: list[ev.PendingEvent] = []
    for r in done:
        t = r.task
        events.extend(_image_events(r, image_ids))
        events.append(
            progress.event(t.batch_id, t.id, t.key, f"generated {len(r.images)} image(s)")
        )
    # a wait for a down backend (no attempt spent) is noted once by the scheduler instead
    events.extend(_retry_warning(tx, f) for f in later if f.spend_attempt)
    for f in final:
        t = f.task
        events.append(
            ev.error(t.batch_id, t.id, error=f.error, item_key=t.key, error_type=_type(f))
        )
        events.append(progress.event(t.batch_id, t.id, t.key, f"failed: {f.error}"))
    ev.append_events(tx, events)
    _finish_done(tx, after.values())
    return held  # every outcome of a task still held was recorded


def _tasks(outcomes: Sequence[TaskResult] | Sequence[TaskFailure]) -> list[ClaimedTask]:
    return [o.task for o in outcomes]


def _succeed(
    tx: Tx, done: Sequence[TaskResult], counts: _Counts, dropped: list[DroppedImage]
) -> list[int]:
    """running → succeeded with the image rows; returns the new image ids in order."""
    if not done:
        return []
    tx.conn.execute(
        sql.SUCCEED, [{"t_id": r.task.id, "t_duration": r.duration, "t_now": tx.now} for r in done]
    )
    # a re-run after a crash overwrote the same files; never keep two rows for them
    for batch_id in tx.conn.execute(
        sql.DROP_IMAGES, {"d_ids": [r.task.id for r in done]}
    ).scalars():
        counts.deltas[batch_id]["images"] -= 1
    for batch_id, k in runs.supersede(tx, [r.task for r in done if r.task.run], dropped).items():
        counts.deltas[batch_id]["images"] -= k
    counts.moved((r.task.batch_id for r in done), RUNNING, SUCCEEDED)
    for r in done:
        counts.deltas[r.task.batch_id]["images"] += len(r.images)
    rows = [
        sql.image_row(r.task, i, img, seed, tx.now)
        for r in done
        for i, (img, seed) in enumerate(r.images)
    ]
    return list(tx.conn.execute(sql.INSERT_IMAGES, rows).scalars()) if rows else []


def _image_events(result: TaskResult, image_ids: Iterable[int]) -> list[ev.PendingEvent]:
    t, ids = result.task, iter(image_ids)
    return [
        ev.image_generated(
            t.batch_id,
            t.id,
            item_key=t.key,
            image={
                "id": next(ids),
                "index": i,
                "path": im.path,
                "width": im.width,
                "height": im.height,
                "backend": im.backend or t.backend,
                "server": im.server,
                "model": im.model,
            },
        )
        for i, (im, _seed) in enumerate(result.images)
    ]


def _retry_later(tx: Tx, failures: Sequence[TaskFailure], counts: _Counts) -> None:
    """running → pending until ``retry_at``; a wait for a down backend gives its attempt back."""
    if not failures:
        return
    rows = [{**_failure_row(tx, f), "t_at": f.retry_at} for f in failures]
    tx.conn.execute(sql.RETRY_LATER, rows)
    counts.moved((f.task.batch_id for f in failures), RUNNING, PENDING)


def _failure_row(tx: Tx, f: TaskFailure) -> dict[str, Any]:
    """A failed try's parameters; a try that only found its backend down gives its attempt back."""
    return {
        "t_id": f.task.id,
        "t_error": f.error,
        "t_duration": f.duration,
        "t_give_back": 0 if f.spend_attempt else 1,
        "t_now": tx.now,
    }


def _retry_warning(tx: Tx, f: TaskFailure) -> ev.PendingEvent:
    return ev.warning(
        f.task.batch_id,
        f"attempt {f.task.attempts} of {f.task.max_attempts} failed; retrying",
        task_id=f.task.id,
        item_key=f.task.key,
        error=f.error,
        error_type=_type(f),
        attempt=f.task.attempts,
        retry_in=round(max(0.0, (f.retry_at or tx.now) - tx.now), 3),
    )


def _type(f: TaskFailure) -> str | None:
    error_type = f.details.get("error_type")
    return None if error_type is None else str(error_type)


def _fail(tx: Tx, failures: Sequence[TaskFailure], counts: _Counts) -> None:
    """running → failed for good, refunded."""
    if not failures:
        return
    tx.conn.execute(sql.FAIL, [_failure_row(tx, f) for f in failures])
    _refund(tx, [f.task.id for f in failures])
    counts.moved((f.task.batch_id for f in failures), RUNNING, FAILED)


# -- tasks: giving back -----------------------------------------------------------------------


def release(tx: Tx, owner: str, task_ids: Iterable[int]) -> int:
    """running → pending, untried (shutdown, Ctrl-C): a started try gives its attempt back."""
    ids = list(task_ids)
    if not ids:
        return 0
    moved = tx.conn.execute(sql.RELEASE, {"l_ids": ids, "l_owner": owner}).scalars().all()
    counts = _Counts()
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
    failed = tx.conn.execute(sql.recover_failed(lapsed, tx.now, LAST_ATTEMPT)).all()
    back = tx.conn.execute(sql.recover_back(lapsed, tx.now, PUT_BACK)).all()
    if not failed and not back:
        return 0
    _refund(tx, [r.id for r in failed])
    counts = _Counts()
    counts.moved((r.batch_id for r in failed), RUNNING, FAILED)
    counts.moved((r.batch_id for r in back), RUNNING, PENDING)
    after = counts.apply(tx)
    events = [_put_back_warning(r) for r in back]
    progress = _Progress(after, (r.batch_id for r in failed))
    for r in failed:
        events.append(ev.error(r.batch_id, r.id, error=LAST_ATTEMPT, item_key=r.key))
        events.append(progress.event(r.batch_id, r.id, r.key, f"failed: {LAST_ATTEMPT}"))
    ev.append_events(tx, events)
    _finish_done(tx, after.values())
    return len(failed) + len(back)


def _put_back_warning(row: Row[Any]) -> ev.PendingEvent:
    unstarted = " (it had not started: no attempt spent)" if row.started_at is None else ""
    return ev.warning(
        row.batch_id,
        f"runner stopped; task put back in the queue{unstarted}",
        task_id=row.id,
        item_key=row.key,
    )


# -- refunds ----------------------------------------------------------------------------------


def _refund(tx: Tx, task_ids: Sequence[int]) -> int:
    """Pay back what tasks that failed for good cost their batch's owner, once; returns credits
    refunded. A batch charged under ``[credits] refund_failed = false`` keeps the charge."""
    total = 0
    for chunk in chunks(task_ids):
        condition = tasks.c.id.in_(chunk)
        keep = runs.keeping_failed(tx, condition)
        kept = condition & tasks.c.batch_id.not_in(keep) if keep else condition
        total += _refund_where(tx, kept)
    return total


def _refund_where(tx: Tx, condition: ColumnElement[bool]) -> int:
    """Refund the tasks matching ``condition`` that still hold a cost, and zero it.

    Each task records what it cost; zeroing it makes refunding a task twice
    impossible (a retry charges it again and records the new cost).
    """
    rows = tx.conn.execute(sql.refunds_due(condition)).all()
    if not rows:
        return 0
    tx.conn.execute(sql.zero_costs(condition))
    total = 0
    for row in rows:
        if row.owner_id is not None:
            note = "failed or cancelled tasks"
            record_entry(tx, row.owner_id, int(row.total), "refund", row.batch_id, note)
            total += int(row.total)
    return total
