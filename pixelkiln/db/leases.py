"""Leases on tasks: claim (one statement), renew, give back, recover from dead runners.

A runner holds each task it works on under a lease that it renews every few
seconds. A lease that lapses (the runner was killed) or whose owner is known
dead puts the task back in the queue; a task on its last attempt fails
instead, so a task that kills its runner cannot loop forever.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from pixelkiln.db.batches import finish_if_done, mark_started, refresh_counts, runnable_batch_ids
from pixelkiln.db.credits import refund_tasks
from pixelkiln.db.database import Tx
from pixelkiln.db.events import append_events
from pixelkiln.db.tables import batches, tasks
from pixelkiln.models import EventType, TaskStatus

RUNNING = str(TaskStatus.RUNNING)


@dataclass(frozen=True)
class ClaimedTask:
    """A task a runner now holds a lease on: what it needs to run it."""

    id: int
    batch_id: int
    position: int
    key: str
    backend: str
    prompt: str
    negative_prompt: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    attempts: int  #: including this one
    max_attempts: int
    own_key: bool = False  #: runs on its owner's own provider key (see engine.credentials)


_CLAIM_COLUMNS = (
    tasks.c.id,
    tasks.c.batch_id,
    tasks.c.position,
    tasks.c.key,
    tasks.c.backend,
    tasks.c.prompt,
    tasks.c.negative_prompt,
    tasks.c.params,
    tasks.c.inputs,
    tasks.c.attempts,
    tasks.c.max_attempts,
    tasks.c.own_key,
)


def claim_tasks(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    only_batches: Iterable[int] | None = None,
) -> list[ClaimedTask]:
    """Claim up to ``wants[backend]`` pending tasks per backend, by priority then age.

    One UPDATE … RETURNING per (backend, batch) under the write lock; on
    PostgreSQL the inner select is ``FOR UPDATE SKIP LOCKED`` so workers on
    several machines never claim the same task.
    """
    claimed: list[ClaimedTask] = []
    batch_ids = runnable_batch_ids(tx.conn, tx.now, only_batches)
    statement = _CLAIM_PG if tx.dialect == "postgresql" else _CLAIM
    for backend, want in wants.items():
        for batch_id in batch_ids:
            if want <= 0:
                break
            rows = tx.conn.execute(
                statement,
                {
                    "c_batch": batch_id,
                    "c_backend": backend,
                    "c_now": tx.now,
                    "c_limit": want,
                    "c_owner": owner,
                    "c_expires": tx.now + lease_seconds,
                },
            ).all()
            want -= len(rows)
            claimed.extend(ClaimedTask(*row) for row in rows)
    shift_counts(tx, Counter(t.batch_id for t in claimed), "n_pending", "n_running")
    if claimed:
        mark_started(tx, {t.batch_id for t in claimed})
    claimed.sort(key=lambda t: (batch_ids.index(t.batch_id), t.position))
    return claimed


def _claim_statement(skip_locked: bool) -> Any:
    """Built once: constructing SQLAlchemy statements per call costs more than running them."""
    pick = (
        select(tasks.c.id)
        .where(
            tasks.c.batch_id == bindparam("c_batch"),
            tasks.c.status == str(TaskStatus.PENDING),
            tasks.c.backend == bindparam("c_backend"),
            tasks.c.next_attempt_at <= bindparam("c_now"),
        )
        .order_by(tasks.c.position)
        .limit(bindparam("c_limit"))
    )
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(tasks)
        .where(tasks.c.id.in_(pick.scalar_subquery()))
        .values(
            status=str(TaskStatus.RUNNING),
            lease_owner=bindparam("c_owner"),
            lease_expires_at=bindparam("c_expires"),
            attempts=tasks.c.attempts + 1,
            started_at=bindparam("c_now"),
        )
        .returning(*_CLAIM_COLUMNS)
    )


_CLAIM = _claim_statement(skip_locked=False)
_CLAIM_PG = _claim_statement(skip_locked=True)


@functools.cache
def _shift_statement(source: str, target: str) -> Any:
    return (
        update(batches)
        .where(batches.c.id == bindparam("s_batch"))
        .values(
            {
                source: batches.c[source] - bindparam("s_k"),
                target: batches.c[target] + bindparam("s_k"),
            }
        )
    )


def shift_counts(tx: Tx, per_batch: Counter[int], source: str, target: str) -> None:
    for batch_id, k in per_batch.items():
        tx.conn.execute(_shift_statement(source, target), {"s_batch": batch_id, "s_k": k})


_HELD = select(tasks.c.id).where(
    tasks.c.id.in_(bindparam("h_ids", expanding=True)),
    tasks.c.status == RUNNING,
    tasks.c.lease_owner == bindparam("h_owner"),
)


def held_by(tx: Tx, owner: str, task_ids: Iterable[int]) -> set[int]:
    """Which of ``task_ids`` are still running under ``owner``'s lease."""
    return set(tx.conn.execute(_HELD, {"h_ids": list(task_ids), "h_owner": owner}).scalars())


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
    .where(
        tasks.c.id.in_(bindparam("r_ids", expanding=True)),
        tasks.c.lease_owner == bindparam("r_owner"),
        tasks.c.status == RUNNING,
    )
    .values(lease_expires_at=bindparam("r_until"))
    .returning(tasks.c.id)
)


