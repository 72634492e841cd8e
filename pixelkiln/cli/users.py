"""``kiln users``: the accounts that may use the API, their tokens and credits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from pixelkiln.cli.common import (
    EXIT_BAD_INPUT,
    ConfigOption,
    console,
    err_console,
    errors,
    print_error,
    settings_from,
)
from pixelkiln.cli.common import with_db as _open_db
from pixelkiln.db.credits import grant
from pixelkiln.db.database import Database
from pixelkiln.db.users import (
    User,
    add_user,
    find_user,
    issue_token,
    list_users,
    revoke_tokens,
    set_share,
)
from pixelkiln.exceptions import KilnError
from pixelkiln.wire.schemas import MAX_GRANT, MAX_SHARE

T = TypeVar("T")

SHARE_HELP = (
    f"Weight in fair share, above 0 and at most {MAX_SHARE:g}: among tasks of equal "
    "priority, a user with 2 runs twice as many as one with 1 (the default)."
)

users_app = typer.Typer(
    help="API users, their tokens and credits.",
    no_args_is_help=True,
)


def _with_db(config: Path | None, fn: Callable[[Database], T]) -> T:
    """Every refusal here is the caller's input (no such user, a balance limit): exit 2."""
    with errors():  # a bad config, or a user id past 64 bits (OverflowError): exit 2
        settings = settings_from(config)
        try:
            return _open_db(settings, fn)
        except KilnError as exc:
            print_error(exc)
            raise typer.Exit(EXIT_BAD_INPUT) from None


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, . _ @ -).")],
    admin: Annotated[bool, typer.Option("--admin", help="May manage users and settings.")] = False,
    credits: Annotated[int, typer.Option(min=0, max=MAX_GRANT, help="Credits to start with.")] = 0,
    share: Annotated[float, typer.Option(help=SHARE_HELP)] = 1.0,
    config: ConfigOption = None,
) -> None:
    """Add a user and print their API token (shown this once; only its hash is kept)."""
    user, token = _with_db(
        config, lambda db: db.write(add_user, name, is_admin=admin, credits=credits, share=share)
    )
    role = "admin" if user.is_admin else "user"
    err_console.print(
        f"Added {role} '{user.name}' (id {user.id}) with {credits} credit(s). "
        "Their token (shown once):",
        markup=False,
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

    console.print(f"Revoked {_with_db(config, revoke)} token(s) of '{name}'.", markup=False)


@users_app.command("list")
def users_list(config: ConfigOption = None) -> None:
    """Every user with role, state and credit balance."""
    rows = _with_db(config, lambda db: db.read(list_users))
    table = Table("id", "name", "role", "active", "credits", "share")
    for user, balance in rows:
        role = "admin" if user.is_admin else "user"
        active = "yes" if user.active else "no"
        table.add_row(
            str(user.id), escape(user.name), role, active, str(balance), f"{user.share:g}"
        )
    console.print(table)


@users_app.command("share")
def users_share(
    name: Annotated[str, typer.Argument(help="User name or id.")],
    weight: Annotated[float, typer.Argument(help=SHARE_HELP)],
    config: ConfigOption = None,
) -> None:
    """Set a user's weight in fair share: among tasks of equal priority, users run tasks in
    proportion to their shares (docs/queue-policy.md). Every worker follows at its next claim.
    """

    def change(db: Database) -> User:
        return db.write(set_share, db.read(find_user, name).id, weight)

    user = _with_db(config, change)
    console.print(f"share of '{user.name}': {user.share:g}", markup=False)


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

    console.print(f"balance of '{name}': {_with_db(config, add)}", markup=False)
