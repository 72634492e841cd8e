"""Task outcomes (success with images, failure or retry) recorded in groups; task reads.

Recording adjusts batch counters in place instead of recounting, and checks
the lease owner first: a runner that lost its lease (presumed dead, or the
batch was cancelled) changes nothing. Claiming and leases: :mod:`.leases`.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from pixelkiln.db.batches import finish_if_done
from pixelkiln.db.credits import refund_tasks
from pixelkiln.db.database import Tx
from pixelkiln.db.events import PendingEvent, append_events
from pixelkiln.db.leases import ClaimedTask, held_by, shift_counts
from pixelkiln.db.tables import batches, images, tasks
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import EventType, ImageRecord, Task, TaskStatus
from pixelkiln.storage import StoredImage


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
    held = held_by(tx, owner, (r.task.id for r in results))
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
    held = held_by(tx, owner, (f.task.id for f in failures))
    live = [f for f in failures if f.task.id in held]
    retry = [f for f in live if f.retry_at is not None]
    final = [f for f in live if f.retry_at is None]
    for f in live:
        again: dict[str, Any] = {
            "status": TaskStatus.PENDING,
            "next_attempt_at": f.retry_at,
        }
        tx.conn.execute(
            update(tasks)
            .where(tasks.c.id == f.task.id)
            .values(
                last_error=f.error,
                lease_owner=None,
                lease_expires_at=None,
                duration=f.duration,
                # a try that only found its backend down is no attempt, even a final one
                attempts=tasks.c.attempts - (0 if f.spend_attempt else 1),
                **(
                    again
                    if f.retry_at is not None
                    else {"status": TaskStatus.FAILED, "finished_at": tx.now}
                ),
            )
        )
    if final:
        refund_tasks(tx, [f.task.id for f in final])  # failed for good: its credits go back
    shift_counts(tx, Counter(f.task.batch_id for f in retry), "n_running", "n_pending")
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
