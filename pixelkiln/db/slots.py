"""Slots of generator servers and request-rate buckets, held in the database by every process.

A server configured for ``concurrency = 2`` has two rows in ``server_slots``
(``server`` = its URL, ``slot`` 0 and 1). A process *holds* a slot
(``holder`` = its scheduler's owner id) while one of its requests runs there, under
a lease (``expires_at``) that its lease keeper renews with its tasks' leases; a slot
whose lease lapsed (the process was killed) is free to take. The pseudo server
``"*"`` holds the global concurrency an admin stored, taken beside a server's.

A backend's ``rpm`` is a GCRA bucket in ``rate_buckets`` (``tat``: the theoretical
arrival time of the next request, wall clock): each start granted pushes it on by
``60 / rpm`` seconds, whichever process asks.

Every change goes through :func:`exchange`, one write that first gives back slots,
then takes the wanted ones and reserves their rpm starts, so a scheduler sends every
take and release of one event-loop turn together (engine.shared_limits). A slot given back
and wanted again in the same write, while no other process waits for the server, is kept
(its lease renewed by one statement) rather than given back and taken again.

**Handover.** A process refused a server's slots (all held) while holding none of them
queues for one: it takes one of the server's want rows (``slot`` :data:`WANT` and below,
:data:`WANT_ROWS` of them) with ``holder`` = the waiter, ``task_id`` = its ticket (one
more than the highest live ticket) and ``expires_at`` = now + :data:`WANT_SECONDS`,
renewed, ticket kept, by each refused look. While wants are live, only the first in line
(lowest ticket) takes the server's slots: a process giving one back does not take it
again in the same write (it would never be seen free), and the first waiter gets it at
its next look (at once on PostgreSQL: the give-back sends ``NOTIFY``, and only then).
So slots go to the processes that have work in the order they asked: none waits while
another, quicker to ask again, gets turn after turn (with one marker row for all,
whoever looked first after each handover was next, and one of four workers waited 3 s
while the others took eleven turns). A waiter's successful take clears its want; a
waiter that went away lets it lapse, and the next in line is first.

**Starts.** A take may carry the task its slot is for (:attr:`SlotWant.starts`): a slot
granted to it with no rpm wait goes out at once, so the task's start is marked (its
attempt spent, :func:`~pixelkiln.db.leases.start_tasks`) in the same write, not in one of
its own just after (engine.sending). A start so marked whose request then never went out
(its caller was cancelled as the grant arrived) is given back by the write that gives its
slot back (``unstarts``). A failed write marks nothing: it is one transaction.

**rpm.** A start is reserved only up to :data:`RPM_AHEAD` seconds ahead: a slot would be
held idle while its request sleeps. Beyond that the slot is not taken, and the answer
says how long to wait (:attr:`Granted.wait`).

Database variants: free slots are picked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and
MySQL/MariaDB (a row another process is taking or giving back is skipped: it is busy
now, and the next look finds it); SQLite ignores the clause, and its writer's
``BEGIN IMMEDIATE`` serialises the pick and the update instead. SQLite and PostgreSQL
pick and take in one ``UPDATE … WHERE slot IN (SELECT …) RETURNING`` (one round trip
per server); MySQL, without ``UPDATE … RETURNING``, reads the slots, then updates them.
Missing rows are added by :func:`ensure_rows`, a write of its own before a process's first
take of a server: it reads which rows exist and inserts only the missing ones (ignoring a
row another process inserted meanwhile: ``ON CONFLICT DO NOTHING``, ``INSERT IGNORE``), so
the hot exchange never inserts, and an insert never locks rows a take or give-back holds
(``INSERT IGNORE`` of existing rows did, and deadlocked on MariaDB and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    Integer,
    String,
    Table,
    any_,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pixelkiln.db import driver
from pixelkiln.db.database import Tx
from pixelkiln.db.leases import start_tasks, unstart_tasks
from pixelkiln.db.notify import SLOTS, notify
from pixelkiln.db.tables import rate_buckets, server_slots

__all__ = [
    "GLOBAL",
    "RPM_AHEAD",
    "WANT",
    "WANT_ROWS",
    "WANT_SECONDS",
    "Bucket",
    "Granted",
    "SlotWant",
    "ensure_rows",
    "exchange",
    "insert_missing",
    "release_holders",
    "renew_slots",
    "slots_held",
]

#: the pseudo server whose slots are the global concurrency an admin stored
GLOBAL = "*"
#: the slot number of a server's first want row; the others are below it (module docstring)
WANT = -1
#: want rows per server: processes that can queue for its slots at once (one more waits
#: unqueued, and takes a slot once the queue is empty)
WANT_ROWS = 32
#: seconds a refused process's want stays live unless renewed by its next refused look
WANT_SECONDS = 0.5
#: seconds ahead an rpm start may be reserved; a later one is refused (the slot not held)
RPM_AHEAD = 5.0


@dataclass(frozen=True)
class Bucket:
    """A backend's ``rpm`` as a GCRA bucket."""

    name: str  #: the backend's name
    interval: float  #: seconds between starts: ``60 / rpm``
    burst: int = 1  #: starts allowed back to back


