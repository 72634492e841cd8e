"""The scheduler of `kiln serve`, on its own event loop in its own thread, kept alive.

The API and the scheduler share one process, one database writer and one
event bus, but not one event loop. On a shared loop every HTTP handler (a few
milliseconds of work each) queues ahead of the scheduler's next claim and task
start; with generators that answer in tens of milliseconds, a few polling
clients cost a third of the throughput. On its own loop the scheduler only
competes for the interpreter, not for a place in the HTTP handlers' queue.

The scheduler's backends (and their HTTP client) are built here, on its loop,
by the one builder (:class:`pixelkiln.engine.assembly.Engine`); the API side
builds none. What the API asks of it (wake up, change limits, drop a cancelled
batch, report its status) crosses over with ``call_soon_threadsafe``.

The scheduler retries its own failing steps (engine.supervisor); should its
run still end by accident, it is started again here after a pause, so the
server never goes on accepting batches that nothing runs. :meth:`health`
says how it is, for ``/healthz``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pixelkiln.app import Kiln
from pixelkiln.engine.assembly import Engine
from pixelkiln.engine.housekeeping import server_companions
from pixelkiln.engine.scheduler import Scheduler, SchedulerStatus
from pixelkiln.engine.supervisor import BACKOFF_MAX, HealthReport

log = logging.getLogger("pixelkiln.api")


class SchedulerThread:
    """Runs a :class:`Scheduler` over ``kiln`` until :meth:`stop`; see the module docstring."""

    def __init__(
        self,
        kiln: Kiln,
        concurrency: int | None = None,
        backend_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.kiln = kiln
        self._concurrency = concurrency
        self._backend_limits = dict(backend_limits or {})
        self.restarts = 0  #: times the scheduler was started again after its run ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: Scheduler | None = None
        self._started = threading.Event()
        self._stopping = False
        self.hurried = False  #: a second stop signal came: nothing waits for running tasks
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kiln-scheduler", daemon=True)

    @property
    def concurrency(self) -> int:
        """The global limit last set here (the scheduler's own: :meth:`status`)."""
        return self._concurrency or self.kiln.settings.scheduler.concurrency

    def start(self) -> None:
        """Start the thread and wait until the scheduler runs (blocking: call in a thread)."""
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop claiming, give running tasks back, and wait for the thread (blocking)."""
        self._stopping = True
        self._call(lambda s: s.stop())
        self._thread.join()

    def drain(self, seconds: float) -> None:
        """Stop claiming; running tasks get ``seconds`` to finish and be recorded, then what
        still runs is given back untried; waits for the thread (blocking). SIGTERM of
        ``kiln serve``, as of ``kiln worker`` (:meth:`Scheduler.drain`)."""
        self._stopping = True
        self._call(lambda s: s.drain(seconds))
        self._thread.join()

    def hurry(self) -> None:
        """A second stop signal during :meth:`drain`: give back what still runs, now."""
        self._stopping = self.hurried = True
        self._call(lambda s: s.stop())

    def stop_within(self, seconds: float) -> bool:
        """:meth:`hurry`, then wait for the thread at most ``seconds`` (blocking); True
        once it has ended. For a shutdown that cannot wait for :meth:`stop` (a second
        Ctrl-C): the scheduler gives back what it holds as it ends."""
        self.hurry()
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def wake(self) -> None:
        self._call(lambda s: s.wake())

    def set_concurrency(self, value: int) -> None:
        self._concurrency = value
        self._call(lambda s: s.set_concurrency(value))

    def set_backend_concurrency(self, backend: str, per_url: int | None) -> None:
        """A backend's per-URL limit (None: the configured one), applied at once."""
        if per_url is None:
            self._backend_limits.pop(backend, None)
        else:
            self._backend_limits[backend] = per_url
        self._call(lambda s: s.set_backend_concurrency(backend, per_url))

    def slots_freed(self) -> None:
        self._call(lambda s: s.slots_freed())

    def state_changed(self) -> None:
        self._call(lambda s: s.state_changed())

    def cancel_batch(self, batch_id: int) -> None:
        """Stop this process's running tasks of a batch the database just cancelled."""
        self._call(lambda s: s.cancel_batch(batch_id))

    def health(self) -> HealthReport:
        """How the scheduler is (any thread): "stopped" when its thread is gone."""
        scheduler = self._scheduler
        if scheduler is None or not self._thread.is_alive():
            return HealthReport("stopped", 0.0, str(self._failure or ""), (), self.restarts)
        report = scheduler.supervision.report()
        return HealthReport(
            report.state,
            report.stalled_seconds,
            report.last_error,
            report.failing,
            report.restarts + self.restarts,
        )

    async def status(self) -> SchedulerStatus | None:
        """A snapshot taken on the scheduler's own loop (None once it has stopped)."""
        future: concurrent.futures.Future[SchedulerStatus] = concurrent.futures.Future()

        def take(scheduler: Scheduler) -> None:
            future.set_result(scheduler.status())

        if not self._call(take):
            return None
        return await asyncio.wrap_future(future)

    def _listening(self) -> bool:
        return self.kiln.listening

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
        kiln = self.kiln
        engine = Engine(kiln.settings, db=kiln.db, storage=kiln.storage, keys=kiln.keys)
        try:
            self._loop = asyncio.get_running_loop()
            while not self._stopping:
                self._scheduler = engine.scheduler(
                    concurrency=self._concurrency,
                    backend_limits=self._backend_limits,
                    follow_settings=True,
                    companions=server_companions(self.kiln.service),
                )
                self._scheduler.listening = self._listening  # announced work: rarer looks
                if self._stopping:  # stop() came while this one was being built
                    self._scheduler.stop()
                self._started.set()
                try:
                    await self._scheduler.run()
                except Exception as exc:  # a bug; its steps' own failures are retried inside
                    log.exception("the scheduler stopped by accident; starting it again")
                    self._failure = exc
                if not self._stopping:
                    self.restarts += 1
                    await asyncio.sleep(BACKOFF_MAX / 4)
        finally:
            await engine.aclose()
