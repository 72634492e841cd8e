"""``/api/v1/admin``: runtime concurrency, every user's batches, stats."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection

from pixelkiln.api.deps import AdminDep, CtxDep, PageDep, page_fields
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS, StatusFilter
from pixelkiln.api.views import batch_public
from pixelkiln.db.records import count_active, search_batches
from pixelkiln.db.settings_store import CONCURRENCY, set_setting
from pixelkiln.db.stats import DAY, backend_figures, images_per_day, queue_depth, task_counts
from pixelkiln.wire.schemas import (
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


@router.get("/concurrency", responses=ERRORS, summary="The global concurrency now")
async def get_concurrency(ctx: CtxDep, _: AdminDep) -> ConcurrencyPublic:
    current = ctx.runner.concurrency if ctx.runner else ctx.settings.scheduler.concurrency
    return ConcurrencyPublic(concurrency=current, max=ctx.settings.server.max_concurrency)


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
    return ConcurrencyPublic(concurrency=body.concurrency, max=top)


@router.get("/batches", responses=ERRORS, summary="Every user's batches")
async def all_batches(
    ctx: CtxDep,
    _: AdminDep,
    page: PageDep,
    status: StatusFilter = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    owner_id: Annotated[Id | None, Query(description="Only this user's.")] = None,
) -> Page[BatchPublic]:
    batches, total = await ctx.read(
        search_batches,
        owner_id=owner_id,
        statuses=status,
        text=q,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[BatchPublic].model_construct(
        items=[batch_public(b) for b in batches], **page_fields(page, len(batches), total)
    )


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
