"""Batch queries: create, find, list, cancel, retry, pause, and the counters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, or_, select, update

from pixelkiln.db.credits import refund_open_tasks
from pixelkiln.db.database import Tx
from pixelkiln.db.events import append_event
from pixelkiln.db.tables import assets, batches, images, tasks
from pixelkiln.exceptions import InvalidStateError, NotFoundError
from pixelkiln.models import Batch, BatchCounts, BatchStatus, EventType, TaskStatus, parse_id
from pixelkiln.specs import ResolvedTask

ACTIVE = (BatchStatus.QUEUED, BatchStatus.RUNNING)
UNFINISHED = (BatchStatus.QUEUED, BatchStatus.RUNNING, BatchStatus.PAUSED)


@dataclass(frozen=True)
class NewBatch:
    """A batch about to be stored, its tasks already resolved."""

    name: str
    source: str  #: cli, api, web, project, schedule
    max_attempts: int
    tasks: Sequence[ResolvedTask]
    #: per task: {"init_image": asset path, "reference_images": [paths]}
    inputs: Sequence[dict[str, Any]] = ()
    #: input images stored for this batch: path, sha256, mime, width, height, bytes
    assets: Sequence[dict[str, Any]] = ()
    priority: int = 0
    defaults: dict[str, Any] = field(default_factory=dict)
    owner_id: int | None = None
    scheduled_at: float | None = None


def create_batch(tx: Tx, new: NewBatch) -> int:
    """Store a batch and all its tasks; returns the batch id."""
    batch_id: int = tx.conn.execute(
        insert(batches).returning(batches.c.id),
        {
            "owner_id": new.owner_id,
            "name": new.name,
            "status": BatchStatus.QUEUED,
            "priority": new.priority,
            "source": new.source,
            "defaults": new.defaults,
            "max_attempts": new.max_attempts,
            "n_tasks": len(new.tasks),
            "n_pending": len(new.tasks),
            "scheduled_at": new.scheduled_at,
            "created_at": tx.now,
        },
    ).scalar_one()
    inputs = list(new.inputs) or [{} for _ in new.tasks]
    rows = [
        {
            "batch_id": batch_id,
            "position": t.position,
            "key": t.key,
            "status": TaskStatus.PENDING,
            "backend": t.backend,
            "prompt": t.prompt,
            "negative_prompt": t.negative_prompt,
            "params": t.params_json(),
            "inputs": i,
            "max_attempts": new.max_attempts,
            "created_at": tx.now,
            "next_attempt_at": 0.0,
        }
        for t, i in zip(new.tasks, inputs, strict=True)
    ]
    for start in range(0, len(rows), 5000):
        tx.conn.execute(insert(tasks), rows[start : start + 5000])
    _record_assets(tx, new.owner_id, new.assets)
    append_event(
        tx,
        batch_id,
        EventType.BATCH_UPDATE,
        {"status": BatchStatus.QUEUED, "name": new.name, "total": len(new.tasks)},
    )
    return batch_id


def _record_assets(tx: Tx, owner_id: int | None, records: Sequence[dict[str, Any]]) -> None:
    """Remember input images once per owner and content."""
    for record in records:
        known = tx.conn.execute(
            select(assets.c.id).where(
                assets.c.sha256 == record["sha256"],
                assets.c.owner_id.is_not_distinct_from(owner_id),
            )
        ).first()
        if known is None:
            tx.conn.execute(insert(assets).values(owner_id=owner_id, created_at=tx.now, **record))


def _batch(row: Row[Any]) -> Batch:
    counts = BatchCounts(
        row.n_tasks,
        row.n_pending,
        row.n_running,
        row.n_succeeded,
        row.n_failed,
        row.n_cancelled,
        row.n_images,
    )
    return Batch(
        id=row.id,
        name=row.name,
        status=BatchStatus(row.status),
        priority=row.priority,
        source=row.source,
        owner_id=row.owner_id,
        max_attempts=row.max_attempts,
        counts=counts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        scheduled_at=row.scheduled_at,
        defaults=dict(row.defaults),
    )


def get_batch(conn: Connection, batch_id: int, owner_id: int | None = None) -> Batch:
    """One batch; NotFoundError when missing or (with ``owner_id``) someone else's."""
    query = select(batches).where(batches.c.id == batch_id)
    if owner_id is not None:
        query = query.where(batches.c.owner_id == owner_id)
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"no batch {batch_id}")
    return _batch(row)


