"""The queue: a user's unfinished batches in the order the scheduler claims them, and
the one rule for reordering it.

The scheduler claims by priority (higher first), then ``coalesce(queue_rank, id)``
(``db.batches.CLAIM_ORDER``), so every unfinished batch holds a *place*
(``db.queue.Place``). A reorder **permutes the listed batches among the places they
already hold**: the first listed takes the best of those places, the second the next,
and so on, priority and rank together. A user never jumps ahead of anyone else's
batches nor falls behind them: the places of other users' batches are untouched, and
so are those of the caller's batches left out of the list. Listing every one of your
unfinished batches sets their whole order; listing two swaps them.

Who may move what: your own batches (``Caller.mine``; without auth, every batch).
An admin moves only their own unless they ask for every user's (``all_users``), when
the listed batches of anyone permute among their places in the same way.

Places stay distinct: a new batch ranks by its id, larger than every rank in use
(ids are never reused), and a reorder only permutes ranks, so no two unfinished
batches ever share a place and the id tie-break of the claim order never decides.

>>> async with Kiln(settings) as kiln:                                   # doctest: +SKIP
...     await reorder(kiln.service, LOCAL, [12, 9, 10])      # 12 first of the three
...     await move(kiln.service, LOCAL, 10, top=True)        # 10 first of all
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pixelkiln.db.database import Tx
from pixelkiln.db.queue import Place, Placed, lock_places, lock_queue, move_batches, queued_batches
from pixelkiln.exceptions import InvalidStateError, InvalidValueError, NotFoundError
from pixelkiln.models import Batch
from pixelkiln.service.context import Caller, ServiceContext, require_admin

#: the most batches one reorder may list (the API's body limit says the same)
MAX_REORDER = 10_000


@dataclass(frozen=True)
class QueuePage:
    """A page of the queue: batches in claim order, numbered from ``offset + 1``."""

    batches: list[Batch]
    total: int  #: unfinished batches in the queue asked for (all pages)
    offset: int

    def numbered(self) -> list[tuple[int, Batch]]:
        """(position, batch) pairs; positions count from 1 across pages."""
        return [(self.offset + i + 1, b) for i, b in enumerate(self.batches)]


def owner_filter(caller: Caller, all_users: bool) -> int | None:
    """Whose queue: the caller's own, or (admins, ``all_users``) everyone's."""
    if all_users:
        require_admin(caller, "see or reorder every user's queue")
        return None
    return caller.mine


async def queue(
    ctx: ServiceContext,
    caller: Caller,
    *,
    all_users: bool = False,
    limit: int = 500,
    offset: int = 0,
) -> QueuePage:
    """The caller's (or everyone's) queued, running and paused batches, in claim order."""
    owner = owner_filter(caller, all_users)
    found, total = await ctx.read(queued_batches, owner, limit=limit, offset=offset)
    return QueuePage(found, total, offset)


async def reorder(
    ctx: ServiceContext, caller: Caller, batch_ids: Sequence[int], *, all_users: bool = False
) -> int:
    """Give the listed batches the places they hold, in the order listed; one transaction.

    NotFoundError names ids that are no batch of the caller's (or no batch at all);
    InvalidValueError a batch listed twice or too long a list; nothing moves then. A
    listed batch that has finished meanwhile is left out (the others still move).
    Returns how many batches moved.
    """
    _check_listed(batch_ids)
    owner = owner_filter(caller, all_users)
    return await ctx.write(_reorder, list(batch_ids), owner)


async def move(
    ctx: ServiceContext, caller: Caller, batch_id: int, *, top: bool, all_users: bool = False
) -> int:
    """One batch to the top (or bottom) of the caller's (or everyone's) queue; the batches
    it passes each move one place towards where it was. Returns how many moved."""
    owner = owner_filter(caller, all_users)
    return await ctx.write(_move, batch_id, owner, top)


def permuted(order: Sequence[Placed]) -> dict[int, Place]:
    """The rule: the i-th batch of ``order`` takes the i-th best of their places.

    Only the batches whose place changes are in the answer.

    >>> from pixelkiln.models import BatchStatus as S
    >>> a, b = Placed(1, 7, S.QUEUED, Place(0, 1.0)), Placed(3, 7, S.QUEUED, Place(0, 3.0))
    >>> permuted([b, a])
    {3: Place(neg_priority=0, rank=1.0), 1: Place(neg_priority=0, rank=3.0)}
    """
    places = sorted(p.place for p in order)
    return {b.id: place for b, place in zip(order, places, strict=True) if b.place != place}


def _check_listed(batch_ids: Sequence[int]) -> None:
    if len(batch_ids) > MAX_REORDER:
        raise InvalidValueError(f"at most {MAX_REORDER:,} batches per reorder", field="batch_ids")
    twice = [str(i) for i, n in Counter(batch_ids).items() if n > 1]
    if twice:
        raise InvalidValueError(
            f"batch {', '.join(twice)} is listed more than once: "
            "list each batch once, in its new place",
            field="batch_ids",
        )


def _queued(
    tx: Tx, batch_ids: list[int], owner: int | None, *, skip_finished: bool = False
) -> dict[int, Placed]:
    """The listed batches, locked; NotFoundError naming those that are nobody's (or not
    the owner's). A finished one has no place any more: left out with ``skip_finished``
    (a page's order was read a moment ago, and running batches end all the time), else
    InvalidStateError naming it."""
    found = {p.id: p for p in lock_places(tx, batch_ids) if owner is None or p.owner_id == owner}
    missing = [str(i) for i in batch_ids if i not in found]
    if missing:
        whose = "" if owner is None else " of yours"
        raise NotFoundError(f"no batch{whose} with id {', '.join(missing)}")
    ended = [i for i in batch_ids if found[i].status.finished]
    if ended and not skip_finished:
        named = ", ".join(f"{i} ({found[i].status})" for i in ended)
        raise InvalidStateError(
            f"batch {named} has finished: only queued, running or paused "
            "batches have a place in the queue"
        )
    return {i: p for i, p in found.items() if i not in ended}


def _reorder(tx: Tx, batch_ids: list[int], owner: int | None) -> int:
    """Lock the listed batches, check them, and move the unfinished ones among their
    places (one that has just finished is left out, not refused)."""
    found = _queued(tx, batch_ids, owner, skip_finished=True)
    moves = permuted([found[i] for i in batch_ids if i in found])
    move_batches(tx, moves)
    return len(moves)


def _move(tx: Tx, batch_id: int, owner: int | None, top: bool) -> int:
    """The whole queue, locked, with one batch taken out and put first or last."""
    line = lock_queue(tx, owner)  # every lock first, in id order, like a reorder's
    chosen = [p for p in line if p.id == batch_id]
    if not chosen:
        _queued(tx, [batch_id], owner)  # says why: not found, or finished
        raise InvalidStateError(f"batch {batch_id} has just changed; try again")
    rest = [p for p in line if p.id != batch_id]
    moves = permuted(chosen + rest if top else rest + chosen)
    move_batches(tx, moves)
    return len(moves)
