"""The schedule runner: starts what cron schedules say, once per slot across processes.

A :class:`~pixelkiln.engine.supervisor.Companion` of a server's scheduler
(:func:`pixelkiln.engine.housekeeping.server_companions`; ``kiln serve`` runs it,
``kiln run`` does not). Each pass claims the due schedules through the database
and fires them (:func:`pixelkiln.service.schedules.run_due`); then it sleeps until
the earliest next slot or ``[schedules] poll_interval``, what comes first, so a
nightly schedule starts at 00:00:00 and a schedule added by another process is
seen within the interval. Its first pass runs at start-up: a slot missed while no
server ran starts then, once.

A pass that fails (the database gone for a moment) is logged and backed off; a
start that fails is recorded in the schedule's ``last_error``; neither ends the loop.

>>> runner = ScheduleRunner(ctx)        # doctest: +SKIP
>>> await runner.run()                  # until cancelled
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pixelkiln.db.schedules import next_due_at
from pixelkiln.engine.supervisor import Supervision
from pixelkiln.service.context import ServiceContext
from pixelkiln.service.schedules import Fired, run_due

log = logging.getLogger("pixelkiln.schedules")

#: seconds past a slot the runner wakes, so that the slot is due when it looks
SLOT_SLACK = 0.01


class ScheduleRunner:
    """Fires due schedules until cancelled; see the module docstring."""

    name = "schedules"  #: as the scheduler names its companions

    def __init__(self, ctx: ServiceContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.poll_interval = ctx.settings.schedules.poll_interval
        self._clock = clock
        self._supervision = Supervision(stall_seconds=float("inf"))

    async def run(self) -> None:
        """A pass now (start-up: missed slots), then one at every slot or poll."""
        while True:
            try:
                await self.run_pass()
                pause = await self._until_next()
            except Exception as exc:
                await asyncio.sleep(self._supervision.failed("schedules", exc))
                continue
            self._supervision.ok("schedules")
            await asyncio.sleep(pause)

    async def finish(self) -> None:
        """Nothing to finish: a slot not yet claimed is left for the next process."""

    async def run_pass(self) -> list[Fired]:
        """Claim and fire what is due now."""
        return await run_due(self.ctx, self._clock())

    async def _until_next(self) -> float:
        """Seconds to sleep: to the earliest next slot, at most ``poll_interval``."""
        due = await self.ctx.read(next_due_at)
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, due - self._clock() + SLOT_SLACK))
