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

Database variants: free slots are picked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and
MySQL/MariaDB (a row another process is taking or giving back is skipped: it is busy
now, and the next look finds it); SQLite ignores the clause, and its writer's
``BEGIN IMMEDIATE`` serialises the pick and the update instead. SQLite and PostgreSQL
pick and take in one ``UPDATE … WHERE slot IN (SELECT …) RETURNING`` (one round trip
per server); MySQL, without ``UPDATE … RETURNING``, reads the slots, then updates them.
Missing rows are added with an insert that ignores existing ones (``ON CONFLICT DO NOTHING``,
``INSERT IGNORE``), so two processes adding a server's rows at once never collide.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Insert, Table, bindparam, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pixelkiln.db.database import Tx
from pixelkiln.db.notify import SLOTS, notify
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


# The hot statements, built once: a take and a give-back run per request sent.
_FREE = (
    select(server_slots.c.slot)
    .where(
        server_slots.c.server == bindparam("f_key"),
        server_slots.c.slot < bindparam("f_limit"),
        or_(server_slots.c.holder.is_(None), server_slots.c.expires_at < bindparam("f_now")),
    )
    .order_by(server_slots.c.slot)
    .limit(bindparam("f_count"))
    .with_for_update(skip_locked=True)
)
#: the pick, evaluated once: as a plain ``IN (subquery)`` PostgreSQL may run a ``LIMIT … SKIP
#: LOCKED`` subquery again per row it updates, and take more slots than asked for
_PICKED = _FREE.cte("picked").prefix_with("MATERIALIZED")
#: SQLite and PostgreSQL: pick and take in one statement (MySQL has no UPDATE … RETURNING)
_TAKE_RETURNING = (
    update(server_slots)
    .where(
        server_slots.c.server == bindparam("f_key"),
        server_slots.c.slot.in_(select(_PICKED.c.slot)),
    )
    .values(holder=bindparam("b_holder"), expires_at=bindparam("b_until"))
    .returning(server_slots.c.slot)
)
_TAKE = (
    update(server_slots)
    .where(server_slots.c.server == bindparam("b_key"), server_slots.c.slot == bindparam("b_slot"))
    .values(holder=bindparam("b_holder"), expires_at=bindparam("b_until"))
)
_RELEASE = (
    update(server_slots)
    .where(
        server_slots.c.server == bindparam("b_key"),
        server_slots.c.slot == bindparam("b_slot"),
        server_slots.c.holder == bindparam("b_holder"),
    )
    .values(holder=None, task_id=None, expires_at=None)
)
_TAT = (
    select(rate_buckets.c.tat)
    .where(rate_buckets.c.name == bindparam("r_name"))
    .with_for_update()  # not SKIP LOCKED: every taker must see the newest tat
)
_SET_TAT = (
    update(rate_buckets)
    .where(rate_buckets.c.name == bindparam("r_name"))
    .values(tat=bindparam("r_tat"))
)


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
    may be missing (first use of a server, or more slots than before); the rpm buckets
    of ``wants`` are added the same way then. Keys are visited in order, so two
    processes lock rows in one order and never deadlock."""
    if releases:
        tx.conn.execute(
            _RELEASE,
            [{"b_key": k, "b_slot": n, "b_holder": holder} for k, n in sorted(releases)],
        )
        notify(tx, SLOTS)  # waiters in other processes look again (PostgreSQL)
    if ensure:
        _ensure(tx, ensure, wants)
    granted: dict[str, Granted] = {}
    for want in sorted(wants, key=lambda w: w.key):
        slots = _take(tx, holder, want, until)
        granted[want.key] = (
            _reserve(tx, want.bucket, slots)
            if want.bucket and slots
            else Granted(slots, [0.0] * len(slots))
        )
    return granted


def _take(tx: Tx, holder: str, want: SlotWant, until: float) -> list[int]:
    """Take up to ``want.count`` free (or lapsed) slots of ``want.key``; their numbers."""
    params = {"f_key": want.key, "f_limit": want.limit, "f_now": tx.now, "f_count": want.count}
    if tx.dialect not in ("mysql", "mariadb"):
        taken = tx.conn.execute(_TAKE_RETURNING, {**params, "b_holder": holder, "b_until": until})
        slots = sorted(taken.scalars())
        extra = [{"b_key": want.key, "b_slot": n, "b_holder": holder} for n in slots[want.count :]]
        if extra:  # not expected (see _PICKED), but a slot nobody knows of would never free
            tx.conn.execute(_RELEASE, extra)
        return slots[: want.count]
    slots = list(tx.conn.execute(_FREE, params).scalars())
    if slots:
        tx.conn.execute(
            _TAKE,
            [{"b_key": want.key, "b_slot": n, "b_holder": holder, "b_until": until} for n in slots],
        )
    return slots


def _ensure(tx: Tx, ensure: Mapping[str, int], wants: Sequence[SlotWant]) -> None:
    """Add the missing slot rows of ``ensure`` and the missing rpm buckets of ``wants``."""
    insert_missing(
        tx,
        server_slots,
        [{"server": k, "slot": n} for k, count in sorted(ensure.items()) for n in range(count)],
    )
    buckets = sorted({w.bucket.name for w in wants if w.bucket is not None})
    insert_missing(tx, rate_buckets, [{"name": name, "tat": 0.0} for name in buckets])


def _reserve(tx: Tx, bucket: Bucket, slots: list[int]) -> Granted:
    """An rpm start per slot: each pushes the bucket's ``tat`` on by its interval (GCRA).

    The row is locked, read, and written once for all the slots of this exchange."""
    tat = tx.conn.execute(_TAT, {"r_name": bucket.name}).scalar()
    if tat is None:  # its row is added with the server's first slots; here all the same
        insert_missing(tx, rate_buckets, [{"name": bucket.name, "tat": 0.0}])
        tat = 0.0
    delays = []
    for _ in slots:
        start = max(tx.now, tat - (bucket.burst - 1) * bucket.interval)
        tat = max(tat, start) + bucket.interval
        delays.append(start - tx.now)
    tx.conn.execute(_SET_TAT, {"r_name": bucket.name, "r_tat": tat})
    return Granted(slots, delays)


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