def release_tasks(tx: Tx, owner: str, task_ids: Iterable[int]) -> int:
    """Give tasks back untried (shutdown, Ctrl-C): pending again, the attempt not counted."""
    rows = (
        tx.conn.execute(
            update(tasks)
            .where(
                tasks.c.id.in_(list(task_ids)),
                tasks.c.status == RUNNING,
                tasks.c.lease_owner == owner,
            )
            .values(
                status=TaskStatus.PENDING,
                lease_owner=None,
                lease_expires_at=None,
                attempts=func.max(tasks.c.attempts - 1, 0)
                if tx.dialect == "sqlite"
                else func.greatest(tasks.c.attempts - 1, 0),
            )
            .returning(tasks.c.batch_id)
        )
        .scalars()
        .all()
    )
    shift_counts(tx, Counter(rows), "n_running", "n_pending")
    return len(rows)


def running_lease_owners(conn: Connection) -> list[str]:
    return list(
        conn.execute(
            select(tasks.c.lease_owner).where(tasks.c.status == RUNNING).distinct()
        ).scalars()
    )


def recover_leases(tx: Tx, dead_owners: Sequence[str] = ()) -> int:
    """Put back tasks whose lease expired or whose runner is known dead.

    A task that was on its last attempt fails instead, so a task that kills its
    runner cannot loop forever. Returns how many tasks were recovered.
    """
    expired = tasks.c.lease_expires_at < tx.now
    if dead_owners:
        expired = expired | tasks.c.lease_owner.in_(list(dead_owners))
    rows = tx.conn.execute(
        update(tasks)
        .where(tasks.c.status == RUNNING, expired)
        .values(
            status=TaskStatus.PENDING,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=tx.now,
            last_error="the runner stopped (lease expired); task put back in the queue",
        )
        .returning(
            tasks.c.id, tasks.c.batch_id, tasks.c.key, tasks.c.attempts, tasks.c.max_attempts
        )
    ).all()
    if not rows:
        return 0
    exhausted = [r.id for r in rows if r.attempts >= r.max_attempts]
    if exhausted:
        tx.conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(exhausted))
            .values(
                status=TaskStatus.FAILED,
                finished_at=tx.now,
                last_error="the runner stopped during the last attempt (lease expired)",
            )
        )
        refund_tasks(tx, exhausted)
    refresh_counts(tx, {r.batch_id for r in rows})
    append_events(
        tx,
        [
            (
                r.batch_id,
                r.id,
                EventType.WARNING,
                {
                    "message": "runner stopped; task "
                    + (
                        "failed (no attempts left)"
                        if r.id in exhausted
                        else "put back in the queue"
                    ),
                    "item_key": r.key,
                },
            )
            for r in rows
        ],
    )
    for batch_id in {r.batch_id for r in rows}:
        finish_if_done(tx, batch_id)
    return len(rows)