def find_batch(conn: Connection, ref: str) -> Batch:
    """A batch by id, or the newest batch with that name."""
    number = parse_id(ref)
    if number is not None:
        return get_batch(conn, number)
    row = conn.execute(
        select(batches).where(batches.c.name == ref).order_by(batches.c.id.desc()).limit(1)
    ).first()
    if row is None:
        raise NotFoundError(f"no batch with id or name '{ref}'")
    return _batch(row)


def list_batches(
    conn: Connection,
    *,
    statuses: Iterable[BatchStatus] | None = None,
    owner_id: int | None = None,
    search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Batch]:
    """Newest first."""
    query = select(batches).order_by(batches.c.id.desc()).limit(limit).offset(offset)
    if statuses is not None:
        query = query.where(batches.c.status.in_([str(s) for s in statuses]))
    if owner_id is not None:
        query = query.where(batches.c.owner_id == owner_id)
    if search:
        query = query.where(batches.c.name.contains(search, autoescape=True))
    return [_batch(row) for row in conn.execute(query)]


def _runnable_statement(filtered: bool) -> Any:
    query = (
        select(batches.c.id)
        .where(
            batches.c.status.in_([str(s) for s in ACTIVE]),
            batches.c.n_pending > 0,
            or_(batches.c.scheduled_at.is_(None), batches.c.scheduled_at <= bindparam("r_now")),
        )
        .order_by(batches.c.priority.desc(), batches.c.id)
    )
    if filtered:
        query = query.where(batches.c.id.in_(bindparam("r_only", expanding=True)))
    return query


_RUNNABLE = _runnable_statement(filtered=False)
_RUNNABLE_ONLY = _runnable_statement(filtered=True)


def runnable_batch_ids(
    conn: Connection, now: float, only: Iterable[int] | None = None
) -> list[int]:
    """Batches that may start tasks now, by priority then age."""
    if only is None:
        return list(conn.execute(_RUNNABLE, {"r_now": now}).scalars())
    return list(conn.execute(_RUNNABLE_ONLY, {"r_now": now, "r_only": list(only)}).scalars())


def unfinished_batch_ids(conn: Connection, statuses: Iterable[BatchStatus] = ACTIVE) -> list[int]:
    query = select(batches.c.id).where(batches.c.status.in_([str(s) for s in statuses]))
    return list(conn.execute(query.order_by(batches.c.id)).scalars())


def refresh_counts(tx: Tx, batch_ids: Iterable[int]) -> None:
    """Recount a batch's tasks by state (after bulk changes; the hot path adjusts in place)."""
    for batch_id in set(batch_ids):
        by_status: dict[str, int] = dict(
            tx.conn.execute(
                select(tasks.c.status, func.count())
                .where(tasks.c.batch_id == batch_id)
                .group_by(tasks.c.status)
            ).all()
        )
        n_images = tx.conn.execute(
            select(func.count()).select_from(images).where(images.c.batch_id == batch_id)
        ).scalar_one()
        tx.conn.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values(
                n_tasks=sum(by_status.values()),
                **{f"n_{s}": by_status.get(str(s), 0) for s in TaskStatus},
                n_images=n_images,
            )
        )


def summary(batch: Batch) -> dict[str, Any]:
    """The facts a ``done`` event and a report start from."""
    c = batch.counts
    return {
        "status": str(batch.status),
        "total": c.total,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "cancelled": c.cancelled,
        "images": c.images,
        "started_at": batch.started_at,
        "finished_at": batch.finished_at,
    }


def finish_if_done(tx: Tx, batch_id: int) -> BatchStatus | None:
    """Give a batch its final status once no task is pending or running; emits ``done``."""
    batch = get_batch(tx.conn, batch_id)
    c = batch.counts
    if c.pending or c.running or batch.status.finished:
        return None
    if c.succeeded == c.total:
        status = BatchStatus.COMPLETED
    elif c.succeeded:
        status = BatchStatus.PARTIAL
    else:
        status = BatchStatus.FAILED
    _set_final(tx, batch, status)
    return status


