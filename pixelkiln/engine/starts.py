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

from pixelkiln.db.database import Database
from pixelkiln.db.leases import start_tasks
from pixelkiln.exceptions import KilnError


class TakenAwayError(KilnError):
    """The task's lease was lost before it started (cancelled, or recovered): do not send it."""


class StartMarks:
    """Spends tasks' attempts in grouped writes; :meth:`mark` returns once committed."""

    def __init__(self, db: Database, owner: str) -> None:
        self._db = db
        self._owner = owner
        self._waiting: dict[int, asyncio.Future[bool]] = {}
        self._writer: asyncio.Task[None] | None = None

    async def mark(self, task_id: int) -> None:
        """Record that ``task_id`` starts generating now; raise TakenAwayError if not held."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = future
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="kiln-start-marks")
        if not await future:
            raise TakenAwayError(f"task {task_id} was taken away before it started")

    async def _write(self) -> None:
        """Write waiting marks, group after group, until none is left; never raises."""
        await asyncio.sleep(0)  # the other tasks started in this turn of the loop join in
        while self._waiting:
            group, self._waiting = self._waiting, {}
            try:
                held = await self._db.awrite(start_tasks, self._owner, list(group))
            except Exception as exc:  # each task then fails its try with the reason
                for future in group.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            for task_id, future in group.items():
                if not future.done():  # its job may have been cancelled meanwhile
                    future.set_result(task_id in held)
