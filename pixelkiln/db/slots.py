"""Slots of generator servers and request-rate buckets, held in the database by every process.

A server configured for ``concurrency = 2`` has two rows in ``server_slots``
(``server`` = ``"<backend>|<url>"``, ``slot`` 0 and 1). A process *holds* a slot
(``holder`` = its scheduler's owner id) while one of its requests runs there, under
a lease (``expires_at``) that its lease keeper renews with its tasks' leases; a slot
whose lease lapsed (the process was killed) is free to take. The pseudo server
``"*"`` holds the global concurrency an admin stored, taken beside a server's.

A backend's ``rpm`` is a GCRA bucket in ``rate_buckets`` (``tat``: the theoretical
arrival time of the next request, wall clock): each start granted pushes it on by
``60 / rpm`` seconds, whichever process asks.

Every change goes through :func:`exchange`, one write that first gives back slots,
then takes the wanted ones and reserves their rpm starts, so a scheduler sends every
take and release of one event-loop turn together (engine.shared_limits).

Database variants: free slots are read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and
MySQL/MariaDB (a row another process is taking or giving back is skipped: it is busy
now, and the next look finds it); SQLite ignores the clause, and its writer's
``BEGIN IMMEDIATE`` serialises the read and the update instead. Missing rows are
added with an insert that ignores existing ones (``ON CONFLICT DO NOTHING``,
``INSERT IGNORE``), so two processes adding a server's rows at once never collide.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Insert, Table, and_, bindparam, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pixelkiln.db.database import Tx
from pixelkiln.db.tables import rate_buckets, server_slots

__all__ = [
    "GLOBAL",
    "Bucket",
    "Granted",
    "SlotWant",
    "exchange",
    "insert_missing",
    "release_holders",
    "renew_slots",
    "slots_held",
]

#: the pseudo server whose slots are the global concurrency an admin stored
GLOBAL = "*"


@dataclass(frozen=True)
class Bucket:
    """A backend's ``rpm`` as a GCRA bucket."""

    name: str  #: the backend's name
    interval: float  #: seconds between starts: ``60 / rpm``
    burst: int = 1  #: starts allowed back to back


@dataclass(frozen=True)
class SlotWant:
    """Slots of one server wanted in one exchange."""

    key: str  #: ``"<backend>|<url>"``, or :data:`GLOBAL`
    limit: int  #: the server's slots as this process counts them (rows ``0 … limit-1``)
    count: int  #: slots wanted
    bucket: Bucket | None = None  #: reserve an rpm start in this bucket per slot granted


@dataclass(frozen=True)
class Granted:
    """What one :class:`SlotWant` got."""

    slots: list[int] = field(default_factory=list)  #: slot numbers now held
    #: per slot, seconds from the write's clock until its request may start (rpm)
    delays: list[float] = field(default_factory=list)


def exchange(
    tx: Tx,
    holder: str,
    releases: Sequence[tuple[str, int]],
    wants: Sequence[SlotWant],
    until: float,
    ensure: Mapping[str, int] | None = None,
) -> dict[str, Granted]:
    """Give back ``releases`` (key, slot), then take what ``wants`` asks for; per key, what
    was granted (fewer slots than wanted, or none, when the others hold them).

    ``until``: the lease of the slots taken. ``ensure``: keys whose rows ``0 … n-1``
    may be missing (first use of a server, or more slots than before); rpm buckets of
    ``wants`` are added the same way when missing."""
    if releases:
        _release(tx, holder, releases)
    if ensure:
        insert_missing(
            tx,
            server_slots,
            [{"server": k, "slot": s} for k, n in sorted(ensure.items()) for s in range(n)],
        )
    if not wants:
        return {}
    buckets = sorted({w.bucket.name for w in wants if w.bucket is not None})
    if ensure and buckets:
        insert_missing(tx, rate_buckets, [{"name": name, "tat": 0.0} for name in buckets])
    free = _free_slots(tx, wants)
    granted: dict[str, Granted] = {}
    taken: list[dict[str, Any]] = []
    for want in wants:
        slots = free.get(want.key, [])[: want.count]
        del free.get(want.key, [])[: want.count]
        granted[want.key] = Granted(slots, [0.0] * len(slots))
        taken += [{"b_key": want.key, "b_slot": s} for s in slots]
    if taken:
        tx.conn.execute(
            update(server_slots)
            .where(
                server_slots.c.server == bindparam("b_key"),
                server_slots.c.slot == bindparam("b_slot"),
            )
            .values(holder=holder, expires_at=until),
            taken,
        )
    for want in wants:
        if want.bucket is not None and granted[want.key].slots:
            granted[want.key] = _reserve(tx, want.bucket, granted[want.key].slots)
    return granted


