"""``/api/v1/admin``: runtime concurrency (global and per backend), every user's batches, stats."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection

from pixelkiln import service
from pixelkiln.api.deps import AdminDep, CtxDep, PageDep, search_text
from pixelkiln.api.routes.batches import ERRORS, StatusFilter, search_page
from pixelkiln.db.records import count_active
from pixelkiln.db.stats import DAY, backend_figures, images_per_day, queue_depth, task_counts
from pixelkiln.service import admin as admin_service
from pixelkiln.wire.schemas import (
    BackendConcurrency,
    BackendConcurrencyUpdate,
    BackendsHealthPublic,
    BackendStats,
    BatchPublic,
    ConcurrencyPublic,
    ConcurrencyUpdate,
    DayCount,
    Id,
    Page,
    StatsPublic,
    stored_id,
)

router = APIRouter(prefix="/admin", tags=["admin"])


def _public(view: service.ConcurrencyView) -> ConcurrencyPublic:
    return ConcurrencyPublic(
        concurrency=view.concurrency,
        max=view.max,
        effective=view.effective,
        backends=[BackendConcurrency(**asdict(b)) for b in view.backends],
    )


@router.get("/concurrency", responses=ERRORS, summary="The concurrency now, and per backend")
async def get_concurrency(ctx: CtxDep, _: AdminDep) -> ConcurrencyPublic:
    """The global limit, and for each backend what may run on it and what binds it:
    the global limit, its own (per-URL concurrency × servers) or servers that are down."""
    return _public(await service.concurrency_view(ctx.service, ctx.runner))


@router.put("/concurrency", responses=ERRORS, summary="Change the global concurrency now")
async def put_concurrency(
    body: ConcurrencyUpdate, ctx: CtxDep, caller: AdminDep
) -> ConcurrencyPublic:
    """Takes effect at the scheduler's next claim and survives a restart."""
    view = await service.set_concurrency(ctx.service, caller, body.concurrency, ctx.runner)
    return _public(view)


@router.put(
    "/concurrency/backends/{name}",
    responses=ERRORS,
    summary="Change a backend's concurrency (per server) now",
)
async def put_backend_concurrency(
    name: str, body: BackendConcurrencyUpdate, ctx: CtxDep, caller: AdminDep
) -> ConcurrencyPublic:
    """Requests in flight per server of ``name``; takes effect at once and survives a restart."""
    view = await service.set_backend_concurrency(
        ctx.service, caller, name, body.concurrency, ctx.runner
    )
    return _public(view)


@router.delete(
    "/concurrency/backends/{name}",
    responses=ERRORS,
    summary="Back to the backend's configured concurrency",
)
async def reset_backend_concurrency(name: str, ctx: CtxDep, caller: AdminDep) -> ConcurrencyPublic:
    """Forget the value an admin set: ``concurrency`` from kiln.toml applies again."""
    view = await service.reset_backend_concurrency(ctx.service, caller, name, ctx.runner)
    return _public(view)


@router.get("/batches", responses=ERRORS, summary="Every user's batches")
async def all_batches(
    ctx: CtxDep,
    _: AdminDep,
    page: PageDep,
    status: StatusFilter = None,
    q: Annotated[str | None, search_text("Part of a batch's name or prompt.")] = None,
    owner_id: Annotated[Id | None, Query(description="Only this user's.")] = None,
) -> Page[BatchPublic]:
    chosen = None if owner_id is None else stored_id(owner_id, 0)  # past any id: nobody's
    return await search_page(ctx, page, chosen, status, q)


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


@router.delete(
    "/concurrency", responses=ERRORS, summary="Back to the global concurrency of kiln.toml"
)
async def reset_concurrency(ctx: CtxDep, caller: AdminDep) -> ConcurrencyPublic:
    """Forget the global limit an admin set; takes effect at once."""
    view = await service.reset_concurrency(ctx.service, caller, ctx.runner)
    return _public(view)


@router.get(
    "/backends/health",
    responses=ERRORS,
    summary="Each backend's servers up or down, limits and recent errors",
)
async def backends_health(
    ctx: CtxDep,
    caller: AdminDep,
    probe: Annotated[bool, Query(description="Ask every server now (a few seconds).")] = False,
) -> BackendsHealthPublic:
    """What this process's scheduler knows, without a request to any server; ``probe``
    asks each server too (as ``kiln backends check``). With no scheduler in this process
    and no probe, states are ``unknown``."""
    view = await admin_service.backends_health(ctx.service, caller, ctx.runner, probe=probe)
    return BackendsHealthPublic.model_validate(asdict(view))
