"""Batches: create, find, list; cancel, retry and pause (the moves are in :mod:`.transitions`)."""

from __future__ import annotations

import functools
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Row,
    Text,
    bindparam,
    func,
    insert,
    or_,
    select,
)

from pixelkiln.db import driver, returning, transitions
from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.pacing import LIMIT_COLUMNS, BatchLimits
from pixelkiln.db.tables import assets, batches, tasks
from pixelkiln.models import Batch, BatchCounts, BatchStatus, TaskStatus, parse_id
from pixelkiln.resolve import ResolvedTask

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
    max_workers: int | None = None  #: at most this many of its tasks generate at once
    delay: float | None = None  #: seconds between starting two of its tasks
    webhook: str | None = None  #: URL POSTed the summary when the batch ends
    extra: dict[str, Any] | None = None  #: what a face keeps about the batch
    run_id: int | None = None  #: the run it belongs to (a project run's batch)


def create_batch(tx: Tx, new: NewBatch) -> int:
    """Store a batch and all its tasks; returns the batch id."""
    batch_id: int = returning.execute(
        tx.conn,
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
            "max_workers": new.max_workers,
            "delay": new.delay,
            "webhook": new.webhook,
            "extra": new.extra,
            "run_id": new.run_id,
        },
    ).scalar_one()
    _insert_tasks(tx, batch_id, new)
    _record_assets(tx, new.owner_id, new.assets)
    transitions.created(tx, batch_id, new.name, len(new.tasks))
    return batch_id


#: the columns of a new task row, in the order :func:`_insert_tasks` makes them
_ROW = (
    "batch_id",
    "position",
    "key",
    "status",
    "backend",
    "prompt",
    "negative_prompt",
    "params",
    "inputs",
    "item",
    "axes",
    "max_attempts",
    "created_at",
    "next_attempt_at",
)
#: the JSON columns among them, bound as text encoded here (see :func:`_tasks_insert`)
_JSON_COLUMNS = frozenset(("params", "inputs", "item", "axes"))
#: ``json.dumps`` as the JSON type calls it (the same text), without its check for cycles
#: (a task's values are made of plain values, never of themselves)
_to_json = json.JSONEncoder(check_circular=False).encode
#: rows per ``executemany``: a chunk of a sweep's rows is made, sent and dropped
CHUNK = 5000


def _insert_tasks(tx: Tx, batch_id: int, new: NewBatch) -> None:
    """Insert a batch's task rows as they are made: a sweep's 100,000 rows never sit in
    memory together, and the JSON of a value shared by many tasks is encoded once. On
    PostgreSQL one ``COPY`` stream (db.driver.copy_rows); elsewhere an ``executemany`` a
    chunk at a time."""
    inputs = new.inputs or [{}] * len(new.tasks)
    encode = _Encoder()
    pending = TaskStatus.PENDING.value
    rows = (
        (
            batch_id,
            t.position,
            t.key,
            pending,
            t.backend,
            t.prompt,
            t.negative_prompt,
            _to_json(t.params_json()),
            encode(i),
            encode(t.item),
            encode(t.axes),
            new.max_attempts,
            tx.now,
            0.0,
        )
        for t, i in zip(new.tasks, inputs, strict=True)
    )
    if tx.dialect == "postgresql":
        driver.copy_rows(tx, "tasks", _ROW, rows)
        return
    sql, shape = _tasks_insert(tx.conn.dialect)
    while chunk := [shape(row) for row in itertools.islice(rows, CHUNK)]:
        tx.conn.exec_driver_sql(sql, chunk)


#: per dialect and driver: the compiled INSERT and what shapes a row for it
_INSERTS: dict[str, tuple[str, Callable[[tuple[Any, ...]], Any]]] = {}


def _tasks_insert(dialect: Dialect) -> tuple[str, Callable[[tuple[Any, ...]], Any]]:
    """The INSERT of new task rows on SQLite and MySQL, and what makes a row (a tuple in
    :data:`_ROW` order) the driver's parameters: the statement is compiled once per dialect
    and run by the driver (PostgreSQL: ``COPY``, db.driver.copy_rows).

    SQLAlchemy's per-row work (a row's bind parameters built and its JSON values encoded
    one by one) was two thirds of storing a 100,000-task sweep. The rows bring the text
    the JSON type would have written, ``json.dumps`` of the value (``None`` too is the
    JSON ``null``, as the type writes it), so what is stored, and read back through the
    JSON type, is the same on every database: SQLite and MySQL store the text as it is,
    PostgreSQL's ``COPY`` parses it into the ``json`` column. The other columns need no
    conversion.
    """
    known = f"{dialect.name}+{dialect.driver}"
    found = _INSERTS.get(known)
    if found is not None:
        return found

    def bound(name: str) -> ColumnElement[Any]:
        if name not in _JSON_COLUMNS:
            return bindparam(name, type_=tasks.c[name].type)
        return bindparam(name, type_=Text)  # JSON as text (MySQL checks it)

    compiled = insert(tasks).values({name: bound(name) for name in _ROW}).compile(dialect=dialect)
    shape: Callable[[tuple[Any, ...]], Any]
    if compiled.positional:  # SQLite: "?" in the compiled order
        shape = operator.itemgetter(*(_ROW.index(name) for name in compiled.positiontup or ()))
    else:  # psycopg: "%(name)s"
        shape = functools.partial(_named, _ROW)
    found = _INSERTS[known] = (str(compiled), shape)
    return found