def _free_slots(tx: Tx, wants: Sequence[SlotWant]) -> dict[str, list[int]]:
    """Free (or lapsed) slots of the wanted servers, locked for this transaction, by key."""
    wanted = or_(
        *(and_(server_slots.c.server == w.key, server_slots.c.slot < w.limit) for w in wants)
    )
    query = (
        select(server_slots.c.server, server_slots.c.slot)
        .where(
            wanted,
            or_(server_slots.c.holder.is_(None), server_slots.c.expires_at < tx.now),
        )
        .order_by(server_slots.c.server, server_slots.c.slot)
        .with_for_update(skip_locked=True)
    )
    free: dict[str, list[int]] = {}
    for row in tx.conn.execute(query):
        free.setdefault(row.server, []).append(row.slot)
    return free


def _reserve(tx: Tx, bucket: Bucket, slots: list[int]) -> Granted:
    """An rpm start per slot: each pushes the bucket's ``tat`` on by its interval (GCRA).

    The row is locked (plain ``FOR UPDATE``: every taker must see the newest ``tat``), read,
    and written once for all the slots of this exchange."""
    row = tx.conn.execute(
        select(rate_buckets.c.tat).where(rate_buckets.c.name == bucket.name).with_for_update()
    ).first()
    tat = float(row.tat) if row is not None else 0.0
    delays = []
    for _ in slots:
        start = max(tx.now, tat - (bucket.burst - 1) * bucket.interval)
        tat = max(tat, start) + bucket.interval
        delays.append(start - tx.now)
    if row is None:
        insert_missing(tx, rate_buckets, [{"name": bucket.name, "tat": tat}])
    tx.conn.execute(update(rate_buckets).where(rate_buckets.c.name == bucket.name).values(tat=tat))
    return Granted(slots, delays)


def _release(tx: Tx, holder: str, releases: Sequence[tuple[str, int]]) -> None:
    """Free slots ``holder`` holds (one it no longer holds, lapsed and taken, is left alone)."""
    tx.conn.execute(
        update(server_slots)
        .where(
            server_slots.c.server == bindparam("b_key"),
            server_slots.c.slot == bindparam("b_slot"),
            server_slots.c.holder == holder,
        )
        .values(holder=None, task_id=None, expires_at=None),
        [{"b_key": key, "b_slot": slot} for key, slot in sorted(releases)],
    )


def renew_slots(tx: Tx, holder: str, until: float) -> int:
    """Extend the lease of every slot ``holder`` holds (one statement); how many."""
    result = tx.conn.execute(
        update(server_slots).where(server_slots.c.holder == holder).values(expires_at=until)
    )
    return int(result.rowcount)


def release_holders(tx: Tx, holders: Collection[str]) -> int:
    """Free every slot the ``holders`` hold (a scheduler stopping, or known dead); how many."""
    if not holders:
        return 0
    result = tx.conn.execute(
        update(server_slots)
        .where(server_slots.c.holder.in_(sorted(holders)))
        .values(holder=None, task_id=None, expires_at=None)
    )
    return int(result.rowcount)


def slots_held(conn: Connection, key: str, now: float) -> dict[int, str]:
    """Slot → holder of ``key``'s slots held now (lapsed ones left out): for status and tests."""
    rows = conn.execute(
        select(server_slots.c.slot, server_slots.c.holder).where(
            server_slots.c.server == key,
            server_slots.c.holder.is_not(None),
            server_slots.c.expires_at >= now,
        )
    )
    return {int(row.slot): str(row.holder) for row in rows}


def insert_missing(tx: Tx, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert ``rows`` whose primary key is not in ``table`` yet; existing rows stay as they
    are, whoever inserted them (another process at the same moment included)."""
    values = [dict(r) for r in rows]
    if values:
        tx.conn.execute(_insert_ignoring(tx.dialect, table), values)


def _insert_ignoring(dialect: str, table: Table) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(table).prefix_with("IGNORE")
    return sqlite.insert(table).on_conflict_do_nothing()
