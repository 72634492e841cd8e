"""The scheduler of `kiln serve`, on its own event loop in its own thread.

The API and the scheduler share one process, one database writer and one
event bus, but not one event loop. On a shared loop every HTTP handler (a few
milliseconds of work each) queues ahead of the scheduler's next claim and task
start; with generators that answer in tens of milliseconds, a few polling
clients cost a third of the throughput. On its own loop the scheduler only
competes for the interpreter, not for a place in the HTTP handlers' queue.

The scheduler gets its own backends (and their HTTP client) on its own loop;
what the API asks of it (wake up, change concurrency, drop a cancelled batch,
report its status) crosses over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from pixelkiln.app import Kiln
from pixelkiln.backends import BackendDeps, build_backends
from pixelkiln.engine.credentials import UserKeys
from pixelkiln.engine.scheduler import Scheduler, SchedulerStatus

log = logging.getLogger("pixelkiln.api")


class SchedulerThread:
    """Runs a :class:`Scheduler` over ``kiln`` until :meth:`stop`; see the module docstring."""

    def __init__(self, kiln: Kiln, concurrency: int | None = None) -> None:
        self.kiln = kiln
        self.concurrency = concurrency or kiln.settings.scheduler.concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: Scheduler | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kiln-scheduler", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until the scheduler runs (blocking: call in a thread)."""
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop claiming, give running tasks back, and wait for the thread (blocking)."""
        self._call(lambda s: s.stop())
        self._thread.join()

    def wake(self) -> None:
        self._call(lambda s: s.wake())

    def set_concurrency(self, value: int) -> None:
        self.concurrency = value
        self._call(lambda s: s.set_concurrency(value))

    def cancel_batch(self, batch_id: int) -> None:
        """Stop this process's running tasks of a batch the database just cancelled."""
        self._call(lambda s: s.cancel_batch(batch_id))

    async def status(self) -> SchedulerStatus | None:
        """A snapshot taken on the scheduler's own loop (None once it has stopped)."""
        future: concurrent.futures.Future[SchedulerStatus] = concurrent.futures.Future()

        def take(scheduler: Scheduler) -> None:
            future.set_result(scheduler.status())

        if not self._call(take):
            return None
        return await asyncio.wrap_future(future)

    def _call(self, fn: Callable[[Scheduler], Any]) -> bool:
        loop, scheduler = self._loop, self._scheduler
        if loop is None or scheduler is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, scheduler)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            log.exception("the scheduler stopped")
            self._failure = exc
            self._started.set()

    async def _run(self) -> None:
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000))
        settings = self.kiln.settings
        backends = build_backends(settings.effective_backends(), BackendDeps(http=http))
        try:
            self._scheduler = Scheduler(
                db=self.kiln.db,
                storage=self.kiln.storage,
                backends=backends,
                settings=settings.scheduler,
                user_keys=UserKeys(self.kiln.db, self.kiln.keys),
            )
            self._scheduler.set_concurrency(self.concurrency)
            self._loop = asyncio.get_running_loop()
            self._started.set()
            await self._scheduler.run()
        finally:
            for backend in backends.values():
                await backend.aclose()
            await http.aclose()
