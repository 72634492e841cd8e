"""Runtime concurrency: what may run at once, in all and per backend, read and changed.

The one place for its rules: the global limit is 1–``[server] max_concurrency``,
a backend's per-server limit 1–:data:`MAX_PER_URL` (as ``[[backends]]
concurrency``), only configured backends have one, only admins change them.
A value set here is stored (it wins over kiln.toml and survives a restart);
a scheduler running in this process (``live``) applies it at once, one in
another process at its next look at the stored settings.

``/api/v1/admin/concurrency``, the img2img compat admin and ``kiln
concurrency`` all call these and render the :class:`ConcurrencyView` they answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx
from sqlalchemy import Connection

from pixelkiln.backends.check import ServerReport, check_backends
from pixelkiln.backends.http import redact_url
from pixelkiln.config import BackendSettings
from pixelkiln.db.events import events_after
from pixelkiln.db.records import latest_event_id
from pixelkiln.db.settings_store import (
    CONCURRENCY,
    backend_concurrency_key,
    delete_setting,
    set_setting,
    stored_concurrency,
)
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.limits import BackendLimit, configured_limits
from pixelkiln.exceptions import InvalidValueError, NotFoundError
from pixelkiln.models import Event, EventType
from pixelkiln.service.context import Caller, ServiceContext, require_admin

if TYPE_CHECKING:
    from pixelkiln.engine.scheduler import SchedulerStatus

#: the highest per-server concurrency of a backend (as ``[[backends]] concurrency``)
MAX_PER_URL = 256


class LiveLimits(Protocol):
    """A scheduler running in this process whose limits change at once (``kiln serve``'s)."""

    def set_concurrency(self, value: int) -> None: ...

    def set_backend_concurrency(self, backend: str, per_url: int | None) -> object: ...

    async def status(self) -> SchedulerStatus | None: ...


@dataclass(frozen=True)
class BackendView:
    """How many tasks one backend may run at once, and why not more."""

    name: str
    per_url: int  #: requests in flight per server now (an admin's value, else configured)
    configured: int  #: ``concurrency`` in kiln.toml
    overridden: bool  #: an admin set ``per_url`` at run time
    servers: int
    servers_up: int | None  #: servers not known to be down (None: no scheduler runs here)
    cap: int  #: per_url × servers
    effective: int  #: tasks that may run on it now: min(global, per_url × servers up)
    limited_by: str  #: global, backend or servers_down
    running: int  #: tasks generating on it now


@dataclass(frozen=True)
class ConcurrencyView:
    """The limits now: the global one, its highest allowed value, and each backend's."""

    concurrency: int  #: tasks running at once over every backend
    set_at_run_time: bool  #: an admin's value (else kiln.toml's)
    max: int  #: the highest global limit an admin may set
    effective: int  #: the most tasks that can run at once now
    backends: list[BackendView]


async def concurrency_view(ctx: ServiceContext, live: LiveLimits | None = None) -> ConcurrencyView:
    """The limits now; with ``live``, its servers up and tasks running too."""
    status = await live.status() if live is not None else None
    return await _concurrency_of(ctx, status)


async def _concurrency_of(ctx: ServiceContext, status: SchedulerStatus | None) -> ConcurrencyView:
    """The limits as the scheduler's ``status`` (one snapshot) or, without one, the stored
    and configured values say."""
    stored_overall, stored = await ctx.read(stored_concurrency)
    overall = stored_overall
    if status is not None:
        overall, limits = status.concurrency, status.backends
    else:
        limits = configured_limits(ctx.settings.effective_backends(), stored)
    overall = overall or ctx.settings.scheduler.concurrency
    backends = [
        _backend_view(name, limit, overall, name in stored) for name, limit in limits.items()
    ]
    return ConcurrencyView(
        concurrency=overall,
        set_at_run_time=bool(stored_overall),
        max=ctx.settings.server.max_concurrency,
        effective=min(overall, sum(b.effective for b in backends)),
        backends=backends,
    )


def _backend_view(name: str, limit: BackendLimit, overall: int, overridden: bool) -> BackendView:
    effective, why = limit.effective(overall)
    return BackendView(
        name=name,
        per_url=limit.per_url,
        configured=limit.configured,
        overridden=overridden,
        servers=limit.servers,
        servers_up=limit.servers_up,
        cap=limit.slots,
        effective=effective,
        limited_by=why,
        running=limit.running,
    )


async def set_concurrency(
    ctx: ServiceContext, caller: Caller, value: int, live: LiveLimits | None = None
) -> ConcurrencyView:
    """The global limit, 1–``[server] max_concurrency``: stored, and applied by ``live``."""
    require_admin(caller, "change the concurrency")
    top = ctx.settings.server.max_concurrency
    if not 1 <= value <= top:
        raise InvalidValueError(
            f"concurrency must be between 1 and {top} ([server] max_concurrency)",
            field="concurrency",
        )
    await ctx.write(set_setting, CONCURRENCY, value)
    if live is not None:
        live.set_concurrency(value)
    return await concurrency_view(ctx, live)


async def reset_concurrency(
    ctx: ServiceContext, caller: Caller, live: LiveLimits | None = None
) -> ConcurrencyView:
    """Forget the global limit an admin set: kiln.toml's applies again."""
    require_admin(caller, "change the concurrency")
    await ctx.write(delete_setting, CONCURRENCY)
    if live is not None:
        live.set_concurrency(ctx.settings.scheduler.concurrency)
    return await concurrency_view(ctx, live)


async def set_backend_concurrency(
    ctx: ServiceContext, caller: Caller, name: str, value: int, live: LiveLimits | None = None
) -> ConcurrencyView:
    """Requests in flight per server of backend ``name``, 1–:data:`MAX_PER_URL`."""
    require_admin(caller, "change the concurrency")
    _known_backend(ctx, name)
    if not 1 <= value <= MAX_PER_URL:
        raise InvalidValueError(
            f"a backend's concurrency must be between 1 and {MAX_PER_URL}", field="concurrency"
        )
    await ctx.write(set_setting, backend_concurrency_key(name), value)
    if live is not None:
        live.set_backend_concurrency(name, value)
    return await concurrency_view(ctx, live)


async def reset_backend_concurrency(
    ctx: ServiceContext, caller: Caller, name: str, live: LiveLimits | None = None
) -> ConcurrencyView:
    """Forget backend ``name``'s value an admin set: its ``concurrency`` in kiln.toml applies."""
    require_admin(caller, "change the concurrency")
    _known_backend(ctx, name)
    await ctx.write(delete_setting, backend_concurrency_key(name))
    if live is not None:
        live.set_backend_concurrency(name, None)
    return await concurrency_view(ctx, live)


def _known_backend(ctx: ServiceContext, name: str) -> None:
    names = ctx.backends.names
    if name not in names:
        raise NotFoundError(f"no backend '{name}'; configured: {', '.join(sorted(names))}")


# -- backend health ---------------------------------------------------------------------------

#: the newest events looked through for recent errors: bounded, so the look costs the same
#: on a database of a million events as on a new one
ERROR_WINDOW = 2000
#: recent errors kept per backend
RECENT_ERRORS = 5
#: warnings and errors of that window looked at, newest first
SCANNED_ERRORS = 200
#: seconds one server's probe may take (``probe=true``); an admin waits for the answer
PROBE_SECONDS = 4.0

UP, DOWN, DEGRADED, UNKNOWN = "up", "down", "degraded", "unknown"


@dataclass(frozen=True)
class ServerHealth:
    """One server (URL) of a backend; ``url`` is "" for a backend without servers."""

    url: str  #: without credentials
    state: str  #: up, down or unknown (no scheduler here, nor a probe, tells)
    latency_ms: float | None = None  #: the probe's round trip (probed only)
    error: str = ""  #: why it is down, or what it answered (probed only)


@dataclass(frozen=True)
class RecentError:
    """A failed try (``warning``: retried) or a task that failed for good (``error``)."""

    at: float
    kind: str  #: warning or error
    batch_id: int
    task_id: int | None
    message: str


@dataclass(frozen=True)
class BackendHealth:
    """One backend as the scheduler of this process sees it, and its recent errors."""

    name: str
    type: str
    model: str
    state: str  #: up, degraded (some servers down), down, or unknown
    servers: list[ServerHealth]
    servers_up: int | None  #: None: not known here (no scheduler, or no pool to tell)
    down_since: float | None  #: every server down since then (epoch seconds)
    per_url: int  #: concurrency per server now
    configured: int  #: ``concurrency`` in kiln.toml
    effective: int
    running: int
    rpm: int | None  #: requests per minute allowed (None: no cap)
    recent_errors: list[RecentError]


@dataclass(frozen=True)
class HealthView:
    """Every backend's health; ``scheduler`` is its state, or "unknown" when none runs here."""

    scheduler: str
    probed_at: float | None  #: when the servers were probed (None: not this time)
    backends: list[BackendHealth]


async def backends_health(
    ctx: ServiceContext, caller: Caller, live: LiveLimits | None = None, *, probe: bool = False
) -> HealthView:
    """What the scheduler running here (``live``) knows of each backend, without a request
    to any server; with ``probe``, each server is asked too (at most PROBE_SECONDS each).

    Without a scheduler in this process nothing is probed unless asked: the state is
    "unknown" rather than a guess or a burst of requests on every look.
    """
    require_admin(caller, "see the backends' health")
    status = await live.status() if live is not None else None
    limits = await _concurrency_of(ctx, status)  # the same snapshot, not a second one
    errors = await ctx.read(recent_errors, ctx.backends.names)
    reports = await _probe(ctx) if probe else None
    views = {b.name: b for b in limits.backends}
    backends = [
        _health(s, views[s.name], status, errors.get(s.name, []), reports)
        for s in ctx.settings.effective_backends()
        if s.name in views
    ]
    if live is None:
        scheduler = UNKNOWN
    else:
        scheduler = status.health.state if status and status.health else "stopped"
    return HealthView(scheduler, time.time() if probe else None, backends)


def _health(
    settings: BackendSettings,
    view: BackendView,
    status: SchedulerStatus | None,
    errors: list[RecentError],
    reports: dict[str, list[ServerReport]] | None,
) -> BackendHealth:
    down_since = status.backends_down.get(settings.name) if status else None
    if reports is not None:
        servers = [_probed(r) for r in reports.get(settings.name, [])]
    else:
        servers = _known_servers(settings, view, status is not None, down_since)
    return BackendHealth(
        name=settings.name,
        type=settings.type,
        model=settings.model,
        state=_backend_state(view, status is not None, down_since, servers),
        servers=servers,
        servers_up=view.servers_up,
        down_since=down_since,
        per_url=view.per_url,
        configured=view.configured,
        effective=view.effective,
        running=view.running,
        rpm=settings.rpm,
        recent_errors=errors,
    )


def _known_servers(
    settings: BackendSettings, view: BackendView, live: bool, down_since: float | None
) -> list[ServerHealth]:
    """Each server's state as far as the scheduler's counts tell (no request made).

    The scheduler counts the servers up, not which: with some up and some down,
    each is "unknown" (a probe tells which).
    """
    urls = [redact_url(u) for u in settings.urls] or [""]
    if not live:
        state = UNKNOWN
    elif view.servers_up is None:  # no pool: only "every try failed" is known
        state = DOWN if down_since is not None else UP
    elif view.servers_up == view.servers:
        state = UP
    elif view.servers_up == 0:
        state = DOWN
    else:
        state = UNKNOWN
    return [ServerHealth(url, state) for url in urls]


def _backend_state(
    view: BackendView, live: bool, down_since: float | None, servers: list[ServerHealth]
) -> str:
    if live:
        if down_since is not None or view.servers_up == 0:
            return DOWN
        if view.servers_up is not None and view.servers_up < view.servers:
            return DEGRADED
        return UP
    states = {s.state for s in servers}  # no scheduler here: what a probe found, if any
    if UNKNOWN in states or not states:
        return UNKNOWN
    return states.pop() if len(states) == 1 else DEGRADED


def _probed(report: ServerReport) -> ServerHealth:
    url = "" if report.url == "(local)" else report.url
    state = UP if report.ok else DOWN
    return ServerHealth(url, state, report.latency_ms, report.error)


async def _probe(ctx: ServiceContext) -> dict[str, list[ServerReport]]:
    """Every server of every backend asked once (``kiln backends check``), in parallel."""
    settings = ctx.settings.effective_backends()
    async with httpx.AsyncClient(timeout=PROBE_SECONDS) as client:
        groups = await asyncio.gather(*(_probe_one(ctx, s, client) for s in settings))
    return {s.name: group for s, group in zip(settings, groups, strict=True)}


async def _probe_one(
    ctx: ServiceContext, settings: BackendSettings, client: httpx.AsyncClient
) -> list[ServerReport]:
    try:
        async with asyncio.timeout(PROBE_SECONDS + 1):
            return await check_backends(ctx.settings, [settings.name], http=client)
    except TimeoutError:
        urls = [redact_url(u) for u in settings.urls] or ["(local)"]
        error = f"no answer within {PROBE_SECONDS:g}s"
        return [
            ServerReport(settings.name, settings.type, u, False, None, error=error) for u in urls
        ]


def recent_errors(conn: Connection, names: Sequence[str]) -> dict[str, list[RecentError]]:
    """Per backend, its newest failed tries and failures among the last ERROR_WINDOW events.

    A warning names its backend; a task's failure goes to its task's backend (looked
    up once per batch for the newest SCANNED_ERRORS of them).
    """
    newest = latest_event_id(conn)
    window = events_after(conn, max(0, newest - ERROR_WINDOW), limit=ERROR_WINDOW)
    found = [e for e in reversed(window) if e.type in (EventType.WARNING, EventType.ERROR)]
    found = found[:SCANNED_ERRORS]  # newest first
    backend_of = _task_backends(conn, [e for e in found if not e.data.get("backend")])
    out: dict[str, list[RecentError]] = {name: [] for name in names}
    for event in found:
        backend = event.data.get("backend") or backend_of.get(event.task_id or 0)
        kept = out.get(str(backend))
        if kept is None or len(kept) >= RECENT_ERRORS:
            continue
        message = str(event.data.get("error") or event.data.get("message") or "")
        kept.append(
            RecentError(event.created_at, str(event.type), event.batch_id, event.task_id, message)
        )
    return out


def _task_backends(conn: Connection, found: list[Event]) -> dict[int, str]:
    """Task id → backend for the tasks of these events, one query per batch."""
    by_batch: dict[int, set[int]] = {}
    for event in found:
        if event.task_id is not None:
            by_batch.setdefault(event.batch_id, set()).add(event.task_id)
    return {
        task.id: task.backend
        for batch_id, ids in by_batch.items()
        for task in list_tasks(conn, batch_id, task_ids=ids)
    }