def _named(names: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(names, row, strict=True))


class _Encoder:
    """``json.dumps`` of values that many rows share (a sweep step's ``axes``, an empty
    ``inputs``), each encoded once: remembered by identity, and kept alive so that an
    identity is never reused for another object while it is remembered."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[object, str]] = {}

    def __call__(self, value: object) -> str:
        if value is None or value == {}:  # most tasks: no inputs, no item, no axes
            return "null" if value is None else "{}"
        found = self.known.get(id(value))
        if found is None:
            if len(self.known) > 10_000:  # values that are not shared: stop remembering
                self.known.clear()
            found = self.known[id(value)] = (value, _to_json(value))
        return found[1]


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


#: not being deleted: a batch retention began deleting is gone to every reader and claim
LIVE = batches.c.deleting_at.is_(None)


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
        max_workers=row.max_workers,
        delay=row.delay,
        webhook=row.webhook,
        extra=dict(row.extra or {}),
        run_id=row.run_id,
    )


def get_batch(conn: Connection, batch_id: int, owner_id: int | None = None) -> Batch:
    """One batch; NotFoundError when missing, being deleted (retention) or (with
    ``owner_id``) someone else's."""
    query = select(batches).where(batches.c.id == batch_id, LIVE)
    if owner_id is not None:
        query = query.where(batches.c.owner_id == owner_id)
    return _batch(one_row(conn, query, f"no batch {batch_id}"))


def find_batch(conn: Connection, ref: str) -> Batch:
    """A batch by id, or the newest batch with that name."""
    number = parse_id(ref)
    if number is not None:
        return get_batch(conn, number)
    query = select(batches).where(batches.c.name == ref, LIVE)
    query = query.order_by(batches.c.id.desc()).limit(1)
    return _batch(one_row(conn, query, f"no batch with id or name '{ref}'"))


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
    query = select(batches).where(LIVE).order_by(batches.c.id.desc()).limit(limit).offset(offset)
    if statuses is not None:
        query = query.where(batches.c.status.in_([str(s) for s in statuses]))
    if owner_id is not None:
        query = query.where(batches.c.owner_id == owner_id)
    if search:
        query = query.where(batches.c.name.contains(search, autoescape=True))
    return [_batch(row) for row in conn.execute(query)]


#: the order batches are claimed in: priority, then the place a user gave them in the
#: queue (``queue_rank``, migration 0007), then age; the Queue page lists them so
CLAIM_ORDER = (
    batches.c.priority.desc(),
    func.coalesce(batches.c.queue_rank, batches.c.id),
    batches.c.id,
)


def runnable_statement(
    filtered: bool, columns: Sequence[Any] = LIMIT_COLUMNS, source: Any = batches
) -> Any:
    """Batches with tasks to start, by priority then age, with their own limits (db.pacing).

    ``columns`` and ``source``: what the claim reads besides (db.fair: owner, share)."""
    query = (
        select(*columns)
        .select_from(source)
        .where(
            batches.c.status.in_([str(s) for s in ACTIVE]),
            batches.c.n_pending > 0,
            LIVE,
            or_(batches.c.scheduled_at.is_(None), batches.c.scheduled_at <= bindparam("r_now")),
        )
        .order_by(*CLAIM_ORDER)
    )
    if filtered:
        query = query.where(batches.c.id.in_(bindparam("r_only", expanding=True)))
    return query


_RUNNABLE = runnable_statement(filtered=False)
_RUNNABLE_ONLY = runnable_statement(filtered=True)


def runnable_batches(
    conn: Connection, now: float, only: Iterable[int] | None = None
) -> list[BatchLimits]:
    """Batches with tasks to start, by priority then age, whatever their own limits say."""
    if only is None:
        rows = conn.execute(_RUNNABLE, {"r_now": now})
    else:
        rows = conn.execute(_RUNNABLE_ONLY, {"r_now": now, "r_only": list(only)})
    return [BatchLimits(*row) for row in rows]


def runnable_batch_ids(
    conn: Connection, now: float, only: Iterable[int] | None = None
) -> list[int]:
    """Batches that may start tasks now (their own limits too), by priority then age."""
    return [b.id for b in runnable_batches(conn, now, only) if b.allowance(now) != 0]


def unfinished_batch_ids(conn: Connection, statuses: Iterable[BatchStatus] = ACTIVE) -> list[int]:
    query = select(batches.c.id).where(batches.c.status.in_([str(s) for s in statuses]))
    return list(conn.execute(query.order_by(batches.c.id)).scalars())


def cancel_batch(tx: Tx, batch_id: int, owner_id: int | None = None) -> Batch:
    """Cancel pending tasks now; running ones stop when their runner next renews its lease."""
    transitions.cancel(tx, get_batch(tx.conn, batch_id, owner_id))
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
    return transitions.retry(tx, batch, include_cancelled=include_cancelled, task_ids=task_ids)


def set_paused(tx: Tx, batch_id: int, paused: bool, owner_id: int | None = None) -> Batch:
    """Pause (no new task starts) or resume a batch."""
    batch = get_batch(tx.conn, batch_id, owner_id)
    if not transitions.pause(tx, batch, paused):
        return batch
    return get_batch(tx.conn, batch_id)
