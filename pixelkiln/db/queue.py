"""The queue's queries: unfinished batches in the order the scheduler claims them, and
the places (priority, rank) batches hold in it.

A batch's place is the key :data:`~pixelkiln.db.batches.CLAIM_ORDER` sorts by:
``priority`` (higher first), then ``coalesce(queue_rank, id)`` (lower first), then
``id``. Which batch takes which place when a user reorders is the rule of
:mod:`pixelkiln.service.queue`; here are only the reads and writes it needs, the
write's rows locked first so two reorders on PostgreSQL cannot interleave.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, func, select, update

from pixelkiln.db.batches import CLAIM_ORDER, UNFINISHED, _batch
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import batches
from pixelkiln.models import Batch, BatchStatus

_UNFINISHED = [str(s) for s in UNFINISHED]


@dataclass(frozen=True, order=True)
class Place:
    """Where a batch stands in the claim order; places sort as the scheduler claims them.

    >>> sorted([Place(0, 7.0), Place(5, 9.0), Place(0, 3.0)])[0]
    Place(neg_priority=-5, rank=9.0)
    """

    neg_priority: int  #: minus the batch's priority (higher priority claims first)
    rank: float  #: ``coalesce(queue_rank, id)``: lower claims first

    @property
    def priority(self) -> int:
        return -self.neg_priority


@dataclass(frozen=True)
class Placed:
    """A batch as a reorder sees it: whose it is, whether it may move, where it stands."""

    id: int
    owner_id: int | None
    status: BatchStatus
    place: Place


def queued_batches(
    conn: Connection, owner_id: int | None, *, limit: int = 500, offset: int = 0
) -> tuple[list[Batch], int]:
    """Unfinished batches (queued, running, paused) in claim order, one owner's or (None)
    everyone's; and how many there are in all."""
    query = select(batches).where(batches.c.status.in_(_UNFINISHED))
    counted = select(func.count()).select_from(batches).where(batches.c.status.in_(_UNFINISHED))
    if owner_id is not None:
        query = query.where(batches.c.owner_id == owner_id)
        counted = counted.where(batches.c.owner_id == owner_id)
    page = query.order_by(*CLAIM_ORDER).limit(limit).offset(offset)
    found = [_batch(row) for row in conn.execute(page)]
    return found, int(conn.execute(counted).scalar_one())


_RANK = func.coalesce(batches.c.queue_rank, batches.c.id)
_COLUMNS = (
    batches.c.id,
    batches.c.owner_id,
    batches.c.status,
    batches.c.priority,
    _RANK.label("place_rank"),
)


def _locked(tx: Tx, query: Select[Any]) -> list[Placed]:
    """The rows of ``query``, locked (PostgreSQL, MySQL) for the rest of the transaction, in
    ascending ids (two reorders that share batches lock them in the same order and cannot
    deadlock each other); SQLite's one writer already keeps other writes out."""
    query = query.order_by(batches.c.id)
    if tx.dialect != "sqlite":
        query = query.with_for_update()
    return [_placed(row) for row in tx.conn.execute(query)]


def lock_places(tx: Tx, batch_ids: Iterable[int]) -> list[Placed]:
    """The batches ``batch_ids`` that exist, anyone's, finished or not (locked)."""
    return _locked(tx, select(*_COLUMNS).where(batches.c.id.in_(list(batch_ids))))


def lock_queue(tx: Tx, owner_id: int | None) -> list[Placed]:
    """One owner's (None: everyone's) unfinished batches (locked), in claim order."""
    query = select(*_COLUMNS).where(batches.c.status.in_(_UNFINISHED))
    if owner_id is not None:
        query = query.where(batches.c.owner_id == owner_id)
    return sorted(_locked(tx, query), key=lambda p: (p.place, p.id))


def _placed(row: Row[Any]) -> Placed:
    place = Place(-int(row.priority), float(row.place_rank))
    return Placed(int(row.id), row.owner_id, BatchStatus(row.status), place)


_MOVE = (
    update(batches)
    .where(batches.c.id == bindparam("m_id"))
    .values(priority=bindparam("m_priority"), queue_rank=bindparam("m_rank"))
)


def move_batches(tx: Tx, places: Mapping[int, Place]) -> None:
    """Give each batch its new place (one statement, a row per batch)."""
    if not places:
        return
    rows = [
        {"m_id": batch_id, "m_priority": place.priority, "m_rank": place.rank}
        for batch_id, place in places.items()
    ]
    tx.conn.execute(_MOVE, rows)