@dataclass(frozen=True)
class SlotWant:
    """Slots of one server wanted in one exchange."""

    key: str  #: the server's URL, or :data:`GLOBAL`
    limit: int  #: the server's slots as this process counts them (rows ``0 … limit-1``)
    count: int  #: slots wanted
    bucket: Bucket | None = None  #: reserve an rpm start in this bucket per slot granted
    #: slots of ``key`` the process holds besides (after this exchange's give-backs): only
    #: one refused while holding none records a want, so one holding some cannot keep the
    #: others out by wanting more
    held: int = 0
    #: per slot wanted, in the order the slots are handed out (:class:`Granted`): the task
    #: it is for, whose start a grant with no rpm wait marks in this write, or None
    starts: tuple[int | None, ...] = ()
    #: some of ``starts`` belong to batches with a ``delay`` (it runs from the start)
    paced: bool = False


@dataclass(frozen=True)
class Granted:
    """What one :class:`SlotWant` got."""

    slots: list[int] = field(default_factory=list)  #: slot numbers now held
    #: per slot, seconds from the write's clock until its request may start (rpm)
    delays: list[float] = field(default_factory=list)
    #: fewer slots than wanted because of rpm: seconds until a start may be reserved
    wait: float = 0.0
    #: per slot (empty: None for each), its task's start (:attr:`SlotWant.starts`) marked in
    #: this write: True (held: its request goes out now), False (the task was taken away:
    #: not to be sent), None (no task named, or an rpm wait first: marked after it)
    marks: list[bool | None] = field(default_factory=list)
    #: the write's clock, when ``marks`` holds a start: what the start was stamped with
    at: float = 0.0


