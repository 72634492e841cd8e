"""``kiln concurrency``: the limits an admin changes while the server runs.

The values are stored in the database (like ``PUT /api/v1/admin/concurrency``)
and win over kiln.toml until reset; a running ``kiln serve`` applies them
within a few seconds, and the next one starts with them.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.cli.common import ConfigOption, console, errors, settings_from
from pixelkiln.config import Settings
from pixelkiln.exceptions import ConfigError


def concurrency(
    value: Annotated[
        int | None,
        typer.Argument(help="New limit: tasks at once in all, or per server with --backend."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", "-b", help="Change this backend's limit.")
    ] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the value in kiln.toml.")] = False,
    config: ConfigOption = None,
) -> None:
    """Show or change the concurrency: the global limit, or a backend's per server."""
    with errors():
        settings = settings_from(config)
        if reset and value is not None:
            raise ConfigError("give a value or --reset, not both")
        _show(asyncio.run(_change(settings, backend, value, reset)))


async def _change(
    settings: Settings, backend: str | None, value: int | None, reset: bool
) -> service.ConcurrencyView:
    """The change asked for (the service checks it), then the limits now."""
    async with Kiln(settings, engine=False) as kiln:  # no backend (nor HTTP client) is built
        ctx, me = kiln.service, service.LOCAL
        if backend is not None and reset:
            return await service.reset_backend_concurrency(ctx, me, backend)
        if backend is not None and value is not None:
            return await service.set_backend_concurrency(ctx, me, backend, value)
        if backend is None and reset:
            return await service.reset_concurrency(ctx, me)
        if backend is None and value is not None:
            return await service.set_concurrency(ctx, me, value)
        return await service.concurrency_view(ctx)  # nothing to change: only shown


def _show(view: service.ConcurrencyView) -> None:
    where = "set at run time" if view.set_at_run_time else "kiln.toml"
    console.print(f"Global concurrency: [bold]{view.concurrency}[/] ({where})", highlight=False)
    table = Table("backend", "per server", "kiln.toml", "servers", "cap", "at most", "bound by")
    for b in view.backends:
        table.add_row(
            b.name,
            f"{b.per_url}{' *' if b.overridden else ''}",
            str(b.configured),
            str(b.servers),
            str(b.cap),
            str(b.effective),
            b.limited_by,
        )
    console.print(table)
    console.print(
        "* set at run time. 'at most' counts every server as up; a running server's "
        "/api/v1/admin/concurrency shows the servers up now.",
        highlight=False,
    )
