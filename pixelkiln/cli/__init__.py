"""The ``kiln`` command: one module per command group, all thin over the service layer.

Exit codes: 0 every task succeeded (or nothing to do), 1 some task failed or
was cancelled, 2 bad input (spec, config, unknown batch), 130 interrupted.

Start-up: this package imports none of its command modules. :data:`COMMANDS` names each
command, where it lives and its one-line help, so ``kiln --help`` lists them all and
``kiln status`` imports ``cli/batches.py`` (and what it needs) and nothing else: every
command, and every test that starts ``kiln serve`` as a subprocess, pays only for its own
imports. ``tests/unit/test_startup.py`` holds each line equal to the command's own help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, MutableMapping
from importlib import import_module
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

log = logging.getLogger("pixelkiln.cli")


class Lazy(NamedTuple):
    """A command that is imported when it is run, or its help is asked for."""

    #: ``module:attribute``: a command function, or the ``typer.Typer`` of a command group
    target: str
    #: what ``kiln --help`` shows for it: the command's own one-line help
    summary: str


#: every command, in the order ``kiln --help`` lists them
COMMANDS: dict[str, Lazy] = {
    "run": Lazy(
        "pixelkiln.cli.run:run", "Run a batch file to the end, with a progress bar and a summary."
    ),
    "submit": Lazy(
        "pixelkiln.cli.submit:submit",
        "Check and queue a batch file without running it; print its id.",
    ),
    "plan": Lazy(
        "pixelkiln.cli.plan:plan",
        "Say what a batch file would take: tasks, images, credits, time and money per backend.",
    ),
    "resume": Lazy(
        "pixelkiln.cli.run:resume",
        "Continue interrupted (or paused) batches, redoing only unfinished tasks.",
    ),
    "retry": Lazy(
        "pixelkiln.cli.run:retry",
        "Put a batch's failed tasks (and with --cancelled, cancelled ones) back in the queue.",
    ),
    "regenerate": Lazy(
        "pixelkiln.cli.run:regenerate",
        "Run chosen tasks of a batch again, succeeded ones too (--keys s1,s2 or --tasks 7,9).",
    ),
    "cancel": Lazy(
        "pixelkiln.cli.batches:cancel",
        "Cancel a batch: pending tasks at once, running ones at their runner's next check.",
    ),
    "status": Lazy(
        "pixelkiln.cli.batches:status",
        "Show one batch (counts, progress, ETA), or the recent project runs and batches.",
    ),
    "report": Lazy(
        "pixelkiln.cli.batches:report",
        "A batch's report: time range, totals, success rate, rates, each failure and why.",
    ),
    "export": Lazy(
        "pixelkiln.cli.batches:export",
        "Copy a batch's images and a manifest.json out, or write it as a spreadsheet.",
    ),
    "sheet": Lazy(
        "pixelkiln.cli.sheet:sheet",
        "Draw a sweep batch's contact sheets (x columns, y rows, one PNG per z value).",
    ),
    "init": Lazy(
        "pixelkiln.cli.batches:init",
        "Write a commented sample kiln.toml and batch.yaml (and batch.xlsx) to start from.",
    ),
    "serve": Lazy(
        "pixelkiln.cli.serve:serve",
        "Serve the HTTP API (OpenAPI at /docs unless auth is on) and run the scheduler here.",
    ),
    "worker": Lazy(
        "pixelkiln.cli.worker:worker",
        "Run tasks of every batch in the database until SIGTERM, without the HTTP API.",
    ),
    "concurrency": Lazy(
        "pixelkiln.cli.admin:concurrency",
        "Show or change the concurrency: the global limit, or a backend's per server.",
    ),
    "gc": Lazy(
        "pixelkiln.cli.gc:gc",
        "Delete old batches, events and uploads by the [retention] rules (see docs/retention.md).",
    ),
    "backends": Lazy(
        "pixelkiln.cli.backends:backends_app", "Inspect the configured generator backends."
    ),
    "users": Lazy("pixelkiln.cli.users:users_app", "API users, their tokens and credits."),
    "webhooks": Lazy(
        "pixelkiln.cli.webhooks:webhooks_app",
        "Webhooks: the signing secret, a batch's deliveries, delivering what is due.",
    ),
    "queue": Lazy(
        "pixelkiln.cli.queue:queue_app",
        "The queue: unfinished batches in the order they are claimed; move one.",
    ),
    "projects": Lazy(
        "pixelkiln.cli.projects:projects_app",
        "Project runs: a studio's config of project folders, one batch per project.",
    ),
    "schedule": Lazy(
        "pixelkiln.cli.schedule:schedule_app",
        "Cron schedules of project runs and batch files; `kiln serve` runs them.",
    ),
    "dev": Lazy(
        "pixelkiln.cli.dev:dev_app",
        "Developer tools: fake generators for demos, tests and benchmarks.",
    ),
}

#: how the commands are built: the same settings for the app and each command it loads
_SETTINGS: dict[str, Any] = {
    "rich_markup_mode": None,  # help texts name [sections] of kiln.toml: not Rich markup
    "add_completion": False,
    "pretty_exceptions_enable": False,
}


def load_command(name: str) -> Any:
    """The click command (or group) ``kiln NAME`` runs, built as if registered on the app."""
    module, attribute = COMMANDS[name].target.split(":")
    found = getattr(import_module(module), attribute)
    holder = typer.Typer(**_SETTINGS)
    if isinstance(found, typer.Typer):
        holder.add_typer(found, name=name)
    else:
        holder.command(name=name)(found)
    return typer.main.get_group(holder).commands[name]


class _Commands(MutableMapping[str, Any]):
    """The app's commands by name, each built on first use: listing them costs nothing."""

    def __init__(self) -> None:
        self.built: dict[str, Any] = dict.fromkeys(COMMANDS)  # None: not built yet

    def __getitem__(self, name: str) -> Any:
        if self.built[name] is None:  # KeyError: no such command
            self.built[name] = load_command(name)
        return self.built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.built)

    def __len__(self) -> int:
        return len(self.built)


def _short(summary: str, limit: int) -> str:
    """``summary`` cut as click cuts a command's help to fit the list."""
    return TyperCommand(name=None, help=summary).get_short_help_str(limit)


class _Kiln(TyperGroup):
    """The root group: commands come from :data:`COMMANDS`, imported when one is run."""

    def __init__(self, **attrs: Any) -> None:
        attrs["commands"] = None  # the app registers none: they are all in COMMANDS
        super().__init__(**attrs)
        self.commands = _Commands()

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        # not .get(): a command that fails to import says why, never "No such command"
        return self.commands[cmd_name] if cmd_name in self.commands else None

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # not TyperGroup's, which builds every command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The list in ``kiln --help``, from :data:`COMMANDS`: as click writes it, but
        without importing every command to read its help."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, _short(lazy.summary, limit)) for name, lazy in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=_Kiln,
    help="pixelkiln: batch image generation. Queue thousands of prompts, come back to images.",
    no_args_is_help=True,
    **_SETTINGS,
)


@app.callback()
def _kiln() -> None:
    # A callback makes the app a group even though it registers no command itself.
    pass


def main() -> None:
    """Console-script entry point."""
    started = time.monotonic()
    try:
        app()
    finally:
        log.debug("kiln finished in %.2f s", time.monotonic() - started)


__all__ = ["COMMANDS", "app", "load_command", "main"]
