"""The ``kiln`` command: one module per command group, all thin over the service layer.

Exit codes: 0 every task succeeded (or nothing to do), 1 some task failed or
was cancelled, 2 bad input (spec, config, unknown batch), 130 interrupted.
"""

from __future__ import annotations

import logging
import time

import typer

from pixelkiln.cli import admin, batches, gc, plan, run, serve, sheet, submit, worker
from pixelkiln.cli.backends import backends_app
from pixelkiln.cli.dev import dev_app
from pixelkiln.cli.projects import projects_app
from pixelkiln.cli.queue import queue_app
from pixelkiln.cli.schedule import schedule_app
from pixelkiln.cli.users import users_app
from pixelkiln.cli.webhooks import webhooks_app

log = logging.getLogger("pixelkiln.cli")

app = typer.Typer(
    rich_markup_mode=None,  # help texts name [sections] of kiln.toml: not Rich markup
    help="pixelkiln: batch image generation. Queue thousands of prompts, come back to images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run.run)
app.command()(submit.submit)
app.command()(plan.plan)
app.command()(run.resume)
app.command()(run.retry)
app.command()(run.regenerate)
app.command()(batches.cancel)
app.command()(batches.status)
app.command()(batches.report)
app.command()(batches.export)
app.command()(sheet.sheet)
app.command()(batches.init)
app.add_typer(backends_app, name="backends")
app.command()(serve.serve)
app.command()(worker.worker)
app.command()(admin.concurrency)
app.command()(gc.gc)
app.add_typer(users_app, name="users", help="API users, their tokens and credits.")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(queue_app, name="queue")
app.add_typer(projects_app, name="projects")
app.add_typer(schedule_app, name="schedule")
app.add_typer(dev_app, name="dev")


def main() -> None:
    """Console-script entry point."""
    started = time.monotonic()
    try:
        app()
    finally:
        log.debug("kiln finished in %.2f s", time.monotonic() - started)


__all__ = ["app", "main"]
