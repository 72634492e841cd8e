"""Servers found down, shared by every process on the database.

When a process's server pool opens a server's circuit it records it here (down since,
when it will be probed again, why); every process reads the table every second or
two and opens its own circuit for a server another found down, so one discovery saves
the others their timeouts. Whoever's probe then finds the server back deletes the
row, and the others close their circuits when they see it gone (engine.shared_limits).

Times are wall-clock seconds (``time.time()``), comparable across machines as far as
their clocks agree, as task leases are.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from pixelkiln.db.database import Tx
from pixelkiln.db.notify import STATE, notify
from pixelkiln.db.slots import insert_missing
from pixelkiln.db.tables import server_health

__all__ = ["ServerDown", "record_down", "record_up", "servers_down"]


@dataclass(frozen=True)
class ServerDown:
    """One server some process found down."""

    server: str  #: the server's URL (engine.shared_limits.server_key)
    down_since: float  #: when it was first found down (kept while it stays down)
    retry_at: float  #: when the process that recorded it probes it next
    last_error: str  #: the newest failure's message
    updated_by: str  #: the owner id of the process that recorded it last


def record_down(tx: Tx, server: str, retry_at: float, error: str, by: str) -> None:
    """``server`` is down and is probed next at ``retry_at``; a server already recorded keeps
    its ``down_since``."""
    insert_missing(
        tx, server_health, [{"server": server, "down_since": tx.now, "updated_at": tx.now}]
    )
    tx.conn.execute(
        update(server_health)
        .where(server_health.c.server == server)
        .values(
            retry_at=retry_at,
            last_error=error[:2000],
            updated_at=tx.now,
            updated_by=by,
        )
    )
    notify(tx, STATE)  # the other processes look at it now, not at their next re-read


def record_up(tx: Tx, server: str) -> None:
    """``server`` answered a probe: nobody needs to skip it any more."""
    tx.conn.execute(delete(server_health).where(server_health.c.server == server))
    notify(tx, STATE)


def servers_down(conn: Connection, servers: Collection[str]) -> list[ServerDown]:
    """The recorded rows of ``servers`` (any age: the reader judges a stale ``retry_at``)."""
    if not servers:
        return []
    rows = conn.execute(
        select(server_health).where(server_health.c.server.in_(sorted(servers)))
    ).all()
    return [
        ServerDown(
            row.server,
            float(row.down_since or row.updated_at),
            float(row.retry_at or 0.0),
            row.last_error or "",
            row.updated_by or "",
        )
        for row in rows
    ]
