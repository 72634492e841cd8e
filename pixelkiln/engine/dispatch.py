"""Which claimed tasks start now, and how many more to claim: a scheduler's slots and its
ready queues, in memory.

A scheduler claims tasks ahead (one write per many tasks keeps the writer's
per-task cost low) into a ready queue per backend, and starts them as slots
free up: within the global cap and each backend's slots (engine.limits),
turning between backends so that none starves the others. How far ahead it
claims follows each backend's speed: about :data:`PREFETCH_SECONDS` of work,
so fast tasks come in large chunks, and tasks slower than that none ahead at
all: no runner hoards work that another could start sooner. Nothing here waits or
writes; :class:`~pixelkiln.engine.scheduler.Scheduler` does, around it.

>>> dispatch = Dispatch(limits, backends)
>>> dispatch.add(claimed_tasks, first=())
>>> for task in dispatch.take():   # counted as generating until dispatch.finished(...)
...     start(task)                # doctest: +SKIP
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Collection, Iterable, Mapping

from pixelkiln.backends.base import Backend
from pixelkiln.backends.pool import ServerPool, pool_of
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.engine.limits import Limits

#: work claimed ahead per backend, in seconds of generation (see Dispatch.ready_target)
PREFETCH_SECONDS = 0.25
MAX_PREFETCH = 64
#: the longest a claim for a freed slot waits for the other tasks of its round (started
#: with it, due to end within this), so that one claim and one start serve them all; never
#: more than CLAIM_GATHER_SHARE of a task's time (see Dispatch.gather_until). 10 ms (1 %)
#: kept a round together on a fast machine, but on one with half its speed the 4 answers
#: of a round came back up to 12 ms apart under 8 workers' load: the round split, and
#: never joined again (0.61 claims per task instead of 0.29; bench/scaleout's CPU per task
#: 1.17-1.27 of Celery's). With 30 ms (3 %): 0.33, and 0.89-0.98.
CLAIM_GATHER = 0.03
CLAIM_GATHER_SHARE = 0.03
#: how soon a waiting claim looks again for a task of its round past its expected end
GATHER_LOOK = 0.001
#: a backend whose tasks take PREFETCH_SECONDS or more holds none ahead, but a slot about
#: to free has its next task claimed this long before its task is due to end (never more
#: than CLAIM_LEAD_SHARE of a task), so the claim's round trip is not between one request
#: and the next (see Dispatch.ending)
CLAIM_LEAD = 0.03
CLAIM_LEAD_SHARE = 0.03
#: the longest outcomes wait for others before they are written (Dispatch.outcomes_wait)
RECORD_GATHER = 0.02
#: tasks left (claimed ahead + still in the database) below which a pool is told how many:
#: near the end of the work it then places them where each finishes first (backends.pool)
COUNTED_BACKLOG = 64


class Dispatch:
    """The ready queues and running counts of one scheduler's backends; see the module."""

    def __init__(self, limits: Limits, backends: Iterable[str] | Mapping[str, Backend]) -> None:
        self.limits = limits
        self._slots = limits.slots  # the same dict: admins' changes show at once
        names = list(backends)
        #: tasks generating now, per backend
        self.generating = dict.fromkeys(names, 0)
        #: claimed ahead, waiting for a slot; their leases are renewed like running tasks'
        self.ready: dict[str, collections.deque[ClaimedTask]] = {
            name: collections.deque() for name in names
        }
        self._order = names  # turned on every start, so no backend always goes first
        #: backends outside their active hours (engine.hours): none of their tasks start
        self.closed: frozenset[str] = frozenset()
        self._mean_duration: dict[str, float] = {}  # moving average of generation time
        #: backends whose latest claim found fewer tasks than asked: the database has no
        #: more for them now, so what is in their ready queue is the end of their work
        self.drained: set[str] = set()
        self._pending: int | None = None  #: tasks the database held after the latest claim
        self._asked: dict[str, int] = {}  # the wants of the claim being made
        self._pools: dict[str, ServerPool] = {}
        #: backends measured to take PREFETCH_SECONDS or more a task: none claimed ahead,
        #: claimed for a lead (ending), started and recorded by round (gather_until)
        self.slow: set[str] = set()
        if isinstance(backends, Mapping):
            for name, backend in backends.items():
                pool = pool_of(backend)
                if pool is not None:  # near the end of its work it may wait for a fast server
                    pool.backlog = functools.partial(self.backlog, name)
                    self._pools[name] = pool

    # -- slots --------------------------------------------------------------------------------

    def running(self) -> int:
        """Tasks generating now, on every backend."""
        return sum(self.generating.values())

    def free(self) -> int:
        """Tasks that could start now within the global cap."""
        return self.limits.overall - self.running()

    def free_on(self, backend: str) -> int:
        """Tasks that could start on ``backend`` now, within its slots and the global cap."""
        return max(0, min(self._slots[backend] - self.generating[backend], self.free()))

    def finished(self, backend: str) -> None:
        """A task of ``backend`` stopped generating: its slot is free again."""
        self.generating[backend] -= 1

    # -- claiming ahead -----------------------------------------------------------------------

    def observe(self, backend: str, seconds: float) -> None:
        """A task of ``backend`` generated in ``seconds``: the claim-ahead target follows."""
        mean = self._mean_duration.get(backend)
        self._mean_duration[backend] = seconds if mean is None else 0.8 * mean + 0.2 * seconds
        self.slow = {b for b, m in self._mean_duration.items() if m >= PREFETCH_SECONDS}

    def ready_target(self, backend: str) -> int:
        """Tasks to keep claimed ahead (beyond the free slots): about PREFETCH_SECONDS of
        work, within bounds; none for tasks that take PREFETCH_SECONDS or more.

        Claiming ahead only hides the claim's own round trip (a few milliseconds) from a
        slot, which matters when tasks take milliseconds too. A task held ahead by one
        runner cannot start on another runner's free slot meanwhile: with tasks of a
        second, a batch shared by several processes would end a whole task later than
        it could (one runner still working through what it held while the others idle;
        bench/scaleout: 0.79 of ideal at 8 workers, 0.91 without). So a backend whose
        tasks take PREFETCH_SECONDS or more gets no task ahead: each freed slot is
        refilled by a claim the moment its task ends, unless servers of its pool are
        faster than that (unequal servers): then about PREFETCH_SECONDS of their work.
        Before the first task of a backend has finished, its first claim takes a slot's
        worth ahead, as a claim that asks for more than it gets is how the pool learns
        that the queue ran dry (:meth:`backlog`).
        """
        capacity = max(1, min(self._slots[backend], self.limits.overall))
        mean = self._mean_duration.get(backend)
        if mean is None:
            return capacity
        if mean >= PREFETCH_SECONDS:
            # unequal servers: the mean is long, but the fast ones free a slot more often
            pool = self._pools.get(backend)
            fast = 0.0 if pool is None else pool.rate_below(PREFETCH_SECONDS)
            return int(min(MAX_PREFETCH, PREFETCH_SECONDS * fast))
        per_slot = PREFETCH_SECONDS / max(mean, 1e-4)
        return int(min(MAX_PREFETCH, max(1, capacity * per_slot)))

    def ending(
        self, running: Iterable[tuple[str, float]], now: float
    ) -> tuple[dict[str, int], float | None]:
        """Slots about to free, and when to look again: per backend whose tasks take
        PREFETCH_SECONDS or more, the running tasks due to end within the lead
        (CLAIM_LEAD, CLAIM_LEAD_SHARE of a task) or a lead after that (the rest of their
        round: one claim serves it), or overdue by no more than a lead; and the moment the
        next running task's lead begins (None: none will).

        ``running``: (backend, start) of each task generating now. Such a backend holds
        nothing ahead (:meth:`ready_target`), so without this each freed slot waited for
        a claim's round trip (and the writes queued before it) between one request and
        the next: 10-15 ms a task of a second, against Celery's 5 (bench/scaleout). A
        task claimed for a slot about to free is held for a lead at most, as long as the
        task it follows takes no longer than its mean: a runner hoards nothing that
        another could start much sooner (the reason for no claim ahead).
        """
        ending: dict[str, int] = {}
        next_at: float | None = None
        for backend, started in running:
            if backend not in self.slow:
                continue
            mean = self._mean_duration[backend]
            due, lead = started + mean, min(CLAIM_LEAD, CLAIM_LEAD_SHARE * mean)
            if now - lead <= due <= now + 2 * lead:
                ending[backend] = ending.get(backend, 0) + 1
            elif due > now and (next_at is None or due - lead < next_at):
                next_at = due - lead
        return ending, next_at

    def outcomes_wait(
        self, running: Iterable[tuple[str, float]], now: float, waited: float
    ) -> float:
        """Seconds a group of outcomes, ``waited`` in, still waits for more before it is
        written (engine.recorder), RECORD_GATHER in all at most. None with nothing else
        running: the last outcomes of the work are written at once. With tasks of
        PREFETCH_SECONDS or more only, until the others of its round should end
        (:meth:`gather_until`; none when no other is due soon). With fast tasks running
        (or not measured yet), the whole RECORD_GATHER: their outcomes come in a stream.

        ``running``: (backend, start) of each task generating now."""
        running = list(running)
        left = RECORD_GATHER - waited
        if not running or left <= 0:
            return 0.0
        if any(b not in self.slow for b, _ in running):
            return left
        until = self.gather_until(running, now)
        return 0.0 if until is None else min(until - now, left)

    def gather_until(self, running: Iterable[tuple[str, float]], now: float) -> float | None:
        """When a claim for freed slots should be made, if not now: the moment the last of
        the other running tasks due to end within the gather window (before or after now)
        should end; None when none is (claim now). The caller bounds the whole wait.

        ``running``: (backend, start) of each task generating now. Only backends whose
        tasks take PREFETCH_SECONDS or more count: their freed slots are refilled by a
        claim each (nothing is claimed ahead), and tasks started together end together.
        The first of a round to end would otherwise claim alone, the next ones during its
        claim's round trip, and so on: one claim and one start write per task or two. A
        wait of at most CLAIM_GATHER (and CLAIM_GATHER_SHARE of a task) lets the round's
        slots be refilled by one claim, started by one write (bench/scaleout: 1.5 tasks
        per claim without; CPU per task is mostly those writes).
        """
        dues = []
        for backend, started in running:
            if backend not in self.slow:
                continue
            mean = self._mean_duration[backend]
            due, window = started + mean, min(CLAIM_GATHER, CLAIM_GATHER_SHARE * mean)
            # a task of the round a little slower than the mean is waited for too
            if abs(due - now) <= window:
                dues.append(due)
        return max(*dues, now + GATHER_LOOK) if dues else None

    def wants(
        self, holds_back: Callable[[str], bool], ending: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """How many tasks to claim per backend: refill a ready queue once it runs low.

        ``holds_back``: backends whose tasks would only come back now (engine.routing);
        their tasks wait in the database instead. ``ending``: slots about to free, per
        backend (:meth:`ending`), wanted as if free.
        """
        wants: dict[str, int] = {}
        for name in self._order:
            if holds_back(name):
                continue
            target = self.ready_target(name)
            ready = len(self.ready[name])
            free_slots = self.free_on(name) + (ending or {}).get(name, 0)
            if ready > target // 2 and ready >= free_slots:
                continue
            want = free_slots + target - ready
            if want > 0:
                wants[name] = want
        self._asked = wants
        return wants

    def backlog(self, backend: str) -> int | None:
        """The tasks of ``backend`` still to start, when they can be counted: those in its
        ready queue once its latest claim found fewer than it asked for (the database has
        no more now), or those plus what the database still holds once that is few (at
        most :data:`COUNTED_BACKLOG`: the end of the work is near); None while there is
        more (every free slot is filled)."""
        ready = len(self.ready[backend])
        if backend in self.drained:
            return ready
        if self._pending is not None and ready + self._pending <= COUNTED_BACKLOG:
            return ready + self._pending
        return None

    # -- the ready queues ---------------------------------------------------------------------

    def add(
        self, tasks: Iterable[ClaimedTask], first: Collection[int], pending: int | None = None
    ) -> None:
        """Claimed tasks join their backend's queue; those in ``first`` (claimed into a
        slot free now: a batch's paced start) go ahead of the rest. ``pending``: tasks
        the database still holds in the batches they came from (:meth:`backlog`)."""
        tasks = list(tasks)
        self._pending = pending
        got = collections.Counter(t.backend for t in tasks)
        for name, want in self._asked.items():  # what the claim these come from asked for
            if got[name] < want:
                self.drained.add(name)
            else:
                self.drained.discard(name)
        self._asked = {}
        for task in tasks:
            if task.id in first:
                self.ready[task.backend].appendleft(task)
            else:
                self.ready[task.backend].append(task)

    def take(self, hold: Collection[str] = ()) -> list[ClaimedTask]:
        """Ready tasks to start now, turning between backends (but those in ``hold``); each
        counts as generating."""
        taken: list[ClaimedTask] = []
        progress = True
        while progress and self.free() > 0:
            progress = False
            self._order.append(self._order.pop(0))
            for name in self._order:
                ready = self.ready[name]
                if (
                    ready
                    and name not in self.closed
                    and name not in hold
                    and self.generating[name] < self._slots[name]
                    and self.free() > 0
                ):
                    taken.append(ready.popleft())
                    self.generating[name] += 1
                    progress = True
        return taken

    def startable(self) -> set[str]:
        """Backends with a task ready and a slot free for it now."""
        return {name for name, ready in self.ready.items() if ready and self.free_on(name) > 0}

    def has_ready(self) -> bool:
        return any(self.ready.values())

    def ready_tasks(self) -> list[ClaimedTask]:
        """Every task waiting in the ready queues, backend by backend."""
        return [t for ready in self.ready.values() for t in ready]

    def ready_ids(self) -> list[int]:
        return [t.id for t in self.ready_tasks()]

    def drop(self, condition: Callable[[ClaimedTask], bool]) -> int:
        """Forget the ready tasks matching ``condition``; returns how many."""
        dropped = 0
        for name, ready in self.ready.items():
            keep = [t for t in ready if not condition(t)]
            dropped += len(ready) - len(keep)
            self.ready[name] = collections.deque(keep)
        return dropped