def _set_final(tx: Tx, batch: Batch, status: BatchStatus) -> None:
    tx.conn.execute(
        update(batches).where(batches.c.id == batch.id).values(status=status, finished_at=tx.now)
    )
    final = get_batch(tx.conn, batch.id)
    append_event(tx, batch.id, EventType.BATCH_UPDATE, {"status": status})
    append_event(tx, batch.id, EventType.DONE, {"summary": summary(final)})


_MARK_STARTED = (
    update(batches)
    .where(batches.c.id == bindparam("m_batch"), batches.c.status == str(BatchStatus.QUEUED))
    .values(
        status=str(BatchStatus.RUNNING),
        started_at=func.coalesce(batches.c.started_at, bindparam("m_now")),
    )
)


def mark_started(tx: Tx, batch_ids: Iterable[int]) -> None:
    """queued → running for batches whose first task was just claimed."""
    for batch_id in set(batch_ids):
        changed = tx.conn.execute(_MARK_STARTED, {"m_batch": batch_id, "m_now": tx.now}).rowcount
        if changed:
            append_event(tx, batch_id, EventType.BATCH_UPDATE, {"status": BatchStatus.RUNNING})


def cancel_batch(tx: Tx, batch_id: int, owner_id: int | None = None) -> Batch:
    """Cancel pending tasks now; running ones stop when their runner next renews its lease."""
    batch = get_batch(tx.conn, batch_id, owner_id)
    if batch.status.finished:
        raise InvalidStateError(f"batch {batch_id} already finished ({batch.status})")
    refund_open_tasks(tx, batch_id)  # exactly the tasks cancelled below
    tx.conn.execute(
        update(tasks)
        .where(
            tasks.c.batch_id == batch_id,
            tasks.c.status.in_([TaskStatus.PENDING, TaskStatus.RUNNING]),
        )
        .values(status=TaskStatus.CANCELLED, finished_at=tx.now, lease_owner=None)
    )
    refresh_counts(tx, [batch_id])
    _set_final(tx, batch, BatchStatus.CANCELLED)
    return get_batch(tx.conn, batch_id)


def retry_batch(
    tx: Tx,
    batch_id: int,
    *,
    include_cancelled: bool = False,
    task_ids: Iterable[int] | None = None,
    owner_id: int | None = None,
) -> int:
    """Put failed (and optionally cancelled) tasks back in the queue; returns how many."""
    batch = get_batch(tx.conn, batch_id, owner_id)
    states = [TaskStatus.FAILED] + ([TaskStatus.CANCELLED] if include_cancelled else [])
    query = update(tasks).where(tasks.c.batch_id == batch_id, tasks.c.status.in_(states))
    if task_ids is not None:
        query = query.where(tasks.c.id.in_(list(task_ids)))
    count = tx.conn.execute(
        query.values(
            status=TaskStatus.PENDING,
            attempts=0,
            next_attempt_at=0.0,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=None,
        )
    ).rowcount
    if not count:
        raise InvalidStateError(f"batch {batch_id} has no {' or '.join(states)} task to retry")
    refresh_counts(tx, [batch_id])
    status = BatchStatus.PAUSED if batch.status == BatchStatus.PAUSED else BatchStatus.QUEUED
    tx.conn.execute(
        update(batches).where(batches.c.id == batch_id).values(status=status, finished_at=None)
    )
    append_event(tx, batch_id, EventType.BATCH_UPDATE, {"status": status, "retried": count})
    return count


def set_paused(tx: Tx, batch_id: int, paused: bool, owner_id: int | None = None) -> Batch:
    """Pause (no new task starts) or resume a batch."""
    batch = get_batch(tx.conn, batch_id, owner_id)
    if batch.status.finished:
        raise InvalidStateError(f"batch {batch_id} already finished ({batch.status})")
    if paused == (batch.status == BatchStatus.PAUSED):
        return batch
    status = (
        BatchStatus.PAUSED
        if paused
        else (BatchStatus.RUNNING if batch.started_at else BatchStatus.QUEUED)
    )
    tx.conn.execute(update(batches).where(batches.c.id == batch_id).values(status=status))
    append_event(tx, batch_id, EventType.BATCH_UPDATE, {"status": status})
    return get_batch(tx.conn, batch_id)
