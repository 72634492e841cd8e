"""Refunds of :mod:`.transitions`: what a task that ends without images gave back, and the
refund policy a batch was charged under (``batches.refund_failed``).

A task records what it cost when it is charged (the service layer's pricing);
a move that ends it failed for good or cancelled refunds that cost to the
batch's owner here and zeroes it, so no task is refunded twice (a retry charges
it again and records the new cost). A batch charged under ``[credits]
refund_failed = false`` keeps the charge of its failed tasks; cancelled ones
are always refunded. Only the ``transition*`` modules call this one, inside
their moves.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, select, update

from pixelkiln.db import transition_sql as sql
from pixelkiln.db.credits import chunks, record_entry
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import batches, tasks


def refund_failed(tx: Tx, task_ids: Sequence[int]) -> int:
    """Pay back what tasks that failed for good cost their batch's owner, once; returns credits
    refunded. A batch charged under ``[credits] refund_failed = false`` keeps the charge."""
    total = 0
    for chunk in chunks(task_ids):
        condition = tasks.c.id.in_(chunk)
        keep = keeping_failed(tx, condition)
        kept = condition & tasks.c.batch_id.not_in(keep) if keep else condition
        total += refund_where(tx, kept)
    return total


def refund_where(tx: Tx, condition: ColumnElement[bool]) -> int:
    """Refund the tasks matching ``condition`` that still hold a cost, and zero it.

    Each task records what it cost; zeroing it makes refunding a task twice
    impossible (a retry charges it again and records the new cost).
    """
    rows = tx.conn.execute(sql.refunds_due(condition)).all()
    if not rows:
        return 0
    tx.conn.execute(sql.zero_costs(condition))
    total = 0
    for row in rows:
        if row.owner_id is not None:
            note = "failed or cancelled tasks"
            record_entry(tx, row.owner_id, int(row.total), "refund", row.batch_id, note)
            total += int(row.total)
    return total


def charged_under(tx: Tx, batch_id: int, refund_failed: bool) -> None:
    """Remember the refund policy a batch was (last) charged under: with ``refund_failed``
    False, its tasks that fail for good keep their charge (cancelled ones are refunded)."""
    tx.conn.execute(
        update(batches).where(batches.c.id == batch_id).values(refund_failed=refund_failed)
    )


def keeping_failed(tx: Tx, condition: ColumnElement[bool]) -> list[int]:
    """Batches of the charged tasks matching ``condition`` that keep a failed task's charge."""
    charged = select(tasks.c.batch_id).where(sql.owed(condition))
    query = select(batches.c.id).where(
        batches.c.id.in_(charged), batches.c.refund_failed.is_(False)
    )
    return list(tx.conn.execute(query).scalars())
