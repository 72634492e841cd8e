"""``kiln concurrency``: the limits an admin changes while the server runs.

The values are stored in the database (like ``PUT /api/v1/admin/concurrency``)
and win over kiln.toml until reset; a running ``kiln serve`` applies them
within a few seconds, and the next one starts with them.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pixelkiln.cli.common import ConfigOption, console, errors, settings_from, with_db
from pixelkiln.config import Settings
from pixelkiln.db.database import Database
from pixelkiln.db.settings_store import (
    CONCURRENCY,
    backend_concurrency_key,
    delete_setting,
    set_setting,
    stored_concurrency,
)
from pixelkiln.engine.limits import configured_limits
from pixelkiln.exceptions import ConfigError, NotFoundError

#: the highest per-URL concurrency (as in ``[[backends]] concurrency``)
MAX_PER_URL = 256


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
        with_db(settings, lambda db: _change_and_show(db, settings, backend, value, reset))


def _change_and_show(
    db: Database, settings: Settings, backend: str | None, value: int | None, reset: bool
) -> None:
    """One database opening for both (opening migrates and starts the writer)."""
    if value is not None or reset:
        _change(db, settings, backend, value, reset)
    _show(db, settings)


def _change(
    db: Database, settings: Settings, backend: str | None, value: int | None, reset: bool
) -> None:
    if reset and value is not None:
        raise ConfigError("give a value or --reset, not both")
    if backend is None:
        top = settings.server.max_concurrency
        if value is not None and not 1 <= value <= top:
            raise ConfigError(f"concurrency must be between 1 and {top} ([server] max_concurrency)")
        key = CONCURRENCY
    else:
        names = [b.name for b in settings.effective_backends()]
        if backend not in names:
            raise NotFoundError(f"no backend '{backend}'; configured: {', '.join(names)}")
        if value is not None and not 1 <= value <= MAX_PER_URL:
            raise ConfigError(f"a backend's concurrency must be between 1 and {MAX_PER_URL}")
        key = backend_concurrency_key(backend)
    if reset:
        db.write(delete_setting, key)
    else:
        db.write(set_setting, key, value)


def _show(db: Database, settings: Settings) -> None:
    stored_overall, stored = db.read(stored_concurrency)
    overall = stored_overall or settings.scheduler.concurrency
    where = "set at run time" if stored_overall else "kiln.toml"
    console.print(f"Global concurrency: [bold]{overall}[/] ({where})", highlight=False)
    table = Table("backend", "per server", "kiln.toml", "servers", "cap", "at most", "bound by")
    for name, limit in configured_limits(settings.effective_backends(), stored).items():
        effective, why = limit.effective(overall)
        table.add_row(
            name,
            f"{limit.per_url}{' *' if name in stored else ''}",
            str(limit.configured),
            str(limit.servers),
            str(limit.slots),
            str(effective),
            why,
        )
    console.print(table)
    console.print(
        "* set at run time. 'at most' counts every server as up; a running server's "
        "/api/v1/admin/concurrency shows the servers up now.",
        highlight=False,
    )
