"""Task queries: claim with a lease, renew, finish, fail, release, recover; and reads.

The hot path (claim, complete) adjusts batch counters in place instead of
recounting, and finishing checks the lease owner: a runner that lost its
lease (it was presumed dead, or the batch was cancelled) changes nothing.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from pixelkiln.db.batches import finish_if_done, mark_started, refresh_counts, runnable_batch_ids
from pixelkiln.db.credits import refund_tasks
from pixelkiln.db.database import Tx
from pixelkiln.db.events import PendingEvent, append_events
from pixelkiln.db.tables import batches, images, tasks
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import EventType, ImageRecord, Task, TaskStatus
from pixelkiln.storage import StoredImage

RUNNING = str(TaskStatus.RUNNING)


@dataclass(frozen=True)
class ClaimedTask:
    """A task a runner now holds a lease on: what it needs to run it."""

    id: int
    batch_id: int
    position: int
    key: str
    backend: str
    prompt: str
    negative_prompt: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    attempts: int  #: including this one
    max_attempts: int


@dataclass(frozen=True)
class TaskResult:
    """A successful try: the images already written to storage."""

    task: ClaimedTask
    images: Sequence[tuple[StoredImage, int]]  #: (file record, seed)
    duration: float


@dataclass(frozen=True)
class TaskFailure:
    """A failed try. ``retry_at`` None means the task fails for good."""

    task: ClaimedTask
    error: str
    retry_at: float | None
    duration: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    spend_attempt: bool = True  #: False when the task only waited (every server down)


_CLAIM_COLUMNS = (
    tasks.c.id,
    tasks.c.batch_id,
    tasks.c.position,
    tasks.c.key,
    tasks.c.backend,
    tasks.c.prompt,
    tasks.c.negative_prompt,
    tasks.c.params,
    tasks.c.inputs,
    tasks.c.attempts,
    tasks.c.max_attempts,
)


def claim_tasks(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    only_batches: Iterable[int] | None = None,
) -> list[ClaimedTask]:
    """Claim up to ``wants[backend]`` pending tasks per backend, by priority then age.

    One UPDATE … RETURNING per (backend, batch) under the write lock; on
    PostgreSQL the inner select is ``FOR UPDATE SKIP LOCKED`` so workers on
    several machines never claim the same task.
    """
    claimed: list[ClaimedTask] = []
    batch_ids = runnable_batch_ids(tx.conn, tx.now, only_batches)
    statement = _CLAIM_PG if tx.dialect == "postgresql" else _CLAIM
    for backend, want in wants.items():
        for batch_id in batch_ids:
            if want <= 0:
                break
            rows = tx.conn.execute(
                statement,
                {
                    "c_batch": batch_id,
                    "c_backend": backend,
                    "c_now": tx.now,
                    "c_limit": want,
                    "c_owner": owner,
                    "c_expires": tx.now + lease_seconds,
                },
            ).all()
            want -= len(rows)
            claimed.extend(ClaimedTask(*row) for row in rows)
    _shift_counts(tx, Counter(t.batch_id for t in claimed), "n_pending", "n_running")
    if claimed:
        mark_started(tx, {t.batch_id for t in claimed})
    claimed.sort(key=lambda t: (batch_ids.index(t.batch_id), t.position))
    return claimed


def _claim_statement(skip_locked: bool) -> Any:
    """Built once: constructing SQLAlchemy statements per call costs more than running them."""
    pick = (
        select(tasks.c.id)
        .where(
            tasks.c.batch_id == bindparam("c_batch"),
            tasks.c.status == str(TaskStatus.PENDING),
            tasks.c.backend == bindparam("c_backend"),
            tasks.c.next_attempt_at <= bindparam("c_now"),
        )
        .order_by(tasks.c.position)
        .limit(bindparam("c_limit"))
    )
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(tasks)
        .where(tasks.c.id.in_(pick.scalar_subquery()))
        .values(
            status=str(TaskStatus.RUNNING),
            lease_owner=bindparam("c_owner"),
            lease_expires_at=bindparam("c_expires"),
            attempts=tasks.c.attempts + 1,
            started_at=bindparam("c_now"),
        )
        .returning(*_CLAIM_COLUMNS)
    )


_CLAIM = _claim_statement(skip_locked=False)
_CLAIM_PG = _claim_statement(skip_locked=True)


@functools.cache
def _shift_statement(source: str, target: str) -> Any:
    return (
        update(batches)
        .where(batches.c.id == bindparam("s_batch"))
        .values(
            {
                source: batches.c[source] - bindparam("s_k"),
                target: batches.c[target] + bindparam("s_k"),
            }
        )
    )


def _shift_counts(tx: Tx, per_batch: Counter[int], source: str, target: str) -> None:
    for batch_id, k in per_batch.items():
        tx.conn.execute(_shift_statement(source, target), {"s_batch": batch_id, "s_k": k})


_HELD = select(tasks.c.id).where(
    tasks.c.id.in_(bindparam("h_ids", expanding=True)),
    tasks.c.status == RUNNING,
    tasks.c.lease_owner == bindparam("h_owner"),
)


def _held(tx: Tx, owner: str, task_ids: Iterable[int]) -> set[int]:
    """Which of ``task_ids`` are still running under ``owner``'s lease."""
    return set(tx.conn.execute(_HELD, {"h_ids": list(task_ids), "h_owner": owner}).scalars())


