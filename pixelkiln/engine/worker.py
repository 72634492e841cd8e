"""``kiln worker``: one scheduler over every batch in the database, without the HTTP API.

A worker is what ``kiln serve`` runs in its scheduler thread, in a process of
its own: it claims tasks of any batch (of the backends it was given, all by
default), runs them, records them, and runs the same companions as a server
(webhook deliveries, cron schedules, project runs no process drives, the
retention sweeper). Each of those claims its work through the database, so
any number of workers (and servers) may share one: a schedule slot starts
once, a delivery is sent once, a run has one driver.

Stopping is graceful (:meth:`Worker.stop`, SIGTERM and SIGINT): the first
signal drains (:meth:`Scheduler.drain`): nothing more is claimed, tasks
claimed ahead go back to the queue at once, running ones get ``[scheduler]
shutdown_seconds`` to finish and be recorded, and what still runs then is
given back untried (its attempt not spent). A second signal gives back at
once. Either way the process ends with exit 0 and holds nothing.

With ``[worker] health_port`` (or ``--health-port``) it also answers
``GET /healthz`` (200, or 503 when its scheduler has stopped or made no
progress for ``stall_seconds`` while work waits) and ``GET /metrics``
(Prometheus text) on a tiny HTTP server of its own (:class:`HealthPort`).

>>> worker = Worker(settings, backends=["sd"], concurrency=8)    # doctest: +SKIP
>>> asyncio.run(worker.run())                                   # until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.batches import unfinished_batch_ids
from pixelkiln.db.database import Database
from pixelkiln.engine.assembly import Engine
from pixelkiln.engine.housekeeping import server_companions
from pixelkiln.engine.scheduler import Scheduler, SchedulerStatus, Tally
from pixelkiln.engine.supervisor import HealthReport, health_answer
from pixelkiln.exceptions import ConfigError, DatabaseError

log = logging.getLogger("pixelkiln.worker")

#: the signals that stop a worker: the first drains, the second gives back at once
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: seconds a health client may take to send its request
REQUEST_SECONDS = 5.0
#: seconds the database may take to answer a health probe's query before it counts as down
DATABASE_SECONDS = 5.0
#: request header lines read at most (the rest of the request is not needed)
MAX_HEADER_LINES = 100
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Worker:
    """Runs one scheduler over the database until stopped; see the module docstring.

    ``backends``: the configured backends whose tasks it claims (None: all);
    ``concurrency``: its own cap of tasks at once, in place of ``[scheduler]
    concurrency``; ``health``: (host, port) of its health port, None for none.
    ``say`` hears what an operator should see (the stop signals), beside the log.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backends: Collection[str] | None = None,
        concurrency: int | None = None,
        health: tuple[str, int] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        if concurrency is not None:
            scheduler = settings.scheduler.model_copy(update={"concurrency": max(1, concurrency)})
            settings = settings.model_copy(update={"scheduler": scheduler})
        self.settings = settings
        self.backends = None if backends is None else list(backends)
        self.health = health
        self.scheduler: Scheduler | None = None
        self.port: HealthPort | None = None
        self.stopping = 0  #: stop requests so far: 1 drains, 2 gives back at once
        #: set once the scheduler is built, the health port listens and signals are caught
        self.ready = asyncio.Event()
        self._say = say or (lambda _text: None)

    async def run(self) -> None:
        """Open the installation, run the scheduler until :meth:`stop`, close everything.

        ConfigError for an unknown backend or a health port that cannot be bound.
        """
        # the engine is built below; nothing here follows events (no SSE streams): a worker
        # is not woken by every task recorded in any process
        async with Kiln(self.settings, engine=False, hear_events=False) as kiln:
            engine = Engine(
                kiln.settings, db=kiln.db, storage=kiln.storage, keys=kiln.keys, only=self.backends
            )
            try:
                await self._run(kiln, engine)
            finally:
                await engine.aclose()

    async def _run(self, kiln: Kiln, engine: Engine) -> None:
        scheduler = engine.scheduler(
            follow_settings=True,  # an admin's limits, as `kiln serve` follows them
            companions=server_companions(kiln.service),
        )
        self.scheduler = scheduler
        scheduler.listening = lambda: kiln.listening  # announced work: idle looks are rarer
        kiln.schedulers.add(scheduler)  # a schedule started here wakes it at once
        if self.health is not None:
            self.port = HealthPort(scheduler, kiln.db, self.settings.scheduler.stall_seconds)
            await self.port.start(*self.health)
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop, sig.name)
        early, self.stopping = self.stopping, 0
        for _ in range(min(early, 2)):  # stop() called before the scheduler was built
            self.stop()
        self.ready.set()
        log.info(
            "worker %s: backends %s, concurrency %d, data folder %s",
            scheduler.owner,
            ", ".join(scheduler.backends),
            scheduler.concurrency,
            self.settings.storage.data_dir,
        )
        try:
            await scheduler.run()
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            kiln.schedulers.discard(scheduler)
            if self.port is not None:
                await self.port.close()
            tally = scheduler.tally
            log.info(
                "worker %s stopped: %d generated, %d failed, %d given back to the queue",
                scheduler.owner,
                tally.generated,
                tally.failed,
                tally.given_back,
            )

    def stop(self, why: str = "stop") -> None:
        """Drain (the first call) or give back at once (the next); on the worker's loop."""
        scheduler = self.scheduler
        self.stopping += 1
        if scheduler is None:
            return
        if self.stopping == 1:
            seconds = self.settings.scheduler.shutdown_seconds
            text = (
                f"{why}: claiming nothing more; running tasks have {seconds:g} s to finish, "
                "then go back to the queue (again to give them back now)"
            )
            scheduler.drain(seconds)
        else:
            text = f"{why} again: running tasks go back to the queue now"
            scheduler.stop()
        log.info("%s", text)
        self._say(text)


