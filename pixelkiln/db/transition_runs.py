"""The part of :mod:`.transitions` that keeps a regenerated task's runs apart.

A regenerate moves a task to its next run (``tasks.run`` + 1), with a new seed when
its seed was drawn at random (an asked-for seed is kept); the images of its
earlier runs stay current until the new run succeeds. Then they become history
(``images.superseded``: hidden from records, files kept), or, when the
regenerate asked to ``replace`` them, their rows are deleted here and their
files by the caller once the transaction commits. Only the ``transition*``
modules call this one, inside their moves (a regenerate; a success recorded).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import bindparam, select, update

from pixelkiln import params
from pixelkiln.db import returning
from pixelkiln.db import transition_sql as sql
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import tasks
from pixelkiln.models import ClaimedTask


class DroppedImage(NamedTuple):
    """An image row a move deleted; its files are the caller's to remove after commit."""

    id: int
    batch_id: int
    path: str


_SET_PARAMS = (
    update(tasks).where(tasks.c.id == bindparam("r_id")).values(params=bindparam("r_params"))
)


def reseed(tx: Tx, task_ids: Sequence[int], rng: random.Random | None = None) -> None:
    """Draw a new seed for those of ``task_ids`` whose seed was drawn (``seed_drawn``):
    the same seed would make the same picture again on most generators."""
    rng = rng or random.Random()
    query = select(tasks.c.id, tasks.c.params).where(tasks.c.id.in_(task_ids))
    rows = [
        {"r_id": row.id, "r_params": {**row.params, "seed": rng.randrange(0, params.MAX_SEED)}}
        for row in tx.conn.execute(query)
        if row.params.get("seed_drawn")
    ]
    if rows:
        tx.conn.execute(_SET_PARAMS, rows)


def mark_replacing(tx: Tx, task_ids: Sequence[int], replace: bool) -> None:
    """Whether the next successful run of ``task_ids`` deletes their earlier runs' images."""
    tx.conn.execute(update(tasks).where(tasks.c.id.in_(task_ids)).values(replace_runs=replace))


def supersede(tx: Tx, rerun: Sequence[ClaimedTask], dropped: list[DroppedImage]) -> Counter[int]:
    """Regenerated tasks succeeded: their earlier runs' images become history, or are deleted
    (``replace``). Returns, per batch, how many images stopped being current."""
    gone: Counter[int] = Counter()
    if not rerun:
        return gone
    ids = [t.id for t in rerun]
    marked = select(tasks.c.id).where(tasks.c.id.in_(ids), tasks.c.replace_runs.is_(True))
    doomed = sorted(tx.conn.execute(marked).scalars())
    kept = [t.id for t in rerun if t.id not in doomed]
    if kept:
        gone.update(returning.execute(tx.conn, sql.SUPERSEDE_IMAGES, {"h_ids": kept}).scalars())
    if not doomed:
        return gone
    for row in returning.execute(tx.conn, sql.DELETE_EARLIER, {"h_ids": doomed}):
        dropped.append(DroppedImage(row.id, row.batch_id, row.path))
        gone[row.batch_id] += 0 if row.superseded else 1
    mark_replacing(tx, doomed, False)  # replaced once: a later regenerate says again
    return gone
