"""Fair share: which batches a claim takes its tasks from, and how many from each.

The policy (docs/queue-policy.md), decided in the claim so that it holds across every
process claiming from the database:

* **priority first.** A batch of higher priority is served before any of lower
  priority, as it always was (admins set priorities).
* **users take turns.** Among batches of equal priority, each next task goes to the
  user with the fewest running tasks per unit of ``users.share`` (default 1): with
  shares 2 and 1, the first runs twice as many tasks as the second while both have
  work. A batch without an owner (the CLI, local use) belongs to one user, "local",
  of share 1. "Running" counts every task claimed and not yet finished, by any
  process, in any of the user's unfinished batches (``batches.n_running``).
* **batches take turns inside a user.** A user's next task comes from their batch
  with the fewest running tasks.
* **the queue breaks ties.** Between equals, the batch with the earlier place in the
  queue (``coalesce(queue_rank, id)``, what ``kiln queue move`` sets) goes first, so
  with nothing running a claim follows the queue order.

Only counts decide, never history: a user who arrives while another holds every slot
gets each slot that frees until both run as many tasks per share, and a user alone
gets every slot. :class:`Turns` hands out a claim's tasks by this rule, a task at a
time in memory (a heap per priority and per user), so the database sees one
``UPDATE … LIMIT n`` per batch that gets any, as before; a batch that yields fewer
than it was given (none left for that backend) drops out and the rest is handed out
again (``transition_claim``).

>>> a = Contender(BatchLimits(1, None, 6, None, None), 1, 0, 1.0, 1.0)  # user 1: 6 running
>>> b = Contender(BatchLimits(2, None, 0, None, None), 2, 0, 2.0, 1.0)  # user 2: none
>>> Turns([a, b], {1: 6}).plan(8, {1: 8, 2: 8})
{2: 7, 1: 1}
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Float, cast, func, select

from pixelkiln.db import driver
from pixelkiln.db.batches import UNFINISHED, runnable_statement
from pixelkiln.db.pacing import LIMIT_COLUMNS, BatchLimits
from pixelkiln.db.tables import batches, users

__all__ = ["Contender", "Turns", "contenders", "running_by_owner"]

#: the smallest share counted (a share is validated > 0; this keeps a division sane)
_MIN_SHARE = 1e-6


@dataclass(frozen=True)
class Contender:
    """A batch a claim may take tasks from, with what fair share weighs it by."""

    limits: BatchLimits  #: its own limits (db.pacing), its id and its running tasks
    owner_id: int | None  #: None: a batch of the CLI or local use (the user "local")
    priority: int  #: higher is served first, whatever the shares
    place: float  #: ``coalesce(queue_rank, id)``: the earlier place wins a tie
    share: float  #: its owner's weight (``users.share``; 1 for "local" or a deleted user)
    pending: int = 0  #: its tasks waiting to be claimed (``n_pending``) as the claim began

    @property
    def id(self) -> int:
        return self.limits.id


_COLUMNS = (
    *LIMIT_COLUMNS,
    batches.c.owner_id,
    batches.c.priority,
    cast(func.coalesce(batches.c.queue_rank, batches.c.id), Float),
    func.coalesce(users.c.share, 1.0),
    batches.c.n_pending,
)
_SOURCE = batches.outerjoin(users, users.c.id == batches.c.owner_id)
_CONTENDERS = runnable_statement(False, _COLUMNS, _SOURCE)
_CONTENDERS_ONLY = runnable_statement(True, _COLUMNS, _SOURCE)
#: every owner's running tasks, in any unfinished batch (with pending tasks or not)
_RUNNING_BY_OWNER = (
    select(batches.c.owner_id, func.sum(batches.c.n_running))
    .where(batches.c.status.in_([str(s) for s in UNFINISHED]), batches.c.n_running > 0)
    .group_by(batches.c.owner_id)
)


def contenders(conn: Connection, now: float, only: Iterable[int] | None = None) -> list[Contender]:
    """The batches with tasks to start (``db.batches.runnable_batches``), with their owner,
    priority, place and share; in the queue's order."""
    if only is None:  # on every claim's path: through the driver (db.driver)
        rows: Iterable[Sequence[Any]] = driver.core_rows(conn, _CONTENDERS, {"r_now": now})
    else:
        rows = conn.execute(_CONTENDERS_ONLY, {"r_now": now, "r_only": list(only)})
    return [
        Contender(
            BatchLimits(*row[:5]), row[5], int(row[6]), float(row[7]), float(row[8]), int(row[9])
        )
        for row in rows
    ]


def running_by_owner(conn: Connection) -> dict[int | None, int]:
    """Each owner's running tasks (claimed and not finished, by any process)."""
    return {owner: int(n) for owner, n in conn.execute(_RUNNING_BY_OWNER)}


