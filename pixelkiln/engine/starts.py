"""Marking tasks as started just before their requests go out, many per write.

An attempt is spent when generation starts, not when a task is claimed (tasks
claimed ahead wait in the scheduler's ready queue and may never be sent). The
mark must be committed before the request goes out, so a task that kills its
runner still runs out of attempts; but one write per task would slow the hot
path, so the marks of every task that starts while a write is under way go
together in the next one.

With shared limits (engine.shared_limits) a request first takes a server slot in the
database, in a write of its own just before this one. So a try's start is a
:class:`TryStart` the pool's take can see (the ``about_to_send`` hook): a slot granted
with no rpm wait marks it in the take's own write (db.slots.exchange), and the hook then
writes nothing; otherwise (an rpm wait, no shared limits, a backend without a pool) the
hook marks it here, as before.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from pixelkiln.db.database import Database
from pixelkiln.db.leases import start_tasks
from pixelkiln.exceptions import KilnError


class TakenAwayError(KilnError):
    """The task's lease was lost before it started (cancelled, or recovered): do not send it."""


class TryStart:
    """The start of one try of a task, marked once: with the slot take that lets its
    request go out (engine.shared_limits), or by :class:`StartMarks` when it goes out."""

    def __init__(self, task_id: int, paced: bool) -> None:
        self.task_id = task_id
        self.paced = paced  #: its batch has a ``delay``, which then runs from this start
        #: marked with a slot take: True (held), False (the task was taken away); None: not
        self.taken_with: bool | None = None
        self.asked = False  #: it went out (or its mark was asked for): never marked again

    @property
    def open(self) -> bool:
        """Not marked, nor being marked: a slot take may mark it."""
        return self.taken_with is None and not self.asked

    async def went_out(self, starts: StartMarks) -> bool:
        """Its request goes out now: the start marked (committed) unless a slot take marked
        it already; False when it was marked before (a later request of the same try).
        TakenAwayError: the task is no longer held, do not send it."""
        if self.asked:
            return False
        self.asked = True
        if self.taken_with is None:
            await starts.mark(self.task_id, paced=self.paced)
        elif not self.taken_with:
            raise _taken_away(self.task_id)
        return True


class StartMarks:
    """Spends tasks' attempts in grouped writes; :meth:`mark` returns once committed.

    This write is on every task's path to its generator, so it costs no task and
    no extra turn of the event loop: the first mark of a turn schedules one flush
    for the end of the turn (the other tasks started in that turn join in), and
    the writer's answer settles the waiting tasks from one callback.
    """

    def __init__(self, db: Database, owner: str) -> None:
        self._db = db
        self._owner = owner
        self._waiting: dict[int, asyncio.Future[bool]] = {}
        self._paced = False  #: a task of the waiting group belongs to a batch with a delay

    async def mark(self, task_id: int, *, paced: bool = False) -> None:
        """Record that ``task_id`` starts generating now; raise TakenAwayError if not held.

        ``paced``: its batch has a ``delay``, which then runs from this start."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush, loop)
        self._waiting[task_id] = future
        self._paced = self._paced or paced
        if not await future:
            raise _taken_away(task_id)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the marks waiting now as one write; never raises."""
        group, self._waiting = self._waiting, {}
        paced, self._paced = self._paced, False
        try:
            written = self._db.submit(start_tasks, self._owner, list(group), paced)
        except Exception as exc:  # each task then fails its try with the reason
            _settle(group, set(), exc)
            return

        def answered(done: Future[set[int]]) -> None:  # in the writer thread
            if not loop.is_closed():  # else nobody waits any more
                loop.call_soon_threadsafe(_settle_written, group, done)

        written.add_done_callback(answered)


def _taken_away(task_id: int) -> TakenAwayError:
    return TakenAwayError(f"task {task_id} was taken away before it started")


def _settle_written(group: dict[int, asyncio.Future[bool]], written: Future[set[int]]) -> None:
    error = written.exception()
    _settle(group, set() if error is not None else written.result(), error)


def _settle(
    group: dict[int, asyncio.Future[bool]], held: set[int], error: BaseException | None
) -> None:
    for task_id, future in group.items():
        if future.done():  # its job was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(task_id in held)