# -- the health port --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of the health port."""

    status: int
    content_type: str
    body: bytes


REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthPort:
    """``GET /healthz`` and ``GET /metrics`` of a worker, on ``asyncio.start_server``.

    It runs on the scheduler's loop and reads the scheduler's own snapshot
    (:meth:`Scheduler.status`), so it needs no lock; each answer is one short
    read at most. HTTP/1.1 with ``Connection: close``: one request per connection,
    which is what health checkers and Prometheus scrapes do anyway.
    """

    def __init__(self, scheduler: Scheduler, db: Database, stall_seconds: float) -> None:
        self.scheduler = scheduler
        self.db = db
        self.stall_seconds = stall_seconds
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: a free port, see :attr:`address`)."""
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            raise ConfigError(
                f"the health port cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) it listens on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the health port is not listening")
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                method, path = await _request_line(reader)
            answer = await self.answer(method, path)
            head = (
                f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, '')}\r\n"
                f"Content-Type: {answer.content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else answer.body))
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass  # a client that sent no request, or left: nothing to answer
        except Exception:
            log.exception("health port: answering failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, method: str, path: str) -> Answer:
        """The answer to ``method path`` (the query string is ignored)."""
        route = path.partition("?")[0]
        if route not in ("/healthz", "/metrics"):
            return _json(404, {"detail": "not found: try /healthz or /metrics"})
        if method not in ("GET", "HEAD"):
            return _json(405, {"detail": "only GET"})
        status = self.scheduler.status()
        if route == "/metrics":
            return Answer(200, METRICS_TYPE, render_metrics(status).encode())
        return await self._health(status)

    async def _health(self, status: SchedulerStatus) -> Answer:
        report = status.health or self.scheduler.supervision.report()
        stuck = report.may_be_stuck(self.stall_seconds)
        try:
            waiting = await self._work_waiting(stuck)
        except (DatabaseError, TimeoutError) as exc:
            # a worker that cannot reach its database cannot claim or record anything
            why = str(exc) or f"no answer within {DATABASE_SECONDS:g} s"
            reason = f"the database cannot be reached: {why}"
            log.debug("health port: %s", reason)  # the scheduler's own failures are logged
            return self._health_body(status, report, False, bad=True, reason=reason)
        bad = report.unhealthy(self.stall_seconds, waiting)
        return self._health_body(status, report, waiting, bad=bad)

    async def _work_waiting(self, stuck: bool) -> bool:
        """Whether tasks wait (asked only when the scheduler may be stuck, as the API's
        /healthz); else only that the database answers, as the API's does. Bounded by
        :data:`DATABASE_SECONDS` (a database that does not answer is down here)."""
        async with asyncio.timeout(DATABASE_SECONDS):
            if stuck:
                return bool(await self.db.aread(unfinished_batch_ids))
            await self.db.aread(_database_answers)
            return False

    def _health_body(
        self,
        status: SchedulerStatus,
        report: HealthReport,
        waiting: bool,
        *,
        bad: bool,
        reason: str = "",
    ) -> Answer:
        """The /healthz answer: 503 when ``bad``; ``reason`` says why where the scheduler's
        own state does not (the database down)."""
        health = health_answer(report, unhealthy=bad, work_waiting=waiting)
        body = health.model_dump(mode="json")
        body["worker"] = {
            "owner": self.scheduler.owner,
            "draining": status.draining,
            "concurrency": status.concurrency,
            "held": status.held,
            "generating": status.generating,
            "backends_down": sorted(status.backends_down),
        }
        if reason:
            body["reason"] = reason
        return _json(503 if bad else 200, body)


async def _request_line(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path) of an HTTP request; its headers are read and dropped."""
    words = (await reader.readline()).decode("latin-1").split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request")
    for _ in range(MAX_HEADER_LINES):
        if (await reader.readline()).strip() == b"":
            break
    return words[0].upper(), words[1]


