"""The append-only event log, and one typed builder per event type.

Every producer (the state transitions of :mod:`.transitions`, the scheduler's
notes about backends) builds its events here, so each event type has one set
of field names; ``docs/api.md`` lists them in a table that a test checks
against :data:`PAYLOADS`. Events are written inside the transaction of the
change they report.

>>> progress(12, 310, current=3, total=10, message="generated 1 image(s)", item_key="s3")
(12, 310, <EventType.PROGRESS: 'progress'>, {'current': 3, 'total': 10, ...})
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

from sqlalchemy import Connection, Row, insert, select

from pixelkiln.db import driver, returning
from pixelkiln.db.database import Tx
from pixelkiln.db.notify import EVENTS, NOTIFY_EXPR, to_send
from pixelkiln.db.tables import batches, events
from pixelkiln.models import BatchStatus, Event, EventType

#: (batch_id, task_id, type, data) of one event to append
PendingEvent = tuple[int, int | None, EventType, dict[str, Any]]


# -- payloads: the fields of each event type ----------------------------------------------------


# Optional fields are those of a ``total=False`` subclass: ``NotRequired`` inside
# postponed annotations is not seen by Python 3.11's TypedDict.


class _BatchUpdate(TypedDict):
    status: str  #: the batch's new status


class BatchUpdateData(_BatchUpdate, total=False):
    name: str  #: when the batch was created
    total: int  #: tasks, when the batch was created
    retried: int  #: tasks put back in the queue by a retry


class _Info(TypedDict):
    message: str


class InfoData(_Info, total=False):
    backend: str  #: the backend the message is about (for a move: the one that takes it over)
    item_key: str  #: the task concerned, if one (its id is the event's ``task_id``)
    fallback_from: str  #: a task moved to a fallback backend: the backend it left


class ProgressData(TypedDict):
    current: int  #: tasks of the batch finished (succeeded, failed or cancelled) so far
    total: int
    message: str
    item_key: str  #: the finished task's key


class ImageData(TypedDict):
    id: int
    index: int  #: 0-based within its task
    path: str  #: relative to the data folder (the API sends url and thumbnail_url instead)
    width: int
    height: int
    backend: str  #: the backend that made it (after any fallback)
    server: str  #: the server's URL without credentials ("" for a local generator)
    model: str  #: the model actually used


class ImageGeneratedData(TypedDict):
    item_key: str
    task_id: int
    image: ImageData


class _Warning(TypedDict):
    message: str


class WarningData(_Warning, total=False):
    item_key: str  #: the task concerned, if one
    error: str  #: the failed try's error
    error_type: str
    attempt: int  #: the try that failed
    retry_in: float  #: seconds until the next try
    backend: str  #: a backend that is down


class _Error(TypedDict):
    error: str  #: why the task failed for good


class ErrorData(_Error, total=False):
    item_key: str
    error_type: str


class Summary(TypedDict):
    status: str  #: completed, partial, failed or cancelled
    total: int
    succeeded: int
    failed: int
    cancelled: int
    images: int
    started_at: float | None
    finished_at: float | None


class DoneData(TypedDict):
    summary: Summary


#: the payload of each event type (docs/api.md's event table is checked against it)
PAYLOADS: dict[EventType, type] = {
    EventType.BATCH_UPDATE: BatchUpdateData,
    EventType.INFO: InfoData,
    EventType.PROGRESS: ProgressData,
    EventType.IMAGE_GENERATED: ImageGeneratedData,
    EventType.WARNING: WarningData,
    EventType.ERROR: ErrorData,
    EventType.DONE: DoneData,
}


# -- builders: one per event type -----------------------------------------------------------------


def batch_update(
    batch_id: int,
    status: BatchStatus,
    *,
    name: str | None = None,
    total: int | None = None,
    retried: int | None = None,
) -> PendingEvent:
    """The batch changed status (created, started, paused, resumed, retried, finished)."""
    data: BatchUpdateData = {"status": str(status)}
    if name is not None:
        data["name"] = name
    if total is not None:
        data["total"] = total
    if retried is not None:
        data["retried"] = retried
    return (batch_id, None, EventType.BATCH_UPDATE, dict(data))


def info(
    batch_id: int,
    message: str,
    *,
    backend: str | None = None,
    task_id: int | None = None,
    item_key: str | None = None,
    fallback_from: str | None = None,
) -> PendingEvent:
    """Something worth knowing that needs no action (a backend came back, a task fell back)."""
    data: InfoData = {"message": message}
    if backend is not None:
        data["backend"] = backend
    if item_key is not None:
        data["item_key"] = item_key
    if fallback_from is not None:
        data["fallback_from"] = fallback_from
    return (batch_id, task_id, EventType.INFO, dict(data))


def fell_back(
    batch_id: int, task_id: int, *, item_key: str, source: str, target: str, why: str
) -> PendingEvent:
    """The ``info`` event of a task moved from backend ``source`` to its fallback ``target``."""
    return info(
        batch_id,
        f"backend '{source}' {why}; task moved to '{target}'",
        backend=target,
        task_id=task_id,
        item_key=item_key,
        fallback_from=source,
    )


def progress(
    batch_id: int, task_id: int, *, current: int, total: int, message: str, item_key: str
) -> PendingEvent:
    """A task finished (succeeded or failed for good)."""
    data: ProgressData = {
        "current": current,
        "total": total,
        "message": message,
        "item_key": item_key,
    }
    return (batch_id, task_id, EventType.PROGRESS, dict(data))


def image_generated(
    batch_id: int, task_id: int, *, item_key: str, image: ImageData
) -> PendingEvent:
    """An image of a task was stored."""
    data: ImageGeneratedData = {"item_key": item_key, "task_id": task_id, "image": image}
    return (batch_id, task_id, EventType.IMAGE_GENERATED, dict(data))


def warning(
    batch_id: int,
    message: str,
    *,
    task_id: int | None = None,
    item_key: str | None = None,
    error: str | None = None,
    error_type: str | None = None,
    attempt: int | None = None,
    retry_in: float | None = None,
    backend: str | None = None,
) -> PendingEvent:
    """A try failed and will be retried, a runner stopped, or a backend is down."""
    data: WarningData = {"message": message}
    if item_key is not None:
        data["item_key"] = item_key
    if error is not None:
        data["error"] = error
    if error_type is not None:
        data["error_type"] = error_type
    if attempt is not None:
        data["attempt"] = attempt
    if retry_in is not None:
        data["retry_in"] = retry_in
    if backend is not None:
        data["backend"] = backend
    return (batch_id, task_id, EventType.WARNING, dict(data))


def error(
    batch_id: int,
    task_id: int | None,
    *,
    error: str,
    item_key: str | None = None,
    error_type: str | None = None,
) -> PendingEvent:
    """A task failed for good."""
    data: ErrorData = {"error": error}
    if item_key is not None:
        data["item_key"] = item_key
    if error_type is not None:
        data["error_type"] = error_type
    return (batch_id, task_id, EventType.ERROR, dict(data))


def done(batch_id: int, *, summary: Summary) -> PendingEvent:
    """The batch finished (completed, partial, failed or cancelled); the last event of a run."""
    data: DoneData = {"summary": summary}
    return (batch_id, None, EventType.DONE, dict(data))


#: the builder of each event type
BUILDERS = {
    EventType.BATCH_UPDATE: batch_update,
    EventType.INFO: info,
    EventType.PROGRESS: progress,
    EventType.IMAGE_GENERATED: image_generated,
    EventType.WARNING: warning,
    EventType.ERROR: error,
    EventType.DONE: done,
}


# -- the log --------------------------------------------------------------------------------------

_INSERT = insert(events).returning(events.c.id, sort_by_parameter_order=True)


def append_events(tx: Tx, pending: list[PendingEvent]) -> list[Event]:
    """Insert events in order; they are published to live subscribers after commit."""
    if not pending:
        return []
    if tx.dialect == "sqlite":
        ids = _insert_sqlite(tx, pending)
    elif tx.dialect == "postgresql":
        # other processes' followers read them now, told by the insert itself
        ids = _insert_pg(tx, pending, to_send(tx, EVENTS))
    else:
        rows = [
            {"batch_id": b, "task_id": t, "type": str(kind), "data": data, "created_at": tx.now}
            for b, t, kind, data in pending
        ]
        ids = list(returning.execute(tx.conn, _INSERT, rows).scalars())
    appended = [
        Event(id, b, t, kind, data, tx.now)
        for id, (b, t, kind, data) in zip(ids, pending, strict=True)
    ]
    tx.events.extend(appended)
    return appended


_SQLITE_ROWS = 500  # 5 parameters a row, well under SQLite's 32,766 per statement


def _insert_sqlite(tx: Tx, pending: list[PendingEvent]) -> list[int]:
    """Multi-row INSERT … RETURNING through the driver: events are the most frequent write,
    and SQLAlchemy's per-row parameter processing cost more than the insert itself."""
    cursor = tx.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    ids: list[int] = []
    for start in range(0, len(pending), _SQLITE_ROWS):
        chunk = pending[start : start + _SQLITE_ROWS]
        values = ",".join(["(?,?,?,?,?)"] * len(chunk))
        params = [
            p
            for b, t, kind, data in chunk
            for p in (b, t, str(kind), json.dumps(data, separators=(",", ":")), tx.now)
        ]
        cursor.execute(
            "INSERT INTO events (batch_id, task_id, type, data, created_at) "
            f"VALUES {values} RETURNING id",
            params,
        )
        # SQLite does not promise RETURNING order, but the rows of one INSERT get
        # ascending rowids in the order of the VALUES list: sorting restores it
        ids.extend(sorted(row[0] for row in cursor.fetchall()))
    cursor.close()
    return ids