def renew_leases(tx: Tx, owner: str, task_ids: Sequence[int], until: float) -> set[int]:
    """Extend ``owner``'s leases on ``task_ids``; returns the ids it still holds.

    A task missing from the answer was taken away (its batch cancelled, or the
    lease presumed dead and recovered): its runner must stop working on it.
    """
    if not task_ids:
        return set()
    params = {"r_ids": list(task_ids), "r_owner": owner, "r_until": until}
    return set(tx.conn.execute(_RENEW, params).scalars())


_RENEW = (
    update(tasks)
    .where(
        tasks.c.id.in_(bindparam("r_ids", expanding=True)),
        tasks.c.lease_owner == bindparam("r_owner"),
        tasks.c.status == RUNNING,
    )
    .values(lease_expires_at=bindparam("r_until"))
    .returning(tasks.c.id)
)


def record_outcomes(
    tx: Tx, owner: str, results: Sequence[TaskResult], failures: Sequence[TaskFailure]
) -> set[int]:
    """Record a group of finished tries in one transaction; returns the ids accepted."""
    accepted = complete_tasks(tx, owner, results) if results else set()
    return accepted | (fail_tasks(tx, owner, failures) if failures else set())


def complete_tasks(tx: Tx, owner: str, results: Sequence[TaskResult]) -> set[int]:
    """Record successes: status, image rows and events in one transaction.

    Returns the ids accepted; a result whose lease was lost is ignored.
    """
    held = _held(tx, owner, (r.task.id for r in results))
    done = [r for r in results if r.task.id in held]
    if not done:
        return set()
    tx.conn.execute(
        _SUCCEED, [{"t_id": r.task.id, "t_duration": r.duration, "t_now": tx.now} for r in done]
    )
    # a re-run after a crash overwrote the same files; never keep two rows for them
    tx.conn.execute(_DROP_IMAGES, {"d_ids": [r.task.id for r in done]})
    image_rows = [
        {
            "task_id": r.task.id,
            "batch_id": r.task.batch_id,
            "index": i,
            "path": img.path,
            "width": img.width,
            "height": img.height,
            "bytes": img.bytes,
            "sha256": img.sha256,
            "seed": seed,
            "created_at": tx.now,
        }
        for r in done
        for i, (img, seed) in enumerate(r.images)
    ]
    image_ids = iter(
        tx.conn.execute(_INSERT_IMAGES, image_rows).scalars().all() if image_rows else []
    )
    events: list[PendingEvent] = []
    for r in done:
        for i, (img, _seed) in enumerate(r.images):
            events.append(
                (
                    r.task.batch_id,
                    r.task.id,
                    EventType.IMAGE_GENERATED,
                    {
                        "item_key": r.task.key,
                        "task_id": r.task.id,
                        "image": {
                            "id": next(image_ids),
                            "index": i,
                            "path": img.path,
                            "width": img.width,
                            "height": img.height,
                        },
                    },
                )
            )
    per_batch = Counter(r.task.batch_id for r in done)
    n_images = Counter({b: 0 for b in per_batch})
    for r in done:
        n_images[r.task.batch_id] += len(r.images)
    progress = _advance(tx, per_batch, "n_succeeded", n_images)
    events.extend(
        _progress_event(progress, r.task, f"generated {len(r.images)} image(s)") for r in done
    )
    append_events(tx, events)
    _finish_batches(tx, progress)
    return {r.task.id for r in done}


_SUCCEED = (
    update(tasks)
    .where(tasks.c.id == bindparam("t_id"))
    .values(
        status=str(TaskStatus.SUCCEEDED),
        finished_at=bindparam("t_now"),
        duration=bindparam("t_duration"),
        lease_owner=None,
        lease_expires_at=None,
        last_error=None,
    )
)
_DROP_IMAGES = delete(images).where(images.c.task_id.in_(bindparam("d_ids", expanding=True)))
_INSERT_IMAGES = insert(images).returning(images.c.id, sort_by_parameter_order=True)


