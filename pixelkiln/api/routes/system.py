"""``/healthz`` (no auth), ``/metrics`` (Prometheus) and ``/api/v1/backends``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from pixelkiln import __version__
from pixelkiln.api import metrics
from pixelkiln.api.deps import AdminDep, CallerDep, CtxDep
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.backends.base import accepts_user_keys
from pixelkiln.db.batches import unfinished_batch_ids
from pixelkiln.engine.supervisor import health_answer
from pixelkiln.service import pricing_for
from pixelkiln.wire.schemas import BackendPublic, Health

health = APIRouter(tags=["system"])
protected = APIRouter(tags=["system"])


@health.get(
    "/healthz",
    summary="Liveness: the process answers, its database opens, its scheduler goes on",
    responses={503: {"model": Health, "description": "The scheduler cannot go on"}},
)
async def healthz(ctx: CtxDep, response: Response) -> Health:
    """503 when this process's scheduler has stopped, or has made no progress for
    ``[scheduler] stall_seconds`` (its steps keep failing: disk full, database gone)
    while work waits; ``scheduler`` says which, and why."""
    await ctx.read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    if ctx.runner is None:
        return Health(status="ok", version=__version__)
    report = ctx.runner.health()
    bound = ctx.settings.scheduler.stall_seconds
    # the query only when it could matter (a cheap one anyway)
    waiting = bool(await ctx.read(unfinished_batch_ids)) if report.may_be_stuck(bound) else False
    unhealthy = report.unhealthy(bound, waiting)  # stuck only while work waits
    if unhealthy:
        response.status_code = 503
    return health_answer(report, unhealthy=unhealthy, work_waiting=waiting)


@protected.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=ERRORS,
    summary="Prometheus metrics",
)
async def prometheus(ctx: CtxDep, _: AdminDep) -> PlainTextResponse:
    """Counts across every user: with auth on, an admin's token (Prometheus ``bearer_token``)."""
    snap = await ctx.read(metrics.snapshot)
    status = await ctx.runner.status() if ctx.runner else None
    text = metrics.render(snap, list(ctx.kiln.backends), status)
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)


@protected.get("/api/v1/backends", responses=ERRORS, summary="Configured generators and prices")
async def backends(ctx: CtxDep, caller: CallerDep) -> list[BackendPublic]:
    """Names to use as ``backend``, and what an image costs you on each."""
    pricing = await pricing_for(ctx.service, caller.user_id)
    return [
        BackendPublic(
            name=name,
            type=b.settings.type,
            model=b.settings.model,
            credits_per_image=pricing.price(name),
            own_key=name in pricing.own_keys,
            takes_own_key=accepts_user_keys(b),
        )
        for name, b in ctx.kiln.backends.items()
    ]