def _database_answers(conn: Connection) -> None:
    conn.exec_driver_sql("SELECT 1").scalar()


def _json(status: int, data: dict[str, Any]) -> Answer:
    return Answer(status, "application/json", json.dumps(data).encode())


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(status: SchedulerStatus) -> str:
    """This worker's own figures in the Prometheus text format (the API's ``/metrics``
    has the database-wide ones: queue depth, tasks by state, durations)."""
    tally = status.tally or Tally()
    health = status.health
    backends = sorted(status.backends or status.generating)
    families: list[tuple[str, str, str, list[str]]] = [
        (
            "kiln_worker_generating",
            "gauge",
            "Tasks this worker is generating now, per backend.",
            [f'{{backend="{_label(b)}"}} {status.generating.get(b, 0)}' for b in backends],
        ),
        (
            "kiln_worker_held",
            "gauge",
            "Tasks this worker holds: generating, claimed ahead or being recorded.",
            [f" {status.held}"],
        ),
        (
            "kiln_worker_concurrency",
            "gauge",
            "This worker's cap of tasks at once.",
            [f" {status.concurrency}"],
        ),
        (
            "kiln_worker_draining",
            "gauge",
            "1 once it stopped claiming (SIGTERM).",
            [f" {int(status.draining)}"],
        ),
        (
            "kiln_worker_tries_total",
            "counter",
            "Tries this worker finished, by outcome (generated: images came back).",
            [
                f'{{outcome="generated"}} {tally.generated}',
                f'{{outcome="retried"}} {tally.retried}',
                f'{{outcome="failed"}} {tally.failed}',
            ],
        ),
        (
            "kiln_worker_given_back_total",
            "counter",
            "Tasks this worker gave back to the queue untried.",
            [f" {tally.given_back}"],
        ),
        (
            "kiln_worker_restarts_total",
            "counter",
            "Times a part of the scheduler was started again after it died.",
            [f" {health.restarts if health else 0}"],
        ),
        (
            "kiln_worker_backend_up",
            "gauge",
            "0 while every server of the backend is down, as this worker sees it.",
            [f'{{backend="{_label(b)}"}} {int(b not in status.backends_down)}' for b in backends],
        ),
    ]
    lines: list[str] = []
    for name, kind, text, samples in families:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{sample}" for sample in samples]
    return "\n".join(lines) + "\n"