@functools.cache
def _advance_statement(target: str, with_images: bool) -> Any:
    values: dict[str, Any] = {
        "n_running": batches.c.n_running - bindparam("a_k"),
        target: batches.c[target] + bindparam("a_k"),
    }
    if with_images:
        values["n_images"] = batches.c.n_images + bindparam("a_images")
    return (
        update(batches)
        .where(batches.c.id == bindparam("a_batch"))
        .values(values)
        .returning(
            batches.c.n_tasks,
            batches.c.n_succeeded + batches.c.n_failed + batches.c.n_cancelled,
            batches.c.n_pending + batches.c.n_running,
        )
    )


def _advance(
    tx: Tx, per_batch: Counter[int], target: str, n_images: Counter[int] | None = None
) -> dict[int, list[int]]:
    """Move tasks running → ``target``; returns {batch: [done before, total, open after]}."""
    state: dict[int, list[int]] = {}
    statement = _advance_statement(target, n_images is not None)
    for batch_id, k in per_batch.items():
        params = {"a_batch": batch_id, "a_k": k}
        if n_images is not None:
            params["a_images"] = n_images[batch_id]
        row = tx.conn.execute(statement, params).one()
        state[batch_id] = [row[1] - k, row[0], row[2]]
    return state


def _progress_event(
    progress: dict[int, list[int]], task: ClaimedTask, message: str
) -> PendingEvent:
    state = progress[task.batch_id]
    state[0] += 1
    data = {"current": state[0], "total": state[1], "message": message, "item": task.key}
    return (task.batch_id, task.id, EventType.PROGRESS, data)


def _finish_batches(tx: Tx, progress: dict[int, list[int]]) -> None:
    for batch_id, (_, _, still_open) in progress.items():
        if not still_open:
            finish_if_done(tx, batch_id)


def fail_tasks(tx: Tx, owner: str, failures: Sequence[TaskFailure]) -> set[int]:
    """Record failed tries: back to pending with a retry time, or failed for good."""
    held = _held(tx, owner, (f.task.id for f in failures))
    live = [f for f in failures if f.task.id in held]
    retry = [f for f in live if f.retry_at is not None]
    final = [f for f in live if f.retry_at is None]
    for f in retry:
        tx.conn.execute(
            update(tasks)
            .where(tasks.c.id == f.task.id)
            .values(
                status=TaskStatus.PENDING,
                next_attempt_at=f.retry_at,
                last_error=f.error,
                lease_owner=None,
                lease_expires_at=None,
                duration=f.duration,
                attempts=tasks.c.attempts - (0 if f.spend_attempt else 1),
            )
        )
    for f in final:
        tx.conn.execute(
            update(tasks)
            .where(tasks.c.id == f.task.id)
            .values(
                status=TaskStatus.FAILED,
                finished_at=tx.now,
                last_error=f.error,
                lease_owner=None,
                lease_expires_at=None,
                duration=f.duration,
            )
        )
    if final:
        refund_tasks(tx, [f.task.id for f in final])  # failed for good: its credits go back
    _shift_counts(tx, Counter(f.task.batch_id for f in retry), "n_running", "n_pending")
    events: list[PendingEvent] = [
        (
            f.task.batch_id,
            f.task.id,
            EventType.WARNING,
            {
                "message": f"attempt {f.task.attempts} of {f.task.max_attempts} failed; retrying",
                "error": f.error,
                "item_key": f.task.key,
                "attempt": f.task.attempts,
                "retry_in": round(max(0.0, (f.retry_at or tx.now) - tx.now), 3),
                **f.details,
            },
        )
        for f in retry
        if f.spend_attempt  # waits for a down backend are reported once, by the scheduler
    ]
    progress = _advance(tx, Counter(f.task.batch_id for f in final), "n_failed")
    for f in final:
        events.append(
            (
                f.task.batch_id,
                f.task.id,
                EventType.ERROR,
                {"error": f.error, "item_key": f.task.key, **f.details},
            )
        )
        events.append(_progress_event(progress, f.task, f"failed: {f.error}"))
    append_events(tx, events)
    _finish_batches(tx, progress)
    return {f.task.id for f in live}


