"""``kiln serve``: the HTTP API, the web UI and the scheduler in one process.

Security default: without ``[auth] enabled = true`` anyone who can reach the
port may do anything, so ``serve`` refuses to bind anything but loopback.
"""

from __future__ import annotations

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

    with errors():
        settings = settings_from(config)
        check_storage(settings.storage)  # a bucket that cannot be used: exit 2, say why
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
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C re-raised once shut down: exit 0
        server.run()


def _draining_server(config: Any) -> Any:
    """uvicorn's server (imported on use: it is slow to import), where a second Ctrl-C /
    SIGTERM also hurries the scheduler's drain: the first lets running tasks finish within
    ``[scheduler] shutdown_seconds`` (the app's shutdown), the second gives what still runs
    back to the queue now."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                ctx = getattr(getattr(self.config.app, "state", None), "ctx", None)
                runner = getattr(ctx, "runner", None)
                if runner is not None:
                    log.info("second stop signal: giving running tasks back now")
                    runner.hurry()
            super().handle_exit(sig, frame)

    return DrainingServer(config)