# The hot statements, built once: a take and a give-back run per request sent.
_FREE = (
    select(server_slots.c.slot)
    .where(
        server_slots.c.server == bindparam("f_key"),
        server_slots.c.slot >= 0,  # not the WANT marker
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
#: the want rows of other processes still live: while one waits, a slot given back is theirs
_WAITER = server_slots.alias("waiter")
_OTHERS_WAIT = (
    select(_WAITER.c.slot)
    .where(
        _WAITER.c.server == bindparam("k_key"),
        _WAITER.c.slot <= WANT,
        _WAITER.c.holder.is_not(None),
        _WAITER.c.holder != bindparam("k_holder"),
        _WAITER.c.expires_at >= bindparam("k_now"),
    )
    .exists()
)


def _keep_statement(slots: Any) -> Any:
    """A slot given back and wanted again in the same write is kept, its lease renewed:
    still this holder's, not lapsed, and nobody else waits for the server (SQLite,
    PostgreSQL); ``slots``: the test of the slots given back."""
    return (
        update(server_slots)
        .where(
            server_slots.c.server == bindparam("k_key"),
            slots,
            server_slots.c.holder == bindparam("k_holder"),
            server_slots.c.expires_at >= bindparam("k_now"),
            ~_OTHERS_WAIT,
        )
        .values(expires_at=bindparam("k_until"))
        .returning(server_slots.c.slot)
    )


def _wants_statement(keys: Any) -> Any:
    return select(
        server_slots.c.server,
        server_slots.c.slot,
        server_slots.c.holder,
        server_slots.c.task_id,
        server_slots.c.expires_at,
    ).where(keys, server_slots.c.slot <= WANT, server_slots.c.holder.is_not(None))


_KEEP = _keep_statement(server_slots.c.slot.in_(bindparam("k_slots", expanding=True)))
_WANTS = _wants_statement(server_slots.c.server.in_(bindparam("w_keys", expanding=True)))
#: PostgreSQL: the lists as arrays, so each statement has one text and runs through the
#: driver (db.driver: a take and a give-back run per request sent)
_KEEP_PG = _keep_statement(
    server_slots.c.slot == any_(bindparam("k_slots", type_=postgresql.ARRAY(Integer)))
)
_WANTS_PG = _wants_statement(
    server_slots.c.server == any_(bindparam("w_keys", type_=postgresql.ARRAY(String)))
)
#: a want row to queue in: free or lapsed (``SKIP LOCKED``: one another process is taking
#: now is skipped)
_FREE_WANT = (
    select(server_slots.c.slot)
    .where(
        server_slots.c.server == bindparam("w_key"),
        server_slots.c.slot <= WANT,
        or_(server_slots.c.holder.is_(None), server_slots.c.expires_at < bindparam("w_now")),
    )
    .order_by(server_slots.c.slot.desc())
    .limit(1)
    .with_for_update(skip_locked=True)
)
_SET_WANT = (
    update(server_slots)
    .where(server_slots.c.server == bindparam("w_key"), server_slots.c.slot == bindparam("w_slot"))
    .values(
        holder=bindparam("w_holder"), task_id=bindparam("w_ticket"), expires_at=bindparam("w_until")
    )
)
_TAT = (
    select(rate_buckets.c.tat)
    .where(rate_buckets.c.name == bindparam("r_name"))
    .with_for_update()  # not SKIP LOCKED: every taker must see the newest tat
)
_RENEW_SLOTS = (
    update(server_slots)
    .where(server_slots.c.holder == bindparam("n_holder"), server_slots.c.slot >= 0)
    .values(expires_at=bindparam("n_until"))
)
_RENEW_SLOTS_PG = _RENEW_SLOTS.returning(server_slots.c.slot)
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
    unstarts: Mapping[int, float] | None = None,
) -> dict[tuple[str, str | None], Granted]:
    """Give back ``releases`` (key, slot), then take what ``wants`` asks for; per (key,
    bucket name), what was granted (fewer slots than wanted, or none, when the others hold
    them, or want them first: see the module docstring). Then, on ``holder``'s tasks:
    the attempts of ``unstarts`` (task → when its start was marked) given back, and the
    starts the grants carry marked (:func:`_mark_starts`).

    ``until``: the lease of the slots taken. Slots are picked ``SKIP LOCKED`` (no waits),
    then rpm buckets are reserved in name order, then wants are written in key order, so
    two processes lock rows in one order and never deadlock. Rows come from
    :func:`ensure_rows`.

    A slot given back and wanted again in this write while nobody else waits for its
    server is kept instead (:func:`_keep`): under load, the give-back of one request and
    the take of the next are one statement, not three."""
    granted = _exchange_slots(tx, holder, releases, wants, until)
    if unstarts:
        unstart_tasks(tx, holder, unstarts)
    return _mark_starts(tx, holder, wants, granted)


def _exchange_slots(
    tx: Tx,
    holder: str,
    releases: Sequence[tuple[str, int]],
    wants: Sequence[SlotWant],
    until: float,
) -> dict[tuple[str, str | None], Granted]:
    """:func:`exchange`'s slots and rpm starts."""
    kept = _keep(tx, holder, releases, wants, until)
    order = sorted(wants, key=lambda w: (w.key, w.bucket.name if w.bucket else ""))
    taken = _share_kept(order, kept)
    releases = [r for r in releases if r[1] not in kept.get(r[0], ())]
    rest = [w for w in order if w.count > len(taken[id(w)])]
    if not releases and not rest:  # all of it kept: no line to read or join
        return _reserve_all(tx, holder, order, taken)
    if releases:
        tx.conn.execute(
            _RELEASE,
            [{"b_key": k, "b_slot": n, "b_holder": holder} for k, n in sorted(releases)],
        )
    keys = sorted({k for k, _ in releases} | {w.key for w in wants})
    queues = _wants_of(tx, keys) if keys else {}
    foreign = {k for k, q in queues.items() if q.first is not None and q.first != holder}
    if any(k in foreign for k, _ in releases):
        notify(tx, SLOTS)  # a waiter elsewhere looks again now (PostgreSQL); else nobody needs to
    for w in rest:
        if w.key not in foreign:
            more = replace(w, count=w.count - len(taken[id(w)]))
            taken[id(w)] = taken[id(w)] + _take(tx, holder, more, until)
    granted = _reserve_all(tx, holder, order, taken)
    for key in sorted({w.key for w in order}):
        queue = queues.get(key, _Queue())
        mine = queue.rows.get(holder)  # (slot, ticket, live) of this process's want row
        if any(taken[id(w)] or w.held for w in order if w.key == key):
            if mine is not None:  # got what it waited for (or holds some): out of the line
                _set_want(tx, key, mine[0], None, None, None)
        elif mine is not None and mine[2]:  # still waiting: its place in line is kept
            _set_want(tx, key, mine[0], holder, mine[1], tx.now + WANT_SECONDS)
        else:  # refused for want of a free slot, holding none: it joins the line
            row = mine[0] if mine is not None else _free_want_row(tx, key)
            if row is not None:
                _set_want(tx, key, row, holder, queue.last + 1, tx.now + WANT_SECONDS)
    return granted


def _mark_starts(
    tx: Tx,
    holder: str,
    wants: Sequence[SlotWant],
    granted: dict[tuple[str, str | None], Granted],
) -> dict[tuple[str, str | None], Granted]:
    """Mark the start of each task named for a slot granted with no rpm wait (its request
    goes out at once), as :func:`~pixelkiln.db.leases.start_tasks` marks any start: the
    i-th slot granted to a want is its i-th take's. ``granted`` with their ``marks``."""
    due: list[tuple[SlotWant, Granted, list[int | None]]] = []
    for want in wants:
        got = granted[(want.key, want.bucket.name if want.bucket else None)]
        named = [
            task if delay <= 0 else None
            for task, delay in zip(want.starts, got.delays, strict=False)
        ]
        if any(task is not None for task in named):
            due.append((want, got, named))
    if not due:
        return granted
    ids = [task for _, _, named in due for task in named if task is not None]
    held = start_tasks(tx, holder, ids, any(want.paced for want, _, _ in due))
    for want, got, named in due:
        marks: list[bool | None] = [None if t is None else t in held for t in named]
        marks += [None] * (len(got.slots) - len(marks))
        key = (want.key, want.bucket.name if want.bucket else None)
        granted[key] = replace(got, marks=marks, at=tx.now)
    return granted


def _keep(
    tx: Tx,
    holder: str,
    releases: Sequence[tuple[str, int]],
    wants: Sequence[SlotWant],
    until: float,
) -> dict[str, list[int]]:
    """key → slots of ``releases`` kept for ``wants`` of the same key, their lease now
    ``until``: at most as many as wanted, numbered below every want's limit, and only while
    the slot is still this holder's (not lapsed) and no other process waits for the server
    (one statement per key). MySQL (no ``UPDATE … RETURNING``, nor an UPDATE reading its own
    table) keeps none: its slots are given back and taken again."""
    kept: dict[str, list[int]] = {}
    if tx.dialect == "mysql" or not releases:
        return kept
    for key in sorted({k for k, _ in releases}):
        mine = [w for w in wants if w.key == key]
        if not mine:
            continue
        limit = min(w.limit for w in mine)
        slots = sorted(n for k, n in releases if k == key and n < limit)
        slots = slots[: sum(w.count for w in mine)]
        if slots:
            params = {"k_key": key, "k_slots": slots, "k_holder": holder, "k_now": tx.now}
            statement = _KEEP_PG if tx.dialect == "postgresql" else _KEEP
            found = driver.core_rows(tx.conn, statement, {**params, "k_until": until})
            kept[key] = sorted(int(row[0]) for row in found)
    return kept


def _share_kept(order: list[SlotWant], kept: dict[str, list[int]]) -> dict[int, list[int]]:
    """id(want) → the kept slots it gets, in ``order``, each up to its count."""
    left = {k: list(v) for k, v in kept.items()}
    taken: dict[int, list[int]] = {}
    for w in order:
        pool = left.get(w.key, [])
        taken[id(w)], left[w.key] = pool[: w.count], pool[w.count :]
    return taken


@dataclass
class _Queue:
    """The processes waiting for one server's slots, as its want rows hold them."""

    #: holder → (want row, ticket, live) of each process with a want row, lapsed or not
    rows: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    first: str | None = None  #: the live want with the lowest ticket: the next slot's
    last: int = 0  #: the highest live ticket (0: nobody waits)


def _wants_of(tx: Tx, keys: list[str]) -> dict[str, _Queue]:
    """key → the line of processes waiting for its slots."""
    queues: dict[str, _Queue] = {}
    best: dict[str, tuple[int, str]] = {}
    statement = _WANTS_PG if tx.dialect == "postgresql" else _WANTS
    for server, slot, holder, ticket_id, expires_at in driver.core_rows(
        tx.conn, statement, {"w_keys": keys}
    ):
        key, by, ticket = str(server), str(holder), int(ticket_id or 0)
        live = expires_at is not None and expires_at >= tx.now
        queue = queues.setdefault(key, _Queue())
        queue.rows[by] = (int(slot), ticket, live)
        if live:
            queue.last = max(queue.last, ticket)
            if key not in best or (ticket, by) < best[key]:
                best[key] = (ticket, by)
                queue.first = by
    return queues


def _free_want_row(tx: Tx, key: str) -> int | None:
    """A want row of ``key`` free to queue in (None: the line is full)."""
    found = tx.conn.execute(_FREE_WANT, {"w_key": key, "w_now": tx.now}).scalar()
    return None if found is None else int(found)


def _set_want(
    tx: Tx, key: str, row: int, holder: str | None, ticket: int | None, until: float | None
) -> None:
    params = {"w_key": key, "w_slot": row, "w_holder": holder, "w_ticket": ticket}
    tx.conn.execute(_SET_WANT, {**params, "w_until": until})


def _take(tx: Tx, holder: str, want: SlotWant, until: float) -> list[int]:
    """Take up to ``want.count`` free (or lapsed) slots of ``want.key``; their numbers."""
    params = {"f_key": want.key, "f_limit": want.limit, "f_now": tx.now, "f_count": want.count}
    if tx.dialect not in ("mysql", "mariadb"):
        params = {**params, "b_holder": holder, "b_until": until}
        slots = sorted(row[0] for row in driver.core_rows(tx.conn, _TAKE_RETURNING, params))
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


def _reserve_all(
    tx: Tx, holder: str, wants: list[SlotWant], taken: dict[int, list[int]]
) -> dict[tuple[str, str | None], Granted]:
    """Reserve the rpm starts of the slots taken, bucket by bucket in name order; a slot
    whose start lies beyond :data:`RPM_AHEAD` is given back."""
    granted: dict[tuple[str, str | None], Granted] = {}
    by_bucket = sorted(
        (w for w in wants if w.bucket and taken[id(w)]),
        key=lambda w: (w.bucket.name if w.bucket else "", w.key),
    )
    for want in by_bucket:
        assert want.bucket is not None
        got = _reserve(tx, want.bucket, taken[id(want)])
        dropped = taken[id(want)][len(got.slots) :]
        if dropped:
            tx.conn.execute(
                _RELEASE, [{"b_key": want.key, "b_slot": n, "b_holder": holder} for n in dropped]
            )
        granted[(want.key, want.bucket.name)] = got
    for want in wants:
        name = want.bucket.name if want.bucket else None
        if (want.key, name) not in granted:
            slots = taken[id(want)]
            granted[(want.key, name)] = Granted(slots, [0.0] * len(slots))
    return granted


def _reserve(tx: Tx, bucket: Bucket, slots: list[int]) -> Granted:
    """An rpm start per slot: each pushes the bucket's ``tat`` on by its interval (GCRA);
    slots whose start would lie more than :data:`RPM_AHEAD` s ahead are left out.

    The row is locked, read, and written once for all the slots of this exchange."""
    tat = tx.conn.execute(_TAT, {"r_name": bucket.name}).scalar()
    if tat is None:  # its row is added with the server's first slots; here all the same
        insert_missing(tx, rate_buckets, [{"name": bucket.name, "tat": 0.0}])
        tat = 0.0
    delays: list[float] = []
    wait = 0.0
    for _ in slots:
        start = max(tx.now, tat - (bucket.burst - 1) * bucket.interval)
        if start - tx.now > RPM_AHEAD:  # a slot held idle that long is taken from others
            wait = start - tx.now - RPM_AHEAD
            break
        tat = max(tat, start) + bucket.interval
        delays.append(start - tx.now)
    if delays:
        tx.conn.execute(_SET_TAT, {"r_name": bucket.name, "r_tat": tat})
    return Granted(slots[: len(delays)], delays, wait)


def ensure_rows(tx: Tx, slots: Mapping[str, int], buckets: Collection[str] = ()) -> None:
    """Add the rows a first take needs: per key of ``slots``, its :data:`WANT_ROWS` want
    rows and slots ``0 … n-1``; a bucket row per name in ``buckets``. Reads which exist and inserts
    only the missing ones (a write of its own, before the take: see the module docstring)."""
    if slots:
        query = select(server_slots.c.server, server_slots.c.slot).where(
            server_slots.c.server.in_(sorted(slots))
        )
        have = {(str(k), int(n)) for k, n in tx.conn.execute(query)}
        rows = [
            {"server": k, "slot": n}
            for k, count in sorted(slots.items())
            for n in range(WANT - WANT_ROWS + 1, count)
            if (k, n) not in have
        ]
        insert_missing(tx, server_slots, rows)
    if buckets:
        query = select(rate_buckets.c.name).where(rate_buckets.c.name.in_(sorted(buckets)))
        names = set(tx.conn.execute(query).scalars())
        missing = [{"name": n, "tat": 0.0} for n in sorted(buckets) if n not in names]
        insert_missing(tx, rate_buckets, missing)


def renew_slots(tx: Tx, holder: str, until: float) -> int:
    """Extend the lease of every slot ``holder`` holds (one statement); how many."""
    params = {"n_holder": holder, "n_until": until}
    if tx.dialect == "postgresql":  # through the driver: every runner, every 2 s
        return len(driver.core_rows(tx.conn, _RENEW_SLOTS_PG, params))
    return int(tx.conn.execute(_RENEW_SLOTS, params).rowcount)


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
            server_slots.c.slot >= 0,
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
