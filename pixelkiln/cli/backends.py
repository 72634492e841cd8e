"""``kiln backends list|check``: the configured generator backends."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from pixelkiln.backends.check import all_ok, check_backends, print_reports
from pixelkiln.cli.common import EXIT_FAILED, EXIT_OK, ConfigOption, console, errors, settings_from

backends_app = typer.Typer(help="Inspect the configured generator backends.", no_args_is_help=True)


@backends_app.command("list")
def backends_list(config: ConfigOption = None) -> None:
    """The configured backends (the offline placeholder when none is configured)."""
    with errors():
        settings = settings_from(config)
    table = Table("name", "type", "servers", "slots", "rpm", "model")
    for b in settings.effective_backends():
        table.add_row(
            b.name,
            b.type,
            ", ".join(b.urls) or "-",
            str(b.slots),
            str(b.rpm or "-"),
            b.model or "-",
        )
    console.print(table)


@backends_app.command("check")
def backends_check(
    names: Annotated[
        list[str] | None, typer.Argument(help="Backends to probe; default: all.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Probe every server of the backends: reachable, latency, models, errors."""
    with errors():
        settings = settings_from(config)
        reports = asyncio.run(check_backends(settings, names or None))
    print_reports(reports, console)
    raise typer.Exit(EXIT_OK if all_ok(reports) else EXIT_FAILED)
