"""Cron schedules as stored: add, list, remove, find the due ones, claim a slot, record.

A due slot is claimed by a compare-and-set of ``next_run_at`` (:func:`claim_slot`):
the process that moves it from the value it read to the next slot after now runs
the slot; any other process reading the same value updates no row and runs
nothing. So each slot runs once however many processes share the database, and
slots missed while no process ran collapse into one run (the next slot is
counted from now, not from the missed one). Cron maths is the service's
(:mod:`pixelkiln.service.schedules`); here are only rows.

The claim also records the slot and its claimant (``claimed_*``) until the start
is recorded (:func:`record_result`, in the transaction that creates the run, or
right after the batch's): a process that dies in between leaves the claim, and
once it is older than a lease any process takes it over (:func:`stale_claims`,
:func:`take_over`, a compare-and-set too) and starts the slot, so no slot is lost
silently. A start is recorded only by the claim's holder (a process that lost it
records nothing, and a run it was creating is rolled back: :class:`ClaimLost`).

>>> schedule_id = db.write(add_schedule, NewSchedule(None, "0 0 * * *", ...))  # doctest: +SKIP
>>> db.write(claim_slot, schedule_id, seen=1767225600.0, following=1767312000.0)  # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Integer, Row, delete, func, insert, literal, select, update

from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.tables import schedules
from pixelkiln.exceptions import KilnError, NotFoundError

S = schedules


class ScheduleKind(StrEnum):
    PROJECTS = "projects"  #: a project config: one run, one batch per project
    BATCH = "batch"  #: a batch file: one batch


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to store."""

    owner_id: int | None  #: None: the installation's (added by the CLI)
    cron: str
    kind: ScheduleKind
    target: str  #: the project config or batch file, absolute
    next_run_at: float  #: its first slot
    options: dict[str, Any] = field(default_factory=dict)  #: overrides (projects)
    timezone: str = ""  #: IANA zone of the cron expression; "" = [schedules] timezone


@dataclass(frozen=True)
class Schedule:
    """A stored schedule."""

    id: int
    owner_id: int | None
    cron: str  #: 5 fields, or 6 with seconds last
    kind: ScheduleKind
    target: str  #: the project config or batch file, absolute
    options: dict[str, Any]  #: overrides given when it was added (projects)
    timezone: str  #: "" = [schedules] timezone, else this machine's local time
    enabled: bool
    next_run_at: float | None  #: its next slot; None: none will come
    last_run_at: float | None  #: when it last started something
    last_run_id: int | None  #: the run (projects) or batch it last started
    last_error: str | None  #: why its last start failed; None when it worked
    created_at: float
    claimed_slot: float | None = None  #: a slot claimed, not yet started
    claimed_by: str | None = None  #: the process that claimed it
    claimed_at: float | None = None  #: when it was claimed (or taken over)


def _schedule(row: Row[Any]) -> Schedule:
    return Schedule(
        id=row.id,
        owner_id=row.owner_id,
        cron=row.cron,
        kind=ScheduleKind(row.kind),
        target=row.target,
        options=dict(row.options or {}),
        timezone=row.timezone or "",
        enabled=bool(row.enabled),
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        last_run_id=row.last_run_id,
        last_error=row.last_error,
        created_at=row.created_at,
        claimed_slot=row.claimed_slot,
        claimed_by=row.claimed_by,
        claimed_at=row.claimed_at,
    )


def _scoped(query: Any, scope: int | None) -> Any:
    """Only ``scope``'s schedules (None: everyone's, for admins and the CLI)."""
    return query if scope is None else query.where(S.c.owner_id == scope)


