"""The claim of :mod:`.transitions` (pending → running under a lease), and the batches' own
limits it keeps (:mod:`.pacing`: ``max_workers``, ``delay``).

A claim walks the backends a runner wants work for, and for each shares the
tasks wanted out among the batches by fair share (:mod:`.fair`: priority, then
users and their batches in turn); a batch with limits of its own gets no more
than its :class:`_Room` allows, and what it cannot take goes to the others. The counters
and the batches' first start are the shared bookkeeping of every move
(:mod:`.transition_counts`). Only :mod:`.transitions` calls this module; callers
use ``transitions.claim``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixelkiln.db import driver, returning
from pixelkiln.db import transition_sql as sql
from pixelkiln.db.database import Tx
from pixelkiln.db.pacing import BatchLimits
from pixelkiln.db.transition_counts import Counts, start_batches
from pixelkiln.models import ClaimedTask, TaskStatus

if TYPE_CHECKING:  # db.fair reads db.batches, which imports this family
    from pixelkiln.db.fair import Turns


def claim(
    tx: Tx,
    owner: str,
    wants: dict[str, int],
    lease_seconds: float,
    turns: Turns,
    limits: Mapping[int, BatchLimits] | None = None,
    free: Mapping[str, int] | None = None,
) -> list[ClaimedTask]:
    """pending → running under ``owner``'s lease, spending no attempt yet.

    Up to ``wants[backend]`` tasks per backend from the batches of ``turns``, shared
    out by its rule (db.fair: priority, then users and their batches in turn), each
    batch's in position order, and returned in ``turns.order``. One UPDATE …
    RETURNING per (backend, batch) given any; on PostgreSQL the inner select is ``FOR
    UPDATE SKIP LOCKED``, so workers on several machines never claim the same task.
    MySQL picks the tasks with ``SKIP LOCKED`` first, then moves them (``sql.CLAIM_PICK``).

    A batch in ``limits`` gets no more than its own limits allow (db.pacing);
    one with a ``delay`` only from a backend with a slot ``free`` now (default:
    its want), and its ``last_start_at`` becomes now. Its share left over goes
    to the batches after it, so a capped batch never holds the others back.
    """
    room = _Room(_allowances(tx, limits or {}), {b.id for b in (limits or {}).values() if b.paced})
    lease = {"c_owner": owner, "c_now": tx.now, "c_expires": tx.now + lease_seconds}
    claimed: list[ClaimedTask] = []
    for backend, want in wants.items():
        spare = want if free is None else free.get(backend, 0)
        claimed += _claim_backend(tx, lease, backend, want, spare, turns, room)
    if not claimed:
        return []
    return _claimed(tx, claimed, turns.order, room.paced)


@dataclass
class _Room:
    """What batches with limits of their own may still claim, spent as a claim goes."""

    allow: dict[int, int]  #: batch id → tasks it may still claim (limited batches only)
    paced: set[int]  #: batches with a delay: claimed only into a slot free now

    def limit(self, batch_id: int, want: int, spare: int) -> int:
        own = self.allow.get(batch_id)  # None: no limit of its own
        if own is None:
            return want
        return min(want, own, spare) if batch_id in self.paced else min(want, own)

    def spend(self, batch_id: int, n: int) -> int:
        """Count ``n`` claimed tasks of the batch; returns the free slots they took."""
        if batch_id in self.allow:
            self.allow[batch_id] -= n
        return n if batch_id in self.paced else 0


def _claim_backend(
    tx: Tx,
    lease: dict[str, Any],
    backend: str,
    want: int,
    spare: int,
    turns: Turns,
    room: _Room,
) -> list[ClaimedTask]:
    """One backend's share of a claim, in rounds: ``turns`` shares out what is wanted,
    each batch given any is asked for that many, and one that yields fewer (nothing
    more for this backend now) drops out while the shortfall is shared out again."""
    claimed: list[ClaimedTask] = []
    drained: set[int] = set()
    while want > 0:
        caps = {b: room.limit(b, want, spare) for b in turns.order if b not in drained}
        plan = turns.plan(want, caps, room.paced, spare)
        if not plan:
            break
        for batch_id, limit in plan.items():
            params = {"c_batch": batch_id, "c_backend": backend, "c_limit": limit, **lease}
            rows = _claim_rows(tx, params)
            if len(rows) < limit:
                drained.add(batch_id)
            turns.took(batch_id, len(rows))
            want -= len(rows)
            spare -= room.spend(batch_id, len(rows))
            claimed.extend(ClaimedTask(*row) for row in rows)
    return claimed


def _claim_rows(tx: Tx, params: dict[str, Any]) -> Sequence[Any]:
    """One (backend, batch) claim's rows: one statement, or two on MySQL."""
    if tx.dialect == "mysql":
        picked = list(tx.conn.execute(sql.CLAIM_PICK, params).scalars())
        if not picked:
            return []
        return returning.execute(tx.conn, sql.CLAIM_PICKED, {**params, "c_ids": picked}).all()
    if tx.dialect == "postgresql":  # on every claim's path: through the driver (db.driver)
        return driver.core_rows(tx.conn, sql.CLAIM_PG, params)
    return tx.conn.execute(sql.CLAIM, params).all()


def _allowances(tx: Tx, limits: Mapping[int, BatchLimits]) -> dict[int, int]:
    """What each limited batch may still claim; read again under a row lock (PostgreSQL,
    MySQL)."""
    if not limits:
        return {}
    current: Iterable[BatchLimits] = limits.values()
    if tx.dialect != "sqlite":
        rows = tx.conn.execute(sql.BATCH_LIMITS_PG, {"l_ids": list(limits)})
        current = [BatchLimits(*row) for row in rows]
    allow = {b.id: b.allowance(tx.now) for b in current}
    return {batch_id: n for batch_id, n in allow.items() if n is not None}


def _claimed(
    tx: Tx, claimed: list[ClaimedTask], batch_ids: Sequence[int], paced: set[int]
) -> list[ClaimedTask]:
    """Counters, batches' first start and paced starts of a claim; the tasks in order."""
    counts = Counts()
    counts.moved((t.batch_id for t in claimed), TaskStatus.PENDING, TaskStatus.RUNNING)
    start_batches(tx, counts.apply(tx))
    started = paced.intersection(t.batch_id for t in claimed)
    if started:
        tx.conn.execute(sql.PACED_START, {"p_ids": sorted(started), "p_now": tx.now})
    order = {batch_id: i for i, batch_id in enumerate(batch_ids)}
    claimed.sort(key=lambda t: (order[t.batch_id], t.position))
    return claimed
