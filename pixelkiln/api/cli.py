"""``kiln serve`` and ``kiln users``: the server, and the accounts that may use it.

Wired into the ``kiln`` command by :mod:`pixelkiln.cli` (``serve`` as a
command, ``users_app`` as a sub-app); also runnable on its own as
``python -m pixelkiln.api.cli``.

Security default: without ``[auth] enabled = true`` anyone who can reach the
port may do anything, so ``serve`` refuses to bind anything but loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pixelkiln.api.schemas import MAX_GRANT
from pixelkiln.config import Settings, load_settings
from pixelkiln.db.credits import grant
from pixelkiln.db.database import Database
from pixelkiln.db.users import add_user, find_user, issue_token, list_users, revoke_tokens
from pixelkiln.exceptions import KilnError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="kiln.toml to use (default: ./kiln.toml or $KILN_CONFIG)."),
]

users_app = typer.Typer(
    help="API users: add them (prints a token), list them, grant credits.", no_args_is_help=True
)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost"; anything else is reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except KilnError as exc:
        err_console.print(f"[red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default [server] host: 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default [server] port: 8000).")] = None,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and run the scheduler in this process."""
    import uvicorn

    from pixelkiln.api.app import create_app

    settings = _settings(config)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    if not is_loopback(host) and not settings.auth.enabled:
        advice = (
            "without authentication anyone who can reach it could use it. Set [auth] "
            "enabled = true (and add users with `kiln users add`), or keep the default host "
            "127.0.0.1."
        )
        err_console.print(f"[red]Refusing to listen on {host}:[/] {escape(advice)}")
        raise typer.Exit(2)
    console.print(f"pixelkiln API on http://{host}:{port} (docs at /docs); Ctrl-C stops it")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=5,  # open event streams must not hold a shutdown forever
    )


def _with_db(config: Path | None, fn: Callable[[Database], T]) -> T:
    settings = _settings(config)
    try:
        db = Database.open(settings.storage.resolved_database_url())
        try:
            return fn(db)
        finally:
            db.close()
    except KilnError as exc:
        err_console.print(f"[red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except OverflowError:  # a user id past 64 bits names nobody
        err_console.print("[red]Error:[/] a number is out of range", highlight=False)
        raise typer.Exit(2) from None


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, . _ @ -).")],
    admin: Annotated[bool, typer.Option("--admin", help="May manage users and settings.")] = False,
    credits: Annotated[int, typer.Option(min=0, max=MAX_GRANT, help="Credits to start with.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Add a user and print their API token (shown this once; only its hash is kept)."""
    user, token = _with_db(
        config, lambda db: db.write(add_user, name, is_admin=admin, credits=credits)
    )
    role = "admin" if user.is_admin else "user"
    err_console.print(
        f"Added {role} '{user.name}' (id {user.id}) with {credits} credit(s). "
        "Their token (shown once):"
    )
    print(token)  # alone on stdout, for scripts


@users_app.command("token")
def users_token(
    name: Annotated[str, typer.Argument(help="User name or id.")],
    config: ConfigOption = None,
) -> None:
    """Issue another token for a user (the old ones keep working)."""

    def issue(db: Database) -> str:
        user = db.read(find_user, name)
        return db.write(issue_token, user.id, "cli")

    print(_with_db(config, issue))


@users_app.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(help="User name or id.")],
    config: ConfigOption = None,
) -> None:
    """Revoke every token of a user (a leaked one, say); `kiln users token` issues a new one."""

    def revoke(db: Database) -> int:
        return db.write(revoke_tokens, db.read(find_user, name).id)

    console.print(f"Revoked {_with_db(config, revoke)} token(s) of '{name}'.")


@users_app.command("list")
def users_list(config: ConfigOption = None) -> None:
    """Every user with role, state and credit balance."""
    rows = _with_db(config, lambda db: db.read(list_users))
    table = Table("id", "name", "role", "active", "credits")
    for user, balance in rows:
        role = "admin" if user.is_admin else "user"
        table.add_row(str(user.id), user.name, role, "yes" if user.active else "no", str(balance))
    console.print(table)


@users_app.command("grant")
def users_grant(
    name: Annotated[str, typer.Argument(help="User name or id.")],
    amount: Annotated[
        int,
        typer.Argument(
            min=-MAX_GRANT, max=MAX_GRANT, help="Credits to add (negative to take back)."
        ),
    ],
    note: Annotated[str, typer.Option(help="Why, for the ledger.")] = "",
    config: ConfigOption = None,
) -> None:
    """Add credits to a user's balance (an entry in the append-only ledger)."""

    def add(db: Database) -> int:
        user = db.read(find_user, name)
        return db.write(grant, user.id, amount, note or "granted on the command line")

    console.print(f"balance of '{name}': {_with_db(config, add)}")


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
app.command()(serve)
app.add_typer(users_app, name="users")

if __name__ == "__main__":
    app()