#: one text whatever the number of rows (arrays in binary, db.driver); ``ORDER BY n``: the ids are
#: drawn from the sequence in the order of the rows, so sorted they are the rows' ids in order
_INSERT_PG_ROWS = (
    "INSERT INTO events (batch_id, task_id, type, data, created_at) "
    "SELECT b, t, k, d, %s FROM unnest(%b::integer[], %b::integer[], %b::text[], %b::json[]) "
    "WITH ORDINALITY AS v(b, t, k, d, n)"
)
_INSERT_PG = f"{_INSERT_PG_ROWS} ORDER BY n RETURNING id"
#: the same, sending the EVENTS notification too (db.notify): once, whatever the rows
_INSERT_PG_NOTIFY = (
    f"WITH note AS (SELECT {NOTIFY_EXPR} AS sent) "
    f"{_INSERT_PG_ROWS} CROSS JOIN note ORDER BY n RETURNING id"
)


def _insert_pg(tx: Tx, pending: list[PendingEvent], announce: bool) -> list[int]:
    """The events as one INSERT of arrays through the driver: the SQLAlchemy insert of many
    rows (parameter processing per row and column) cost several times the statement.
    ``announce``: the statement also sends the EVENTS notification (db.notify)."""
    if announce:
        found = driver.rows(tx, _INSERT_PG_NOTIFY, (EVENTS, *_params(tx, pending)))
    else:
        found = driver.rows(tx, _INSERT_PG, _params(tx, pending))
    return sorted(row[0] for row in found)


def _params(tx: Tx, pending: list[PendingEvent]) -> tuple[object, ...]:
    return (
        tx.now,
        [b for b, _t, _k, _d in pending],
        [t for _b, t, _k, _d in pending],
        [str(k) for _b, _t, k, _d in pending],
        [json.dumps(d, separators=(",", ":")) for _b, _t, _k, d in pending],
    )


def append_event(tx: Tx, event: PendingEvent) -> Event:
    """Append one event made by a builder of this module."""
    return append_events(tx, [event])[0]


def events_after(
    conn: Connection,
    after_id: int = 0,
    *,
    batch_id: int | None = None,
    owner_id: int | None = None,
    limit: int = 1000,
) -> list[Event]:
    """Events with id > ``after_id``, oldest first, of one batch or of one owner's batches."""
    query = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
    if batch_id is not None:
        query = query.where(events.c.batch_id == batch_id)
    if owner_id is not None:
        owned = select(batches.c.id).where(batches.c.owner_id == owner_id)
        query = query.where(events.c.batch_id.in_(owned))
    return [_event(row) for row in conn.execute(query)]


def _event(row: Row[Any]) -> Event:
    return Event(
        row.id, row.batch_id, row.task_id, EventType(row.type), dict(row.data), row.created_at
    )
