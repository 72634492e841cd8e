"""The sweeper: a server's pass over the ``[retention]`` rules, at start-up and every
``interval_hours``.

It is a :class:`~pixelkiln.engine.supervisor.Companion` of a server's scheduler
(:func:`pixelkiln.engine.housekeeping.server_companions`); ``kiln run`` has none. A
pass that fails (the database away, a full disk) is logged and tried again at the
next interval: it never stops the sweeper, nor the scheduler. Several processes on
one database each sweep: two passes racing delete each row once between them
(see :mod:`pixelkiln.db.retention`), so no claim is needed.

When the scheduler stops, :meth:`Sweeper.finish` lets the pass under way end its
current step (bounded by :data:`FINISH_SECONDS`); the rest waits for the next pass.

>>> sweeper = Sweeper(kiln.service)                  # doctest: +SKIP
>>> await sweeper.sweep_once()                       # one pass, what it removed
Outcome(batches=2, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pixelkiln.service.context import LOCAL, ServiceContext
from pixelkiln.service.retention import Outcome, sweep

log = logging.getLogger("pixelkiln.retention")

#: seconds :meth:`Sweeper.finish` waits for the step under way
FINISH_SECONDS = 10.0
HOUR = 3_600.0
#: temp files and half-deleted folders older than this are a crash's leftovers
LEFTOVER_SECONDS = HOUR


class Sweeper:
    """Runs a retention pass now and every ``[retention] interval_hours``."""

    name = "retention"  #: as the scheduler names its companions

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.interval = ctx.settings.retention.interval_hours * HOUR
        self.passes = 0  #: passes finished (failed ones too)
        self._stopping = asyncio.Event()
        self._pass: asyncio.Task[Outcome | None] | None = None

    async def run(self) -> None:
        """A pass at once, then one every interval, until cancelled or :meth:`finish`."""
        self._stopping.clear()
        while not self._stopping.is_set():
            self._pass = asyncio.create_task(self.sweep_once(), name="kiln-retention-pass")
            # a cancelled run leaves the pass to finish its step (finish() waits for it)
            await asyncio.wait({self._pass})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def sweep_once(self) -> Outcome | None:
        """One pass; None when it failed (logged, never raised). A crash's leftovers in the
        storage (temp files, half-deleted folders) go first, whatever the rules."""
        try:
            cutoff = time.time() - LEFTOVER_SECONDS
            removed = await asyncio.to_thread(self.ctx.storage.sweep_leftovers, cutoff)
            if removed:
                log.info("retention: removed %d file(s) a crash left half-written", removed)
            return await sweep(self.ctx, LOCAL, stop=self._stopping.is_set)
        except Exception:
            hours = self.interval / HOUR
            log.exception("retention: the pass failed; the next one is in %g hour(s)", hours)
            return None
        finally:
            self.passes += 1

    async def finish(self) -> None:
        """Stop after the step under way (at most :data:`FINISH_SECONDS`)."""
        self._stopping.set()
        if self._pass is not None and not self._pass.done():
            await asyncio.wait({self._pass}, timeout=FINISH_SECONDS)
