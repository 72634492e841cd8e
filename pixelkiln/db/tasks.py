"""Task outcomes (success with images, failure or retry) recorded in groups; task reads.

Recording checks the lease owner first: a runner that lost its lease (presumed
dead, or the batch was cancelled) changes nothing. The moves themselves (rows,
counters, refunds, events) are in :mod:`.transitions`; claiming and leases:
:mod:`.leases`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Row, select

from pixelkiln.db import transitions
from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.records import current, image_record
from pixelkiln.db.tables import images, tasks
from pixelkiln.db.transitions import DroppedImage
from pixelkiln.models import ImageRecord, Task, TaskFailure, TaskResult, TaskStatus

__all__ = [
    "TaskFailure",
    "TaskResult",
    "complete_tasks",
    "fail_tasks",
    "get_task",
    "images_by_task",
    "list_images",
    "list_tasks",
    "record_outcomes",
]


def record_outcomes(
    tx: Tx,
    owner: str,
    results: Sequence[TaskResult],
    failures: Sequence[TaskFailure],
    dropped: list[DroppedImage] | None = None,
) -> set[int]:
    """Record a group of finished tries in one transaction; returns the ids accepted.

    ``dropped`` collects images of earlier runs deleted by a regenerate with ``replace``:
    their files are the caller's to remove after commit.
    """
    return transitions.record_outcomes(tx, owner, results, failures, dropped)


def complete_tasks(tx: Tx, owner: str, results: Sequence[TaskResult]) -> set[int]:
    """Record successes: status, image rows and events; returns the ids accepted."""
    return transitions.record_outcomes(tx, owner, results, ())


def fail_tasks(tx: Tx, owner: str, failures: Sequence[TaskFailure]) -> set[int]:
    """Record failed tries: back to pending with a retry time, or failed for good."""
    return transitions.record_outcomes(tx, owner, (), failures)


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
        item=row.item,
        run=row.run,
        axes=row.axes,
    )


def get_task(conn: Connection, task_id: int) -> Task:
    return _task(one_row(conn, select(tasks).where(tasks.c.id == task_id), f"no task {task_id}"))


def list_tasks(
    conn: Connection,
    batch_id: int,
    *,
    statuses: Iterable[TaskStatus] | None = None,
    task_ids: Iterable[int] | None = None,
    keys: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Task]:
    """Tasks of a batch in position order (only ``task_ids`` or ``keys`` of them, when given)."""
    query = select(tasks).where(tasks.c.batch_id == batch_id).order_by(tasks.c.position)
    if statuses is not None:
        query = query.where(tasks.c.status.in_([str(s) for s in statuses]))
    if task_ids is not None:
        query = query.where(tasks.c.id.in_(list(task_ids)))
    if keys is not None:
        query = query.where(tasks.c.key.in_(list(keys)))
    if limit is not None:
        query = query.limit(limit).offset(offset)
    return [_task(row) for row in conn.execute(query)]


def list_images(conn: Connection, batch_id: int, history: bool = False) -> list[ImageRecord]:
    """Images of a batch, by task position, run, then index; earlier runs' only with
    ``history`` (a regenerated task's superseded images)."""
    query = (
        select(images)
        .join(tasks, tasks.c.id == images.c.task_id)
        .where(images.c.batch_id == batch_id)
        .order_by(tasks.c.position, images.c.run, images.c.index)
    )
    return [image_record(row) for row in conn.execute(current(query, history))]


def images_by_task(
    conn: Connection, batch_id: int, history: bool = False
) -> dict[int, list[ImageRecord]]:
    grouped: dict[int, list[ImageRecord]] = defaultdict(list)
    for image in list_images(conn, batch_id, history):
        grouped[image.task_id].append(image)
    return grouped


def unfinished_backends(conn: Connection, batch_ids: Sequence[int]) -> set[str]:
    """The backends that the pending and running tasks of these batches wait on."""
    query = (
        select(tasks.c.backend)
        .where(
            tasks.c.batch_id.in_(list(batch_ids)),
            tasks.c.status.in_([TaskStatus.PENDING, TaskStatus.RUNNING]),
        )
        .distinct()
    )
    return set(conn.execute(query).scalars())
