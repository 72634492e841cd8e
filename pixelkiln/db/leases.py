"""Leases on tasks: claim, start, renew, give back, recover from dead runners.

A runner holds each task it works on under a lease that it renews every few
seconds. A lease that lapses (the runner was killed) or whose owner is known
dead puts the task back in the queue; a task whose last attempt had started
fails instead, so a task that kills its runner cannot loop forever. The moves
themselves (rows, counters, refunds, events) are in :mod:`.transitions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, func, select

from pixelkiln.db import transitions
from pixelkiln.db.batches import runnable_batches
from pixelkiln.db.database import Tx
from pixelkiln.db.fair import Turns, contenders
from pixelkiln.db.pacing import wake_at
from pixelkiln.db.tables import tasks
from pixelkiln.models import ClaimedTask, TaskStatus

__all__ = [
    "Claim",
    "ClaimedTask",
    "LeaseLook",
    "Outlook",
    "claim",
    "claim_tasks",
    "lease_look",
    "outlook",
    "recover_leases",
    "release_tasks",
    "renew_leases",
    "start_tasks",
    "unstart_tasks",
]


@dataclass(frozen=True)
class Claim:
    """What a scheduler's claim took, and when to look again for paced batches."""

    tasks: list[ClaimedTask]  #: ``paced`` set on those of batches with a ``delay``
    #: when a batch waiting out its ``delay`` may start its next task (None: none waits)
    wake_at: float | None = None
    #: tasks still pending in the batches it claimed from, after it (every backend's):
    #: near the end of the work a pool can count what is left (engine.dispatch.backlog)
    pending: int | None = None

    @property
    def paced(self) -> frozenset[int]:
        """Ids of the claimed tasks whose batch has a ``delay``: claimed into a free slot,
        they start at once, before any task claimed ahead."""
        return frozenset(t.id for t in self.tasks if t.paced)


def claim(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    only_batches: Iterable[int] | None = None,
    free: Mapping[str, int] | None = None,
) -> Claim:
    """Claim up to ``wants[backend]`` pending tasks per backend: by priority, then users
    and their batches in turn (fair share, db.fair), then queue order.

    Batches' own limits (``max_workers``, ``delay``; db.pacing) hold; ``free``
    says how many slots per backend are free now (tasks of a batch with a delay
    are claimed only into one). No attempt is spent until :func:`start_tasks`;
    see ``transitions.claim``.
    """
    found = contenders(tx.conn, tx.now, only_batches)
    open_batches = [c for c in found if c.limits.allowance(tx.now) != 0]
    limits = {c.id: c.limits for c in open_batches if c.limits.limited}
    turns = Turns.read(tx.conn, open_batches)
    claimed = transitions.claim(tx, owner, wants, lease_seconds, turns, limits, free)
    started = {t.batch_id for t in claimed if t.batch_id in limits and limits[t.batch_id].paced}
    if started:
        claimed = [replace(t, paced=True) if t.batch_id in started else t for t in claimed]
    # what the open batches held as the claim began, less what it took: no second read
    pending = sum(c.pending for c in open_batches) - len(claimed) if claimed else None
    return Claim(claimed, wake_at((c.limits for c in found), tx.now, started), pending)


def claim_tasks(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    only_batches: Iterable[int] | None = None,
) -> list[ClaimedTask]:
    """:func:`claim`'s tasks, for a runner whose every wanted slot is free."""
    return claim(tx, owner, wants, lease_seconds, only_batches).tasks


@dataclass(frozen=True)
class Outlook:
    """A read-only look before claiming (no write lock taken)."""

    runnable: bool  #: a claim now would find a batch that may start tasks
    wake_at: float | None  #: as in Claim


def outlook(conn: Connection, now: float, only_batches: Iterable[int] | None = None) -> Outlook:
    """Would a claim find work now, and when may a batch waiting out its delay go on?"""
    found = runnable_batches(conn, now, only_batches)
    return Outlook(any(b.allowance(now) != 0 for b in found), wake_at(found, now, ()))


def start_tasks(tx: Tx, owner: str, task_ids: Sequence[int], paced: bool = False) -> set[int]:
    """Spend an attempt of each task about to be sent; returns those still held.

    ``paced``: some belong to batches with a ``delay``, which then counts from now."""
    return transitions.start(tx, owner, task_ids, paced=paced)


def unstart_tasks(tx: Tx, owner: str, starts: Mapping[int, float]) -> int:
    """Give back the attempts :func:`start_tasks` spent at ``starts[task_id]`` for requests
    that never went out (their callers were cancelled as the start was written); how many."""
    return transitions.unstart(tx, owner, starts)


def renew_leases(tx: Tx, owner: str, task_ids: Sequence[int], until: float) -> set[int]:
    """Extend ``owner``'s leases on ``task_ids``; returns the ids it still holds.

    A task missing from the answer was taken away (its batch cancelled, or the
    lease presumed dead and recovered): its runner must stop working on it.
    """
    return transitions.renew(tx, owner, task_ids, until)


def release_tasks(tx: Tx, owner: str, task_ids: Iterable[int]) -> int:
    """Give tasks back untried (shutdown, Ctrl-C): pending again, the attempt not counted."""
    return transitions.release(tx, owner, task_ids)


@dataclass(frozen=True)
class LeaseLook:
    """Who holds running tasks, and whether a lease lapsed: what a recovery would find."""

    owners: list[str]  #: the lease owners of running tasks
    lapsed: bool  #: some running task's lease expired before ``now``


_LEASE_LOOK = (
    select(tasks.c.lease_owner, func.min(tasks.c.lease_expires_at))
    .where(tasks.c.status == TaskStatus.RUNNING)
    .group_by(tasks.c.lease_owner)
)


def lease_look(conn: Connection, now: float) -> LeaseLook:
    """A read before :func:`recover_leases`: a runner writes the recovery only when a
    lease lapsed or an owner is found dead, not every few seconds for nothing."""
    rows = conn.execute(_LEASE_LOOK).all()
    lapsed = any(until is not None and until < now for _, until in rows)
    return LeaseLook([owner for owner, _ in rows if owner is not None], lapsed)


def recover_leases(tx: Tx, dead_owners: Sequence[str] = ()) -> int:
    """Put back tasks whose lease expired or whose runner is known dead; how many moved.

    A task whose last attempt had started fails instead (see ``transitions.recover``).
    """
    return transitions.recover(tx, dead_owners)
