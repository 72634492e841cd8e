"""The append-only event log: written inside the transaction of the change it reports."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Row, insert, select

from pixelkiln.db.database import Tx
from pixelkiln.db.tables import batches, events
from pixelkiln.models import Event, EventType

#: (batch_id, task_id, type, data) of one event to append
PendingEvent = tuple[int, int | None, EventType, dict[str, Any]]


_INSERT = insert(events).returning(events.c.id, sort_by_parameter_order=True)


def append_events(tx: Tx, pending: list[PendingEvent]) -> list[Event]:
    """Insert events in order; they are published to live subscribers after commit."""
    if not pending:
        return []
    if tx.dialect == "sqlite":
        ids = _insert_sqlite(tx, pending)
    else:
        rows = [
            {"batch_id": b, "task_id": t, "type": str(kind), "data": data, "created_at": tx.now}
            for b, t, kind, data in pending
        ]
        ids = list(tx.conn.execute(_INSERT, rows).scalars())
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


def append_event(
    tx: Tx, batch_id: int, kind: EventType, data: dict[str, Any], task_id: int | None = None
) -> Event:
    return append_events(tx, [(batch_id, task_id, kind, data)])[0]


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
