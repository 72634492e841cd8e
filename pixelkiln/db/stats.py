"""Aggregates for the admin dashboard and ``/metrics``.

Counts by state come from the batch counters the engine maintains (cheap at
any size); durations and failures are aggregated from ``tasks`` in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Integer, case, cast, func, select

from pixelkiln.db.batches import UNFINISHED
from pixelkiln.db.tables import batches, images, tasks
from pixelkiln.models import TaskStatus

#: upper bounds (seconds) of the task duration histogram's buckets
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DAY = 86_400


@dataclass(frozen=True)
class BackendFigures:
    """What one backend did, over every finished task."""

    succeeded: int
    failed: int
    retries: int  #: tries beyond the first, over finished tasks
    mean_seconds: float | None  #: mean generation time of successful tasks
    duration_sum: float
    buckets: tuple[int, ...]  #: cumulative counts per DURATION_BUCKETS bound


def task_counts(conn: Connection) -> dict[str, int]:
    """Tasks per state, in every batch."""
    columns = [func.coalesce(func.sum(batches.c[f"n_{s}"]), 0) for s in TaskStatus]
    row = conn.execute(select(*columns)).one()
    return {str(s): int(v) for s, v in zip(TaskStatus, row, strict=True)}


def queue_depth(conn: Connection) -> int:
    """Tasks waiting to run in unfinished batches (paused ones included)."""
    query = select(func.coalesce(func.sum(batches.c.n_pending), 0)).where(
        batches.c.status.in_([str(s) for s in UNFINISHED])
    )
    return int(conn.execute(query).scalar_one())


def backend_figures(conn: Connection) -> dict[str, BackendFigures]:
    """Per backend: successes, failures, retries, mean time and a duration histogram."""
    ok = tasks.c.status == str(TaskStatus.SUCCEEDED)
    finished = tasks.c.status.in_([str(TaskStatus.SUCCEEDED), str(TaskStatus.FAILED)])
    buckets = [
        func.sum(case((ok & (tasks.c.duration <= bound), 1), else_=0)) for bound in DURATION_BUCKETS
    ]
    query = select(
        tasks.c.backend,
        func.sum(case((ok, 1), else_=0)),
        func.sum(case((tasks.c.status == str(TaskStatus.FAILED), 1), else_=0)),
        func.sum(case((finished & (tasks.c.attempts > 1), tasks.c.attempts - 1), else_=0)),
        func.avg(case((ok, tasks.c.duration))),
        func.sum(case((ok, tasks.c.duration), else_=0.0)),
        *buckets,
    ).group_by(tasks.c.backend)
    out = {}
    for row in conn.execute(query):
        out[row[0]] = BackendFigures(
            int(row[1] or 0),
            int(row[2] or 0),
            int(row[3] or 0),
            float(row[4]) if row[4] is not None else None,
            float(row[5] or 0.0),
            tuple(int(v or 0) for v in row[6:]),
        )
    return out


def images_per_day(conn: Connection, since: float, owner_id: int | None = None) -> dict[int, int]:
    """Images created per UTC day (day number since the epoch) from ``since`` on."""
    if conn.dialect.name == "sqlite":
        day: Any = cast(images.c.created_at / DAY, Integer)  # truncates: times are positive
    else:
        day = func.floor(images.c.created_at / DAY)
    query = select(day.label("day"), func.count()).where(images.c.created_at >= since)
    if owner_id is not None:
        query = query.join(batches, batches.c.id == images.c.batch_id).where(
            batches.c.owner_id == owner_id
        )
    return {int(d): int(n) for d, n in conn.execute(query.group_by(day).order_by(day))}