class Turns:
    """Hands out a claim's tasks among :class:`Contender` batches by the module's rule.

    ``order`` is the order a claim returns its tasks in (so the order a runner starts
    them): by priority, then the owner's running tasks per share, then the batch's,
    then place, all as they stood when the claim began. :meth:`plan` says how many
    tasks each batch gets next; :meth:`took` counts what a batch really yielded.
    """

    def __init__(
        self, found: Sequence[Contender], owners_running: Mapping[int | None, int]
    ) -> None:
        self._batches = {c.id: c for c in found}
        self._running = {c.id: c.limits.n_running for c in found}
        self._owners = dict(owners_running)
        for c in found:
            self._owners.setdefault(c.owner_id, 0)
        self.order = sorted(self._batches, key=self._rank)

    @classmethod
    def read(cls, conn: Connection, found: Sequence[Contender]) -> Turns:
        """Turns among ``found``; the owners' running counts are read only when two or
        more owners compete (one owner alone needs none: a claim stays one query)."""
        if len({c.owner_id for c in found}) < 2:
            return cls(found, {})
        return cls(found, running_by_owner(conn))

    def _rank(self, batch_id: int) -> tuple[int, float, int, float, int]:
        c = self._batches[batch_id]
        load = self._load(c.owner_id, c.share)
        return (-c.priority, load, self._running[batch_id], c.place, c.id)

    def _load(
        self, owner: int | None, share: float, owners: Mapping[int | None, int] | None = None
    ) -> float:
        counts = self._owners if owners is None else owners
        return counts[owner] / max(share, _MIN_SHARE)

    def took(self, batch_id: int, n: int) -> None:
        """``n`` tasks of the batch were claimed: they run now, for it and its owner."""
        self._running[batch_id] += n
        self._owners[self._batches[batch_id].owner_id] += n

    def plan(
        self, want: int, caps: Mapping[int, int], paced: Collection[int] = (), spare: int = 0
    ) -> dict[int, int]:
        """How many tasks each batch should give next, ``want`` in all, a task at a time.

        ``caps``: the batches that may give any, and how many at most (their own limits);
        a batch in ``paced`` takes a free slot too, and ``spare`` are all there are.
        Batches are listed in the order they were first served.
        """
        planned: dict[int, int] = {}
        running = dict(self._running)
        owners = dict(self._owners)
        left = {b: n for b, n in caps.items() if n > 0 and b in self._batches}
        for level in self._levels(left):
            heap = self._owner_heap(level, running, owners)
            while want > 0 and heap:
                _, _, _, turn = heapq.heappop(heap)
                batch_id = turn.next()
                if batch_id in paced:
                    if spare <= 0:  # no free slot left for a paced batch: it drops out
                        turn.drop()
                        self._requeue(heap, turn, owners)
                        continue
                    spare -= 1
                planned[batch_id] = planned.get(batch_id, 0) + 1
                running[batch_id] += 1
                owners[turn.owner] += 1
                want -= 1
                left[batch_id] -= 1
                if left[batch_id] <= 0:
                    turn.drop()
                turn.settle(running)
                self._requeue(heap, turn, owners)
            if want <= 0:
                break
        return planned

    def _levels(self, left: Mapping[int, int]) -> list[list[Contender]]:
        """The batches that may give tasks, by priority, highest first."""
        by_priority: dict[int, list[Contender]] = defaultdict(list)
        for batch_id in left:
            c = self._batches[batch_id]
            by_priority[c.priority].append(c)
        return [by_priority[p] for p in sorted(by_priority, reverse=True)]

    def _owner_heap(
        self, level: list[Contender], running: Mapping[int, int], owners: Mapping[int | None, int]
    ) -> list[_Entry]:
        turns: dict[int | None, _OwnerTurns] = {}
        for c in level:
            turn = turns.setdefault(c.owner_id, _OwnerTurns(c.owner_id, c.share))
            turn.queue.append((running[c.id], c.place, c.id))
        heap: list[_Entry] = []
        for turn in turns.values():
            heapq.heapify(turn.queue)
            self._requeue(heap, turn, owners)
        return heap

    def _requeue(
        self, heap: list[_Entry], turn: _OwnerTurns, owners: Mapping[int | None, int]
    ) -> None:
        """Put an owner back in line, behind those with fewer running tasks per share."""
        place = turn.place()
        if place is not None:
            tie = -1 if turn.owner is None else turn.owner
            heapq.heappush(heap, (self._load(turn.owner, turn.share, owners), place, tie, turn))


#: the most tasks a batch gives in one turn of its owner's in one claim: inside a user,
#: batches take turns of a few tasks, not of one, so that a claim of many tasks is a
#: few statements (one per batch served) and not one for each of the user's batches
TURN = 4


@dataclass(eq=False)
class _OwnerTurns:
    """One owner's batches in a plan: the one whose turn it is, and the others in line."""

    owner: int | None
    share: float
    #: batches waiting for a turn, as a heap of (running, place, id): fewest running first
    queue: list[tuple[int, float, int]] = field(default_factory=list)
    current: tuple[float, int] | None = None  #: (place, id) of the batch giving tasks now
    turn_left: int = 0  #: what the current batch may still give in this turn

    def place(self) -> float | None:
        """The place of the batch that would give the owner's next task; None: no batch."""
        if self.current is not None:
            return self.current[0]
        return self.queue[0][1] if self.queue else None

    def next(self) -> int:
        """The batch that gives the owner's next task (the next in line when a turn ends)."""
        if self.current is None:
            _, place, batch_id = heapq.heappop(self.queue)
            self.current, self.turn_left = (place, batch_id), TURN
        self.turn_left -= 1
        return self.current[1]

    def settle(self, running: Mapping[int, int]) -> None:
        """After a task: a batch whose turn is over goes back in line by its running count."""
        if self.current is not None and self.turn_left <= 0:
            place, batch_id = self.current
            heapq.heappush(self.queue, (running[batch_id], place, batch_id))
            self.current = None

    def drop(self) -> None:
        """The current batch may give no more (its own limits, or no free slot)."""
        self.current, self.turn_left = None, 0


#: (running per share, place of the owner's next batch, owner as a number, the owner)
_Entry = tuple[float, float, int, _OwnerTurns]
