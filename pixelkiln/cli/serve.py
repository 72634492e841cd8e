"""``kiln serve``: the HTTP API, the web UI and the scheduler in one process.

Security default: without ``[auth] enabled = true`` anyone who can reach the
port may do anything, so ``serve`` refuses to bind anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

import typer
from rich.markup import escape

from pixelkiln.cli.common import (
    ConfigOption,
    console,
    err_console,
    errors,
    settings_from,
    setup_logging,
)
from pixelkiln.config import Settings
from pixelkiln.storage import check_storage

log = logging.getLogger("pixelkiln.serve")


def _banner(host: str, port: int, docs_url: str | None) -> str:
    """The start-up line; it names the docs only where the app serves them (not with auth on)."""
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    docs = f" (docs at {docs_url})" if docs_url else ""
    return f"pixelkiln API on http://{shown}:{port}{docs}; Ctrl-C stops it"


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default [server] host: 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default [server] port: 8000).")] = None,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Run tasks here too (default), or serve only the API and web UI while "
            "`kiln worker` processes on the same database run them.",
        ),
    ] = True,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs unless auth is on) and run the scheduler here.

    With --no-worker nothing runs here: `kiln worker` processes sharing the
    database run the tasks (see docs/deploy.md). pixelkiln's own log goes to a
    timestamped file in <data_dir>/logs, as ``kiln run``'s does; uvicorn's
    access log stays on the console.
    """
    import uvicorn

    from pixelkiln.api.app import create_app
    from pixelkiln.api.hosts import is_loopback_host
    from pixelkiln.backends import check_backend_settings

    with errors():
        settings = settings_from(config)
        check_storage(settings.storage)  # a bucket that cannot be used: exit 2, say why
        check_backend_settings(settings.backends)  # one only its backend judges: exit 2
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    if not is_loopback_host(host) and not settings.auth.enabled:
        advice = (
            "without authentication anyone who can reach it could use it. Set [auth] "
            "enabled = true (and add users with `kiln users add`), or keep the default host "
            "127.0.0.1."
        )
        err_console.print(f"[red]Refusing to listen on {escape(host)}:[/] {escape(advice)}")
        raise typer.Exit(2)
    with errors():
        log_path = setup_logging(settings, prefix="serve")
    warn_of_the_key(settings)
    app = create_app(
        settings, run_scheduler=worker, drain_seconds=settings.scheduler.shutdown_seconds
    )
    log.info(
        "serving on %s:%s; data folder %s; tasks run %s",
        host,
        port,
        settings.storage.data_dir,
        "here" if worker else "by kiln worker processes",
    )
    console.print(_banner(host, port, app.docs_url), highlight=False)
    if not worker:
        console.print("  tasks     run by `kiln worker` processes (--no-worker)", markup=False)
    console.print(f"  log       {log_path}", highlight=False, markup=False)
    server = _draining_server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=5,  # open event streams must not hold a shutdown forever
        )
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C re-raised once shut down: exit 0
            server.run()
    finally:
        _close_leftovers(app)


def warn_of_the_key(settings: Settings) -> None:
    """A WARNING (console and log) while the secret key lives beside the data it protects
    (``kiln serve`` and ``kiln worker``, once their log is set up)."""
    from pixelkiln.keybox import secret_key_warning  # cryptography: only when serving

    warning = secret_key_warning(settings)
    if warning is not None:
        log.warning("%s", warning)
        err_console.print(f"[yellow]Warning:[/] {escape(warning)}", highlight=False)


#: seconds a forced stop waits for the scheduler thread to give back what it holds
FORCED_STOP_SECONDS = 30.0
#: seconds a forced stop gives open requests (event streams) to end once told
REQUESTS_SECONDS = 2.0


def _close_leftovers(app: Any) -> None:
    """Whatever way uvicorn ended, nothing is left held: should the app's shutdown not
    have run to its end (it never should; this is the last line), the scheduler thread is
    hurried and waited for (bounded) and the installation closed here."""
    if getattr(app.state, "closed", False):
        return
    ctx = getattr(app.state, "ctx", None)
    if ctx is None:  # never started: nothing was opened
        return
    runner = ctx.runner
    if runner is not None and not runner.stop_within(FORCED_STOP_SECONDS):
        log.error(
            "the scheduler did not stop within %g s; what it holds returns to the queue "
            "when its leases lapse",
            FORCED_STOP_SECONDS,
        )
    with contextlib.suppress(Exception):
        asyncio.run(ctx.kiln.aclose())
    log.info("closed after a forced stop")


def _draining_server(config: Any) -> Any:
    """uvicorn's server (imported on use: it is slow to import), where a second Ctrl-C /
    SIGTERM also hurries the scheduler's drain: the first lets running tasks finish within
    ``[scheduler] shutdown_seconds`` (the app's shutdown), the second gives what still runs
    back to the queue now.

    A second Ctrl-C while a request is still open (an event stream: uvicorn waits for
    those first) makes uvicorn skip the app's shutdown (its ``force_exit``), where the
    scheduler gives back what it holds and the installation closes. Here the open
    requests are ended instead (their connections closed: each ends as a client that
    left would) and the app's shutdown runs all the same, hurried.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                runner = _runner_of(self.config.app)
                if runner is not None:
                    log.info("second stop signal: giving running tasks back now")
                    runner.hurry()
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            if self.force_exit:  # uvicorn skipped the app's shutdown: run it here
                await self._end_requests()
                await self.lifespan.shutdown()

        async def _end_requests(self) -> None:
            state = self.server_state
            for connection in list(state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()  # the request sees its client gone, and ends
            if state.tasks:
                await asyncio.wait(list(state.tasks), timeout=REQUESTS_SECONDS)
            for task in list(state.tasks):
                task.cancel()

    return DrainingServer(config)


def _runner_of(app: Any) -> Any:
    """The scheduler thread of the app (None: none runs, or not started yet)."""
    ctx = getattr(getattr(app, "state", None), "ctx", None)
    return getattr(ctx, "runner", None)
