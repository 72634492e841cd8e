"""``/api/v1/admin``: runtime concurrency (global and per backend), every user's batches, stats."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection

from pixelkiln.api.deps import AdminDep, ApiContext, CtxDep, PageDep
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS, StatusFilter, search_page
from pixelkiln.db.records import count_active
from pixelkiln.db.settings_store import (
    CONCURRENCY,
    backend_concurrency_key,
    delete_setting,
    set_setting,
    stored_concurrency,
)
from pixelkiln.db.stats import DAY, backend_figures, images_per_day, queue_depth, task_counts
from pixelkiln.engine.limits import configured_limits
from pixelkiln.wire.schemas import (
    BackendConcurrency,
    BackendConcurrencyUpdate,
    BackendStats,
    BatchPublic,
    ConcurrencyPublic,
    ConcurrencyUpdate,
    DayCount,
    Id,
    Page,
    StatsPublic,
)

router = APIRouter(prefix="/admin", tags=["admin"])


async def _concurrency(ctx: ApiContext) -> ConcurrencyPublic:
    """The limits now, per backend with what binds (live when the scheduler runs here)."""
    overall, stored = await ctx.read(stored_concurrency)
    status = await ctx.runner.status() if ctx.runner else None
    if status is not None:
        overall, limits = status.concurrency, status.backends
    else:
        limits = configured_limits(ctx.settings.effective_backends(), stored)
    overall = overall or ctx.settings.scheduler.concurrency
    backends = []
    for name, limit in limits.items():
        effective, why = limit.effective(overall)
        backends.append(
            BackendConcurrency(
                name=name,
                per_url=limit.per_url,
                configured=limit.configured,
                overridden=name in stored,
                servers=limit.servers,
                servers_up=limit.servers_up,
                cap=limit.slots,
                effective=effective,
                limited_by=why,
                running=limit.running,
            )
        )
    return ConcurrencyPublic(
        concurrency=overall,
        max=ctx.settings.server.max_concurrency,
        effective=min(overall, sum(b.effective for b in backends)),
        backends=backends,
    )


@router.get("/concurrency", responses=ERRORS, summary="The concurrency now, and per backend")
async def get_concurrency(ctx: CtxDep, _: AdminDep) -> ConcurrencyPublic:
    """The global limit, and for each backend what may run on it and what binds it:
    the global limit, its own (per-URL concurrency × servers) or servers that are down."""
    return await _concurrency(ctx)


@router.put("/concurrency", responses=ERRORS, summary="Change the global concurrency now")
async def put_concurrency(body: ConcurrencyUpdate, ctx: CtxDep, _: AdminDep) -> ConcurrencyPublic:
    """Takes effect at the scheduler's next claim and survives a restart."""
    top = ctx.settings.server.max_concurrency
    if body.concurrency > top:
        raise ApiError(
            422, "invalid_request", f"concurrency must be between 1 and {top}", field="concurrency"
        )
    await ctx.write(set_setting, CONCURRENCY, body.concurrency)
    if ctx.runner is not None:
        ctx.runner.set_concurrency(body.concurrency)
    return await _concurrency(ctx)


def _known_backend(ctx: ApiContext, name: str) -> None:
    if name not in ctx.kiln.backends:
        known = ", ".join(sorted(ctx.kiln.backends))
        raise ApiError(404, "not_found", f"no backend '{name}'; configured: {known}")


@router.put(
    "/concurrency/backends/{name}",
    responses=ERRORS,
    summary="Change a backend's concurrency (per server) now",
)
async def put_backend_concurrency(
    name: str, body: BackendConcurrencyUpdate, ctx: CtxDep, _: AdminDep
) -> ConcurrencyPublic:
    """Requests in flight per server of ``name``; takes effect at once and survives a restart."""
    _known_backend(ctx, name)
    await ctx.write(set_setting, backend_concurrency_key(name), body.concurrency)
    if ctx.runner is not None:
        ctx.runner.set_backend_concurrency(name, body.concurrency)
    return await _concurrency(ctx)


@router.delete(
    "/concurrency/backends/{name}",
    responses=ERRORS,
    summary="Back to the backend's configured concurrency",
)
async def reset_backend_concurrency(name: str, ctx: CtxDep, _: AdminDep) -> ConcurrencyPublic:
    """Forget the value an admin set: ``concurrency`` from kiln.toml applies again."""
    _known_backend(ctx, name)
    await ctx.write(delete_setting, backend_concurrency_key(name))
    if ctx.runner is not None:
        ctx.runner.set_backend_concurrency(name, None)
    return await _concurrency(ctx)


@router.get("/batches", responses=ERRORS, summary="Every user's batches")
async def all_batches(
    ctx: CtxDep,
    _: AdminDep,
    page: PageDep,
    status: StatusFilter = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    owner_id: Annotated[Id | None, Query(description="Only this user's.")] = None,
) -> Page[BatchPublic]:
    return await search_page(ctx, page, owner_id, status, q)


def _stats(conn: Connection, since: float) -> StatsPublic:
    counts = task_counts(conn)
    done = counts["succeeded"] + counts["failed"]
    per_day = images_per_day(conn, since)
    return StatsPublic(
        images_per_day=[
            DayCount(date=datetime.fromtimestamp(d * DAY, UTC).date().isoformat(), images=n)
            for d, n in per_day.items()
        ],
        tasks=counts,
        success_rate=round(counts["succeeded"] / done, 4) if done else None,
        backends=[
            BackendStats(
                name=name,
                succeeded=f.succeeded,
                failed=f.failed,
                retries=f.retries,
                mean_seconds=round(f.mean_seconds, 3) if f.mean_seconds else None,
            )
            for name, f in backend_figures(conn).items()
        ],
        queue_depth=queue_depth(conn),
        active_batches=count_active(conn),
    )


@router.get("/stats", responses=ERRORS, summary="Images per day, success rate, times, queue")
async def stats(
    ctx: CtxDep, _: AdminDep, days: Annotated[int, Query(ge=1, le=366)] = 14
) -> StatsPublic:
    since = (int(time.time() // DAY) - days + 1) * DAY
    return await ctx.read(_stats, since)
