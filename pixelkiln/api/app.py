"""The FastAPI app: one :class:`~pixelkiln.app.Kiln` and its scheduler, run by the lifespan.

>>> app = create_app(load_settings(None))                 # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)         # what `kiln serve` does

Every route lives under ``/api/v1`` (OpenAPI at ``/docs``) except ``/healthz``
and ``/metrics``. With ``[auth] enabled`` every route but ``/healthz`` needs a
bearer token; the dependency is attached to the routers here, once, so a new
route cannot forget it. The one exception is ``images.files`` (an image's file,
thumbnail and inputs), whose routes each take a token *or* a signed link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from pixelkiln import __version__
from pixelkiln.api.compat import compat_routers
from pixelkiln.api.deps import ApiContext, get_caller
from pixelkiln.api.errors import BodyLimit, install_error_handlers
from pixelkiln.api.head import HeadAsGet
from pixelkiln.api.hosts import LocalHostsOnly
from pixelkiln.api.openapi import complete_schema
from pixelkiln.api.plain_text import refuse_control_text
from pixelkiln.api.routes import (
    admin,
    assets,
    batches,
    events,
    exports,
    images,
    presets,
    queue,
    session,
    sheets,
    system,
    tables,
    tasks,
)
from pixelkiln.api.routes import users as users_routes
from pixelkiln.api.routes import webhooks as webhooks_routes
from pixelkiln.api.runner import SchedulerThread
from pixelkiln.api.sse import FrameCache
from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.settings_store import stored_concurrency
from pixelkiln.web import SecurityHeaders, mount_web

log = logging.getLogger("pixelkiln.api")


def create_app(
    settings: Settings, *, run_scheduler: bool = True, drain_seconds: float = 0.0
) -> FastAPI:
    """The API for ``settings``; the Kiln opens and the scheduler starts with the lifespan.

    ``run_scheduler=False`` serves the API only (another process, e.g. ``kiln
    worker``, runs the tasks). ``drain_seconds``: at shutdown, how long running tasks
    may take to finish before they are given back untried (``kiln serve`` passes
    ``[scheduler] shutdown_seconds``; 0: given back at once).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the API builds no backends: the scheduler thread builds them on its own loop
        async with Kiln(settings, engine=False) as kiln:
            ctx = ApiContext(settings=settings, kiln=kiln, keys=kiln.keys)
            if run_scheduler:
                ctx.runner = await _start_scheduler(ctx)
            app.state.ctx = ctx
            try:
                yield
            finally:
                if ctx.runner is not None and drain_seconds > 0 and not ctx.runner.hurried:
                    log.info(
                        "stopping: claiming nothing more; running tasks have %g s to finish, "
                        "then they go back to the queue untried",
                        drain_seconds,
                    )
                    await asyncio.to_thread(ctx.runner.drain, drain_seconds)
                elif ctx.runner is not None:
                    await asyncio.to_thread(ctx.runner.stop)
                ctx.pool.shutdown(wait=True)
        app.state.closed = True  # the Kiln too: `kiln serve` need not close it (cli/serve.py)

    open_docs = not settings.auth.enabled  # with auth on, the schema needs a token too
    app = FastAPI(
        title="pixelkiln",
        version=__version__,
        summary="Batch image generation: queue thousands of prompts, come back to images.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if open_docs else None,
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
    )
    app.state.frames = FrameCache()
    install_error_handlers(app)
    limits = settings.server
    app.add_middleware(
        BodyLimit, max_bytes=limits.max_request_bytes, max_other=limits.max_spec_bytes
    )
    app.add_middleware(HeadAsGet)  # curl -I on an image's URL: the GET's headers
    # every API route (not the pages: they answer a page) refuses control characters, first
    text = [Depends(refuse_control_text)]
    app.include_router(system.health, dependencies=text)
    # signing in needs no token yet
    app.include_router(session.router, prefix="/api/v1", dependencies=text)
    secured = [*text, Depends(get_caller)]
    app.include_router(system.protected, dependencies=secured)
    if not open_docs:
        app.include_router(_schema_route(app), dependencies=secured)
    for router in (
        batches.router,
        exports.router,
        tasks.router,
        images.router,
        assets.router,
        events.router,
        presets.router,
        queue.router,
        users_routes.me,
        users_routes.admin,
        admin.router,
        webhooks_routes.router,
        tables.router,
        sheets.router,
    ):
        app.include_router(router, prefix="/api/v1", dependencies=secured)
    # its routes take a token or a signed link (ImageScopeDep): never without one of them
    app.include_router(images.files, prefix="/api/v1", dependencies=text)
    for router in compat_routers(settings.compat):  # other tools' shapes, where switched on
        app.include_router(router, dependencies=secured)
    mount_web(app)  # the browser UI: pages over the routes above, and their static files
    app.add_middleware(SecurityHeaders)
    token_free = [("", system.health), ("/api/v1", session.router)]
    app.openapi = lambda: complete_schema(  # type: ignore[method-assign]
        app,
        token_free,
        tokens=settings.auth.enabled,
        max_concurrency=settings.server.max_concurrency,
    )
    if not settings.auth.enabled:  # nobody signs in: only this machine may ask (DNS rebinding)
        app.add_middleware(LocalHostsOnly, allowed=settings.auth.allowed_origins)
    return app


def _schema_route(app: FastAPI) -> APIRouter:
    """``/openapi.json`` behind the token (the interactive /docs page is off with auth on)."""
    router = APIRouter()

    @router.get("/openapi.json", include_in_schema=False)
    async def schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    return router


async def _start_scheduler(ctx: ApiContext) -> SchedulerThread:
    """The scheduler, on its own loop, at the limits an admin last set (else configured)."""
    overall, per_backend = await ctx.read(stored_concurrency)
    runner = SchedulerThread(ctx.kiln, overall, per_backend)
    await asyncio.to_thread(runner.start)
    return runner
