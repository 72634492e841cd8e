"""Measured speeds: seconds per image of each backend at a size and step count.

A plan estimates a batch's time from these (:mod:`pixelkiln.service.plans`). They are
filled when a batch ends, not as each task succeeds: :func:`record_batch` runs inside the
move that ends the batch (``transition_counts.set_final``), aggregates that batch's
succeeded tasks by (backend, width, height, steps) in one grouped query and folds each
group into the table's running mean with one upsert. The hot path (a task's outcome)
writes nothing more, and a batch of 100,000 tasks costs one query and a few upserts.

The mean is weighted: an existing row counts for at most :data:`MEMORY` samples, so a
backend that got faster (new hardware, a lighter model) is followed within a few batches
instead of being averaged away by its history. A batch that ends a second time (after a
retry or a regenerate) counts its earlier successes again; they measured the same
backend, so the mean barely moves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import Connection, Insert, case, func, select
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pixelkiln.db.database import Tx
from pixelkiln.db.tables import speeds, tasks
from pixelkiln.models import TaskStatus

#: the most samples an existing mean weighs against a new batch's
MEMORY = 200


class Speed(NamedTuple):
    """One measured row: a backend's mean seconds per image at a size and step count."""

    backend: str
    width: int
    height: int
    steps: int
    samples: int  #: succeeded tasks measured (capped weighting: see MEMORY)
    seconds_per_image: float


_WIDTH = tasks.c.params["width"].as_integer()
_HEIGHT = tasks.c.params["height"].as_integer()
_STEPS = tasks.c.params["steps"].as_integer()
_N = func.coalesce(tasks.c.params["n"].as_integer(), 1)


def batch_speeds(conn: Connection, batch_id: int) -> list[Speed]:
    """A batch's succeeded tasks grouped by (backend, width, height, steps): how many, and
    their mean seconds per image (a task's duration over its images)."""
    per_image = tasks.c.duration / _N
    query = (
        select(tasks.c.backend, _WIDTH, _HEIGHT, _STEPS, func.count(), func.avg(per_image))
        .where(
            tasks.c.batch_id == batch_id,
            tasks.c.status == TaskStatus.SUCCEEDED,
            tasks.c.duration.is_not(None),
        )
        .group_by(tasks.c.backend, _WIDTH, _HEIGHT, _STEPS)
    )
    return [
        Speed(row[0], int(row[1]), int(row[2]), int(row[3]), int(row[4]), float(row[5]))
        for row in conn.execute(query)
        if None not in (row[1], row[2], row[3], row[5])
    ]


def record_batch(tx: Tx, batch_id: int) -> int:
    """Fold a just-ended batch's measured speeds into ``speeds``; how many rows it touched.

    One upsert per group (``INSERT … ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL), so
    two processes ending batches at once never collide on the primary key; in key order
    (backend, width, height, steps), so two such transactions take the rows' locks in one
    order and never deadlock on PostgreSQL (a grouped read comes back in any order).
    """
    found = sorted(batch_speeds(tx.conn, batch_id), key=_key)
    for speed in found:
        tx.conn.execute(_upsert(tx.dialect, speed, tx.now))
    return len(found)


def _key(speed: Speed) -> tuple[str, int, int, int]:
    """A speeds row's primary key: the order its upserts take their locks in."""
    return speed.backend, speed.width, speed.height, speed.steps


def _upsert(dialect: str, speed: Speed, now: float) -> Insert:
    if dialect == "mysql":
        return _upsert_mysql(speed, now)
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = dialect_insert(speeds).values(**_row(speed, now))
    return statement.on_conflict_do_update(
        index_elements=["backend", "width", "height", "steps"],
        set_=dict(_merged(statement.excluded)),
    )


def _upsert_mysql(speed: Speed, now: float) -> Insert:
    """MySQL's ``ON DUPLICATE KEY UPDATE`` assigns left to right, each assignment seeing
    the ones before it: the mean is computed before ``samples`` grows."""
    statement = mysql.insert(speeds).values(**_row(speed, now))
    return statement.on_duplicate_key_update(_merged(statement.inserted))


def _row(speed: Speed, now: float) -> dict[str, Any]:
    return {
        "backend": speed.backend,
        "width": speed.width,
        "height": speed.height,
        "steps": speed.steps,
        "samples": speed.samples,
        "seconds_per_image": speed.seconds_per_image,
        "updated_at": now,
    }


def _merged(new: Any) -> list[tuple[str, Any]]:
    """A stored speed merged with the new measure ``new`` (the row the insert proposed),
    the mean first: it reads the stored ``samples``."""
    kept = case((speeds.c.samples > MEMORY, MEMORY), else_=speeds.c.samples)
    mean = (speeds.c.seconds_per_image * kept + new.seconds_per_image * new.samples) / (
        kept + new.samples
    )
    return [
        ("seconds_per_image", mean),
        ("samples", speeds.c.samples + new.samples),
        ("updated_at", new.updated_at),
    ]


def measured(conn: Connection, backends: Iterable[str]) -> dict[str, list[Speed]]:
    """Every measured speed of ``backends``, by backend (a backend never measured: absent)."""
    names = sorted(set(backends))
    found: dict[str, list[Speed]] = {}
    if not names:
        return found
    query = select(
        speeds.c.backend,
        speeds.c.width,
        speeds.c.height,
        speeds.c.steps,
        speeds.c.samples,
        speeds.c.seconds_per_image,
    ).where(speeds.c.backend.in_(names))
    for row in conn.execute(query):
        found.setdefault(row.backend, []).append(Speed(*row))
    return found
