"""Tasks moved to a fallback backend: the ``tasks.backend`` column follows the one running them.

The scheduler decides where a task goes (:mod:`pixelkiln.engine.routing`);
this module writes it, in the transaction that gives the task back to the
queue, so the task's next claim (and the image it makes) names the backend
that actually ran it. Each move is also an ``info`` event carrying
``fallback_from``, which is how reports count tasks that fell back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, false, select, update

from pixelkiln.db import returning
from pixelkiln.db.batches import runnable_batch_ids
from pixelkiln.db.database import Tx
from pixelkiln.db.events import PendingEvent, append_events, fell_back
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.db.tables import events, tasks
from pixelkiln.models import EventType, TaskStatus

#: the key of a move's info event that names the backend the task left
FALLBACK_FROM = "fallback_from"

_MOVE = (
    update(tasks)
    .where(
        tasks.c.id.in_(bindparam("m_ids", expanding=True)),
        tasks.c.status == str(TaskStatus.PENDING),
        tasks.c.backend == bindparam("m_from"),
    )
    .values(backend=bindparam("m_to"))
    .returning(tasks.c.id)
)


def next_in_chain(chain: Sequence[str], current: str, usable: Callable[[str], bool]) -> str | None:
    """The first backend after ``current`` in ``chain`` (from its start when ``current`` is
    not in it) that is ``usable``; never ``current`` itself."""
    rest = chain[chain.index(current) + 1 :] if current in chain else chain
    return next((b for b in rest if b != current and usable(b)), None)


def move_tasks(tx: Tx, moves: Sequence[tuple[ClaimedTask, str, str]]) -> set[int]:
    """Point pending tasks at the backend that takes them over; returns the ids moved.

    ``moves`` holds (task as claimed, target backend, why its backend could not
    take it). One UPDATE per (from, to) pair; a task no longer pending on the
    backend it was claimed for (cancelled meanwhile) is left alone.
    """
    groups: dict[tuple[str, str], list[ClaimedTask]] = defaultdict(list)
    for task, target, _ in moves:
        groups[(task.backend, target)].append(task)
    moved: set[int] = set()
    for (source, target), group in groups.items():
        params = {"m_ids": [t.id for t in group], "m_from": source, "m_to": target}
        moved.update(returning.execute(tx.conn, _MOVE, params).scalars())
    pending: list[PendingEvent] = [
        fell_back(t.batch_id, t.id, item_key=t.key, source=t.backend, target=target, why=why)
        for t, target, why in moves
        if t.id in moved
    ]
    append_events(tx, pending)
    return moved


#: the task's own chain as text (SQL NULL when it has none)
_OWN_CHAIN = tasks.c.params["backends"].as_string()


def move_waiting(
    tx: Tx,
    source: str,
    *,
    configured: str | None,
    up: Collection[str],
    why: str,
    only_batches: Collection[int] | None = None,
    limit: int = 1000,
) -> int:
    """Move pending tasks of the unavailable backend ``source`` to their fallback; returns how many.

    Tasks without a chain of their own go to ``configured`` (the first backend
    of ``source``'s fallback chain that is up; None: they stay), all in one
    UPDATE. Tasks with their own chain (``params["backends"]``) go to the first
    backend after ``source`` in it that is in ``up``, one UPDATE per target,
    at most ``limit`` of them per call. Only tasks of batches that may run now
    (and of ``only_batches``) move, and never one on its owner's own provider key.
    """
    batch_ids = runnable_batch_ids(tx.conn, tx.now, only_batches)
    if not batch_ids:
        return 0
    waiting = (
        tasks.c.backend == source,
        tasks.c.status == str(TaskStatus.PENDING),
        tasks.c.batch_id.in_(batch_ids),
        tasks.c.own_key.is_(false()),  # elsewhere it would run on the system's key, unpaid
    )
    moved: list[tuple[Any, str]] = []
    if configured is not None:
        rows = returning.execute(
            tx.conn,
            update(tasks)
            .where(*waiting, _OWN_CHAIN.is_(None))
            .values(backend=configured)
            .returning(tasks.c.id, tasks.c.batch_id, tasks.c.key),
        ).all()
        moved += [(row, configured) for row in rows]
    own = tx.conn.execute(
        select(tasks.c.id, tasks.c.batch_id, tasks.c.key, tasks.c.params)
        .where(*waiting, _OWN_CHAIN.is_not(None))
        .limit(limit)
    ).all()
    targets: dict[str, list[Any]] = defaultdict(list)
    for row in own:
        chain = [str(b) for b in row.params.get("backends") or ()]
        target = next_in_chain(chain, source, up.__contains__)
        if target is not None:
            targets[target].append(row)
    for target, rows in targets.items():
        ids = [row.id for row in rows]
        tx.conn.execute(update(tasks).where(tasks.c.id.in_(ids)).values(backend=target))
        moved += [(row, target) for row in rows]
    append_events(
        tx,
        [
            fell_back(row.batch_id, row.id, item_key=row.key, source=source, target=t, why=why)
            for row, t in moved
        ],
    )
    return len(moved)


def tasks_fallen_back(conn: Connection, batch_id: int) -> int:
    """How many tasks of a batch were moved to a fallback backend at least once."""
    rows = conn.execute(
        select(events.c.task_id, events.c.data).where(
            events.c.batch_id == batch_id,
            events.c.type == str(EventType.INFO),
            events.c.task_id.is_not(None),
        )
    )
    return len({row.task_id for row in rows if FALLBACK_FROM in (row.data or {})})
