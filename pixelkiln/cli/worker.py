"""``kiln worker``: run the tasks of every batch in the database, without the HTTP API.

Start as many as the generators can keep busy, on any machine that reaches
the database (and the shared image storage); see docs/deploy.md. SIGTERM or
Ctrl-C stops one gracefully (:mod:`pixelkiln.engine.worker`), exit 0.

Exit codes: 0 stopped by a signal, 1 it could not go on, 2 bad config or option.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer
from rich.markup import escape

from pixelkiln.cli.common import (
    EXIT_OK,
    ConfigOption,
    LogLevelOption,
    console,
    err_console,
    errors,
    settings_from,
    setup_logging,
)
from pixelkiln.exceptions import ConfigError


def worker(
    config: ConfigOption = None,
    backends: Annotated[
        str | None,
        typer.Option(
            "--backends",
            help="Claim only these backends' tasks, comma-separated (default: every "
            "configured one); the others wait for other workers.",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Tasks at once in this worker (default [scheduler] concurrency)."),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Answer GET /healthz and /metrics on this port (default [worker] "
            "health_port; 0: none).",
        ),
    ] = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run tasks of every batch in the database until SIGTERM, without the HTTP API.

    The first SIGTERM (or Ctrl-C) stops claiming: running tasks get [scheduler]
    shutdown_seconds to finish, then go back to the queue untried; a second one
    gives them back at once. The log goes to <data_dir>/logs/worker_*.log.
    """
    # a stop signal from here on stops the worker gracefully, even one that comes while
    # the engine is still being imported (a deployment stopped as it starts): noted now,
    # handed to the worker once it is built, and it exits 0 holding nothing
    early: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: early.append(signal.Signals(number).name))
    # here, not at the top: its companions import cron parsing and the retention rules,
    # which no other command pays for at start
    from pixelkiln.cli.serve import warn_of_the_key
    from pixelkiln.engine.worker import STOP_SIGNALS, Worker

    with errors():
        settings = settings_from(config, log_level)
        names = _backend_names(backends)
        port = settings.worker.health_port if health_port is None else health_port
        health = (settings.worker.health_host, port) if port else None
        log_path = setup_logging(settings, prefix="worker")
        warn_of_the_key(settings)
        runner = Worker(
            settings,
            backends=names,
            concurrency=concurrency,
            health=health,
            say=lambda text: err_console.print(f"[yellow]{escape(text)}", highlight=False),
        )
        shown = "every backend" if names is None else ", ".join(names)
        console.print(f"pixelkiln worker: {shown}; SIGTERM or Ctrl-C stops it", markup=False)
        if health is not None:
            console.print(f"  health    http://{health[0]}:{health[1]}/healthz", markup=False)
        console.print(f"  log       {log_path}", markup=False, highlight=False)
        # a stop signal during start-up (before the loop installs its handlers) counts too
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda number, _frame: runner.stop(signal.Signals(number).name))
        for why in early[:2]:  # the first drains, the second gives back at once
            runner.stop(why)
        asyncio.run(runner.run())
    console.print("Worker stopped; nothing held.", highlight=False)
    raise typer.Exit(EXIT_OK)


def _backend_names(text: str | None) -> list[str] | None:
    """``--backends a,b`` as names (None: all); checked against the config when it starts."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--backends names no backend; give names, e.g. --backends sd,openai")
    return names
