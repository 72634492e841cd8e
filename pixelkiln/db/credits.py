"""Credits: an append-only ledger whose sum is a user's balance.

Charging happens in the transaction that creates a batch (so a batch nobody
paid for is never queued) and refunds in the transaction that fails or cancels
a task (so a crash between the two cannot lose or duplicate money). Each task
records what it cost in ``tasks.cost``; a refund pays that back and zeroes it,
which makes refunding the same task twice impossible. Refunds are made by the
moves that end a task without images, in :mod:`.transitions`.

Two requests racing for the last credits are serialised: on SQLite by the one
writer (``BEGIN IMMEDIATE``), on PostgreSQL by locking the user's row before
the balance is read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, false, func, insert, select, update

from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.tables import credit_ledger, tasks, users
from pixelkiln.exceptions import KilnError

CHUNK = 500  # ids per IN (...) list: far below every database's parameter limit
#: the most credits a balance may hold: SQL's SUM over a ledger stays far from 64-bit
#: overflow, which would break every balance read of that user for good
MAX_BALANCE = 10**15


class InsufficientCreditsError(KilnError):
    """The user's balance does not cover what the request costs; nothing was done."""

    def __init__(self, needed: int, balance: int, message: str | None = None) -> None:
        self.needed = needed
        self.balance = balance
        super().__init__(
            message or f"this batch costs {needed} credit(s); the balance is {balance}"
        )


class BalanceLimitError(KilnError):
    """A grant would lift a balance above MAX_BALANCE; nothing was done."""

    def __init__(self, amount: int, balance: int) -> None:
        self.amount = amount
        self.balance = balance
        super().__init__(
            f"cannot add {amount:,} credits: the balance is {balance:,} "
            f"and may not exceed {MAX_BALANCE:,}"
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger."""

    id: int
    delta: int  #: positive: grant or refund; negative: charge
    reason: str  #: grant, charge, refund
    batch_id: int | None
    note: str
    created_at: float


_BALANCE = select(func.coalesce(func.sum(credit_ledger.c.delta), 0)).where(
    credit_ledger.c.user_id == bindparam("b_user")
)


def balance(conn: Connection, user_id: int) -> int:
    """The user's credits: the sum of their ledger."""
    return int(conn.execute(_BALANCE, {"b_user": user_id}).scalar_one())


def _locked_balance(tx: Tx, user_id: int) -> int:
    """The balance, with the user's row locked until commit (PostgreSQL; SQLite is serial)."""
    lock = select(users.c.id).where(users.c.id == user_id).with_for_update()
    one_row(tx.conn, lock, f"no user {user_id}")
    return balance(tx.conn, user_id)


def record_entry(
    tx: Tx, user_id: int, delta: int, reason: str, batch_id: int | None, note: str
) -> None:
    """Append one row to the ledger (grant, charge or refund)."""
    tx.conn.execute(
        insert(credit_ledger),
        {
            "user_id": user_id,
            "delta": delta,
            "reason": reason,
            "batch_id": batch_id,
            "note": note,
            "created_at": tx.now,
        },
    )


def grant(tx: Tx, user_id: int, amount: int, note: str = "") -> int:
    """Add (or, negative, remove) credits; the balance stays within 0…MAX_BALANCE. New balance."""
    current = _locked_balance(tx, user_id)
    if current + amount < 0:
        raise InsufficientCreditsError(
            -amount, current, f"cannot take {-amount:,} credit(s): the balance is {current:,}"
        )
    if amount > 0 and current + amount > MAX_BALANCE:
        raise BalanceLimitError(amount, current)
    if amount:
        record_entry(tx, user_id, amount, "grant", None, note)
    return current + amount


def ensure_covered(needed: int, balance: int) -> None:
    """InsufficientCreditsError unless ``balance`` pays for ``needed``: the one rule that a
    charge applies and a dry run (:func:`pixelkiln.service.submission.plan`) foretells."""
    if needed > balance:
        raise InsufficientCreditsError(needed, balance)


def charge(tx: Tx, user_id: int, amount: int, batch_id: int, note: str = "") -> int:
    """Take ``amount`` for a batch or refuse with InsufficientCreditsError. New balance."""
    current = _locked_balance(tx, user_id)
    ensure_covered(amount, current)
    if amount:
        record_entry(tx, user_id, -amount, "charge", batch_id, note)
    return current - amount


def set_task_costs(tx: Tx, batch_id: int, costs: Sequence[int]) -> None:
    """Record what each task of a batch cost; ``costs[i]`` is for position i + 1."""
    by_cost: dict[int, list[int]] = defaultdict(list)
    for position, cost in enumerate(costs, start=1):
        by_cost[cost].append(position)
    if not by_cost:
        return
    # the usual batch has one price: one statement for it, then the exceptions
    common = max(by_cost, key=lambda c: len(by_cost[c]))
    if common:
        tx.conn.execute(update(tasks).where(tasks.c.batch_id == batch_id).values(cost=common))
    for cost, positions in by_cost.items():
        if cost == common:
            continue
        for chunk in chunks(positions):
            tx.conn.execute(
                update(tasks)
                .where(tasks.c.batch_id == batch_id, tasks.c.position.in_(chunk))
                .values(cost=cost)
            )


def set_costs(tx: Tx, costs: Mapping[int, int]) -> None:
    """Record what each task (by id) costs, grouping tasks of equal cost into one statement."""
    by_cost: dict[int, list[int]] = defaultdict(list)
    for task_id, cost in costs.items():
        by_cost[cost].append(task_id)
    for cost, ids in by_cost.items():
        for chunk in chunks(ids):
            tx.conn.execute(update(tasks).where(tasks.c.id.in_(chunk)).values(cost=cost))


def set_own_key(
    tx: Tx, batch_id: int, backends: Collection[str], task_ids: Sequence[int] | None = None
) -> None:
    """Mark the tasks on ``backends`` as running on their owner's own key, the others not.

    Every task of the batch, or only ``task_ids`` (a retry decides afresh).
    """
    value = tasks.c.backend.in_(sorted(backends)) if backends else false()
    marking = update(tasks).where(tasks.c.batch_id == batch_id).values(own_key=value)
    if task_ids is None:
        tx.conn.execute(marking)
        return
    for chunk in chunks(task_ids):
        tx.conn.execute(marking.where(tasks.c.id.in_(chunk)))


def ledger(
    conn: Connection, user_id: int, *, limit: int = 50, offset: int = 0
) -> list[LedgerEntry]:
    """A user's ledger, newest first."""
    rows = conn.execute(
        select(credit_ledger)
        .where(credit_ledger.c.user_id == user_id)
        .order_by(credit_ledger.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [LedgerEntry(r.id, r.delta, r.reason, r.batch_id, r.note, r.created_at) for r in rows]


def chunks(items: Sequence[int]) -> Iterable[list[int]]:
    """``items`` in lists of at most CHUNK, one ``IN (...)`` each."""
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])
