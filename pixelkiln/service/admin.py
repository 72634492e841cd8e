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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pixelkiln.db.settings_store import (
    CONCURRENCY,
    backend_concurrency_key,
    delete_setting,
    set_setting,
    stored_concurrency,
)
from pixelkiln.engine.limits import BackendLimit, configured_limits
from pixelkiln.exceptions import InvalidValueError, NotFoundError
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
    stored_overall, stored = await ctx.read(stored_concurrency)
    overall = stored_overall
    status = await live.status() if live is not None else None
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