def add_schedule(tx: Tx, new: NewSchedule) -> int:
    """Store ``new``; its id."""
    result = tx.conn.execute(
        insert(S).values(
            owner_id=new.owner_id,
            cron=new.cron,
            kind=new.kind.value,
            target=new.target,
            options=new.options,
            timezone=new.timezone,
            enabled=True,
            next_run_at=new.next_run_at,
            created_at=tx.now,
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def list_schedules(conn: Connection, scope: int | None = None) -> list[Schedule]:
    """Every schedule (of ``scope``), oldest first."""
    rows = conn.execute(_scoped(select(S), scope).order_by(S.c.id))
    return [_schedule(r) for r in rows]


def get_schedule(conn: Connection, schedule_id: int, scope: int | None = None) -> Schedule:
    """One schedule; NotFoundError when there is none (for ``scope``)."""
    query = _scoped(select(S).where(S.c.id == schedule_id), scope)
    return _schedule(one_row(conn, query, f"no schedule {schedule_id}"))


def remove_schedule(tx: Tx, schedule_id: int, scope: int | None = None) -> None:
    """Delete a schedule (a run it started goes on); NotFoundError when there is none."""
    query = _scoped(delete(S).where(S.c.id == schedule_id), scope)
    if tx.conn.execute(query).rowcount != 1:
        raise NotFoundError(f"no schedule {schedule_id}")


def due_schedules(conn: Connection, now: float) -> list[Schedule]:
    """Enabled schedules whose next slot has come, the earliest first."""
    query = (
        select(S)
        .where(S.c.enabled.is_(True), S.c.next_run_at <= now)
        .order_by(S.c.next_run_at, S.c.id)
    )
    return [_schedule(r) for r in conn.execute(query)]


def next_due_at(conn: Connection) -> float | None:
    """The earliest next slot of any enabled schedule (None: no schedule will come)."""
    found = conn.execute(select(func.min(S.c.next_run_at)).where(S.c.enabled.is_(True)))
    value = found.scalar_one_or_none()
    return None if value is None else float(value)


class ClaimLost(KilnError):
    """Another process took this slot's claim over: what this one started is undone."""


def claim_slot(
    tx: Tx, schedule_id: int, *, seen: float, following: float | None, owner: str = ""
) -> bool:
    """Take the slot ``seen`` of a schedule by moving its ``next_run_at`` to ``following``.

    True for the one caller that moved it, whose claim (``owner``) is kept until its
    start is recorded; False when another process did first (the row no longer holds
    ``seen``), or the schedule was removed or disabled meanwhile.
    """
    query = (
        update(S)
        .where(S.c.id == schedule_id, S.c.next_run_at == seen, S.c.enabled.is_(True))
        .values(
            next_run_at=following,
            last_run_at=tx.now,
            claimed_slot=seen,
            claimed_by=owner,
            claimed_at=tx.now,
        )
    )
    return bool(tx.conn.execute(query).rowcount == 1)


def stale_claims(conn: Connection, before: float) -> list[Schedule]:
    """Enabled schedules holding a claim made before ``before`` that never started."""
    query = (
        select(S)
        .where(S.c.enabled.is_(True), S.c.claimed_slot.is_not(None), S.c.claimed_at < before)
        .order_by(S.c.claimed_at, S.c.id)
    )
    return [_schedule(r) for r in conn.execute(query)]


def take_over(tx: Tx, stale: Schedule, owner: str) -> bool:
    """Take a stale claim over as ``owner``: True for the one process whose compare-and-set
    (the claim as ``stale`` read it) moved it."""
    query = (
        update(S)
        .where(
            S.c.id == stale.id,
            S.c.claimed_slot == stale.claimed_slot,
            S.c.claimed_by == stale.claimed_by,
            S.c.claimed_at == stale.claimed_at,
        )
        .values(claimed_by=owner, claimed_at=tx.now)
    )
    return bool(tx.conn.execute(query).rowcount == 1)


def record_result(
    tx: Tx,
    schedule_id: int,
    *,
    run_id: int | None,
    error: str | None,
    claimant: str | None = None,
) -> None:
    """What a start came to: the run or batch it made, or why it made none.

    With ``claimant`` (a slot's start) the claim is settled too, and only by its holder:
    ClaimLost when another process took it over (so a run made in this transaction is
    rolled back). Without (run now) the claim, if any, is left alone.
    """
    started = literal(run_id, Integer)  # a failed start keeps the last run it did make
    query = update(S).where(S.c.id == schedule_id)
    values: dict[str, Any] = {
        "last_error": error,
        "last_run_at": tx.now,
        "last_run_id": func.coalesce(started, S.c.last_run_id),
    }
    if claimant is not None:
        query = query.where(S.c.claimed_by == claimant)
        values |= {"claimed_slot": None, "claimed_by": None, "claimed_at": None}
    if tx.conn.execute(query.values(**values)).rowcount != 1 and claimant is not None:
        raise ClaimLost(f"schedule {schedule_id}: its slot was taken over by another process")


__all__ = [
    "ClaimLost",
    "NewSchedule",
    "Schedule",
    "ScheduleKind",
    "add_schedule",
    "claim_slot",
    "due_schedules",
    "get_schedule",
    "list_schedules",
    "next_due_at",
    "record_result",
    "remove_schedule",
    "stale_claims",
    "take_over",
]