def release_tasks(tx: Tx, owner: str, task_ids: Iterable[int]) -> int:
    """Give tasks back untried (shutdown, Ctrl-C): pending again, the attempt not counted."""
    rows = (
        tx.conn.execute(
            update(tasks)
            .where(
                tasks.c.id.in_(list(task_ids)),
                tasks.c.status == RUNNING,
                tasks.c.lease_owner == owner,
            )
            .values(
                status=TaskStatus.PENDING,
                lease_owner=None,
                lease_expires_at=None,
                attempts=func.max(tasks.c.attempts - 1, 0)
                if tx.dialect == "sqlite"
                else func.greatest(tasks.c.attempts - 1, 0),
            )
            .returning(tasks.c.batch_id)
        )
        .scalars()
        .all()
    )
    _shift_counts(tx, Counter(rows), "n_running", "n_pending")
    return len(rows)


def running_lease_owners(conn: Connection) -> list[str]:
    return list(
        conn.execute(
            select(tasks.c.lease_owner).where(tasks.c.status == RUNNING).distinct()
        ).scalars()
    )


def recover_leases(tx: Tx, dead_owners: Sequence[str] = ()) -> int:
    """Put back tasks whose lease expired or whose runner is known dead.

    A task that was on its last attempt fails instead, so a task that kills its
    runner cannot loop forever. Returns how many tasks were recovered.
    """
    expired = tasks.c.lease_expires_at < tx.now
    if dead_owners:
        expired = expired | tasks.c.lease_owner.in_(list(dead_owners))
    rows = tx.conn.execute(
        update(tasks)
        .where(tasks.c.status == RUNNING, expired)
        .values(
            status=TaskStatus.PENDING,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=tx.now,
            last_error="the runner stopped (lease expired); task put back in the queue",
        )
        .returning(
            tasks.c.id, tasks.c.batch_id, tasks.c.key, tasks.c.attempts, tasks.c.max_attempts
        )
    ).all()
    if not rows:
        return 0
    exhausted = [r.id for r in rows if r.attempts >= r.max_attempts]
    if exhausted:
        tx.conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(exhausted))
            .values(
                status=TaskStatus.FAILED,
                finished_at=tx.now,
                last_error="the runner stopped during the last attempt (lease expired)",
            )
        )
        refund_tasks(tx, exhausted)
    refresh_counts(tx, {r.batch_id for r in rows})
    append_events(
        tx,
        [
            (
                r.batch_id,
                r.id,
                EventType.WARNING,
                {
                    "message": "runner stopped; task "
                    + (
                        "failed (no attempts left)"
                        if r.id in exhausted
                        else "put back in the queue"
                    ),
                    "item_key": r.key,
                },
            )
            for r in rows
        ],
    )
    for batch_id in {r.batch_id for r in rows}:
        finish_if_done(tx, batch_id)
    return len(rows)


# -- reads ------------------------------------------------------------------------------------


def _task(row: Row[Any]) -> Task:
    return Task(
        id=row.id,
        batch_id=row.batch_id,
        position=row.position,
        key=row.key,
        status=TaskStatus(row.status),
        backend=row.backend,
        prompt=row.prompt,
        negative_prompt=row.negative_prompt,
        params=dict(row.params),
        inputs=dict(row.inputs),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        last_error=row.last_error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration=row.duration,
    )


def get_task(conn: Connection, task_id: int) -> Task:
    row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
    if row is None:
        raise NotFoundError(f"no task {task_id}")
    return _task(row)


def list_tasks(
    conn: Connection,
    batch_id: int,
    *,
    statuses: Iterable[TaskStatus] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Task]:
    """Tasks of a batch in position order."""
    query = select(tasks).where(tasks.c.batch_id == batch_id).order_by(tasks.c.position)
    if statuses is not None:
        query = query.where(tasks.c.status.in_([str(s) for s in statuses]))
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return [_task(row) for row in conn.execute(query)]


def _image(row: Row[Any]) -> ImageRecord:
    return ImageRecord(
        row.id,
        row.task_id,
        row.batch_id,
        row._mapping["index"],  # row.index is the tuple method
        row.path,
        row.width,
        row.height,
        row.bytes,
        row.sha256,
        row.seed,
        row.created_at,
    )


def list_images(conn: Connection, batch_id: int) -> list[ImageRecord]:
    """Images of a batch, by task position then index."""
    query = (
        select(images)
        .join(tasks, tasks.c.id == images.c.task_id)
        .where(images.c.batch_id == batch_id)
        .order_by(tasks.c.position, images.c.index)
    )
    return [_image(row) for row in conn.execute(query)]


def images_by_task(conn: Connection, batch_id: int) -> dict[int, list[ImageRecord]]:
    grouped: dict[int, list[ImageRecord]] = defaultdict(list)
    for image in list_images(conn, batch_id):
        grouped[image.task_id].append(image)
    return grouped
