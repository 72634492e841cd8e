"""Marking tasks as started just before their requests go out, many per write.

An attempt is spent when generation starts, not when a task is claimed (tasks
claimed ahead wait in the scheduler's ready queue and may never be sent). The
mark must be committed before the request goes out, so a task that kills its
runner still runs out of attempts; but one write per task would slow the hot
path, so the marks of every task that starts while a write is under way go
together in the next one.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from pixelkiln.db.database import Database
from pixelkiln.db.leases import start_tasks
from pixelkiln.exceptions import KilnError


class TakenAwayError(KilnError):
    """The task's lease was lost before it started (cancelled, or recovered): do not send it."""


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
            raise TakenAwayError(f"task {task_id} was taken away before it started")

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
