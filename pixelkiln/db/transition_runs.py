"""The part of :mod:`.transitions` that keeps a regenerated task's runs apart, and the notes
the transitions keep on a batch (``batches.extra``).

A regenerate moves a task to its next run (``tasks.run`` + 1); the images of its
earlier runs stay current until the new run succeeds. Then they become history
(``images.superseded``: hidden from records, files kept), or, when the
regenerate asked to ``replace`` them, their rows are deleted here and their
files by the caller once the transaction commits. Only :mod:`.transitions`
calls this module, inside its moves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, select

from pixelkiln.db import transition_sql as sql
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import batches, tasks
from pixelkiln.models import ClaimedTask

#: ``batches.extra`` keys the transitions keep: the tasks whose next run deletes the images
#: of their earlier runs (a regenerate with ``replace``), and the refund policy the batch
#: was last charged under (``[credits] refund_failed``; absent: refunded)
REPLACING, REFUND_FAILED = "_replacing", "_refund_failed"


class DroppedImage(NamedTuple):
    """An image row a move deleted; its files are the caller's to remove after commit."""

    id: int
    batch_id: int
    path: str


def extras(tx: Tx, batch_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Each batch's ``extra``, by id."""
    query = select(batches.c.id, batches.c.extra).where(batches.c.id.in_(set(batch_ids)))
    return {row.id: dict(row.extra or {}) for row in tx.conn.execute(query)}


def replacing_after(
    extra: dict[str, Any], task_ids: Sequence[int], replace: bool
) -> dict[str, Any]:
    """``extra`` once ``task_ids`` were regenerated: marked to replace their history, or not."""
    marked = set(extra.get(REPLACING, [])) - set(task_ids)
    if replace:
        marked |= set(task_ids)
    return {**extra, REPLACING: sorted(marked)}


def supersede(tx: Tx, rerun: Sequence[ClaimedTask], dropped: list[DroppedImage]) -> Counter[int]:
    """Regenerated tasks succeeded: their earlier runs' images become history, or are deleted
    (``replace``). Returns, per batch, how many images stopped being current."""
    gone: Counter[int] = Counter()
    if not rerun:
        return gone
    notes = extras(tx, (t.batch_id for t in rerun))
    doomed = sorted(t.id for t in rerun if t.id in notes[t.batch_id].get(REPLACING, ()))
    kept = [t.id for t in rerun if t.id not in doomed]
    if kept:
        gone.update(tx.conn.execute(sql.SUPERSEDE_IMAGES, {"h_ids": kept}).scalars())
    if not doomed:
        return gone
    for row in tx.conn.execute(sql.DELETE_EARLIER, {"h_ids": doomed}):
        dropped.append(DroppedImage(row.id, row.batch_id, row.path))
        gone[row.batch_id] += 0 if row.superseded else 1
    for batch_id, extra in notes.items():  # replaced once: a later regenerate says again
        marked = extra.get(REPLACING, [])
        if any(i in doomed for i in marked):
            left = [i for i in marked if i not in doomed]
            tx.conn.execute(sql.set_batch(batch_id, extra={**extra, REPLACING: left}))
    return gone


def charged_under(tx: Tx, batch_id: int, refund_failed: bool) -> None:
    """Note the refund policy a batch was (last) charged under."""
    extra = extras(tx, [batch_id])[batch_id]
    if extra.get(REFUND_FAILED, True) != refund_failed:
        tx.conn.execute(sql.set_batch(batch_id, extra={**extra, REFUND_FAILED: refund_failed}))


def keeping_failed(tx: Tx, condition: ColumnElement[bool]) -> list[int]:
    """Batches of the charged tasks matching ``condition`` that keep a failed task's charge."""
    charged = select(tasks.c.batch_id).where(sql.owed(condition))
    query = select(batches.c.id, batches.c.extra).where(batches.c.id.in_(charged))
    return [r.id for r in tx.conn.execute(query) if (r.extra or {}).get(REFUND_FAILED) is False]
