"""Leases on tasks: claim, start, renew, give back, recover from dead runners.

A runner holds each task it works on under a lease that it renews every few
seconds. A lease that lapses (the runner was killed) or whose owner is known
dead puts the task back in the queue; a task whose last attempt had started
fails instead, so a task that kills its runner cannot loop forever. The moves
themselves (rows, counters, refunds, events) are in :mod:`.transitions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, bindparam, select, update

from pixelkiln.db import transitions
from pixelkiln.db.batches import runnable_batch_ids
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import tasks
from pixelkiln.db.transition_sql import held
from pixelkiln.models import ClaimedTask, TaskStatus

__all__ = [
    "ClaimedTask",
    "claim_tasks",
    "recover_leases",
    "release_tasks",
    "renew_leases",
    "running_lease_owners",
    "start_tasks",
]


def claim_tasks(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    only_batches: Iterable[int] | None = None,
) -> list[ClaimedTask]:
    """Claim up to ``wants[backend]`` pending tasks per backend, by priority then age.

    No attempt is spent until :func:`start_tasks`; see ``transitions.claim``.
    """
    batch_ids = runnable_batch_ids(tx.conn, tx.now, only_batches)
    return transitions.claim(tx, owner, wants, lease_seconds, batch_ids)


def start_tasks(tx: Tx, owner: str, task_ids: Sequence[int]) -> set[int]:
    """Spend an attempt of each task about to be sent; returns those still held."""
    return transitions.start(tx, owner, task_ids)


def renew_leases(tx: Tx, owner: str, task_ids: Sequence[int], until: float) -> set[int]:
    """Extend ``owner``'s leases on ``task_ids``; returns the ids it still holds.

    A task missing from the answer was taken away (its batch cancelled, or the
    lease presumed dead and recovered): its runner must stop working on it.
    """
    if not task_ids:
        return set()
    params = {"r_ids": list(task_ids), "r_owner": owner, "r_until": until}
    return set(tx.conn.execute(_RENEW, params).scalars())


_RENEW = (
    update(tasks)
    .where(*held("r"))
    .values(lease_expires_at=bindparam("r_until"))
    .returning(tasks.c.id)
)


def release_tasks(tx: Tx, owner: str, task_ids: Iterable[int]) -> int:
    """Give tasks back untried (shutdown, Ctrl-C): pending again, the attempt not counted."""
    return transitions.release(tx, owner, task_ids)


def running_lease_owners(conn: Connection) -> list[str]:
    query = select(tasks.c.lease_owner).where(tasks.c.status == TaskStatus.RUNNING).distinct()
    return list(conn.execute(query).scalars())


def recover_leases(tx: Tx, dead_owners: Sequence[str] = ()) -> int:
    """Put back tasks whose lease expired or whose runner is known dead; how many moved.

    A task whose last attempt had started fails instead (see ``transitions.recover``).
    """
    return transitions.recover(tx, dead_owners)
