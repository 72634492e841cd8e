"""``kiln webhooks``: the signing secret, a batch's deliveries, and delivering what is due.

Thin over :mod:`pixelkiln.service.webhooks`. The secret is the installation's
own: the one batches without an owner (``kiln run``, ``kiln serve`` without
auth) are signed with. ``deliver`` sends what is due and exits, for a cron job
on an installation where no ``kiln serve`` runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    BatchArg,
    ConfigOption,
    console,
    errors,
    settings_from,
)
from pixelkiln.config import Settings
from pixelkiln.db.batches import find_batch
from pixelkiln.service.webhooks import (
    DeliveryRound,
    deliver_due,
    deliveries,
    delivery_public,
    rotate_webhook_secret,
    webhook_secret,
)
from pixelkiln.wire.schemas import WebhookDeliveryPublic

T = TypeVar("T")

webhooks_app = typer.Typer(
    help="Webhooks: the signing secret, a batch's deliveries, delivering what is due.",
    no_args_is_help=True,
)


async def _with_service(settings: Settings, fn: Callable[[Kiln], Awaitable[T]]) -> T:
    async with Kiln(settings, engine=False) as kiln:  # no backend (nor its HTTP client) built
        return await fn(kiln)


@webhooks_app.command()
def secret(
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Replace it: deliveries from now on use the new one.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Print the secret this installation's webhooks are signed with (made on first use).

    It signs the batches of `kiln run`, and of `kiln serve` without auth; with
    auth on, each user reads their own at GET /api/v1/me/webhook-secret.
    """
    with errors():
        settings = settings_from(config)
        ask = rotate_webhook_secret if rotate else webhook_secret
        found = asyncio.run(_with_service(settings, lambda k: ask(k.service, service.LOCAL)))
    print(found)  # alone on stdout: SECRET=$(kiln webhooks secret)


@webhooks_app.command("list")
def list_(
    batch: BatchArg,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOption = None,
) -> None:
    """A batch's deliveries, oldest first: status, tries, the receiver's answer, last error."""

    async def look(kiln: Kiln) -> tuple[int, list[WebhookDeliveryPublic]]:
        found = await kiln.db.aread(find_batch, batch)
        rows = await deliveries(kiln.service, service.LOCAL, found.id)
        return found.id, [delivery_public(d) for d in rows]

    with errors():
        settings = settings_from(config)
        batch_id, rows = asyncio.run(_with_service(settings, look))
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    if not rows:
        console.print(f"Batch {batch_id}: no webhook deliveries (no webhook, or not ended yet).")
        return
    table = Table("id", "status", "tries", "answer", "last error", "created", "delivered / next")
    for r in rows:
        when = r.delivered_at if r.status == "delivered" else r.next_attempt_at
        table.add_row(
            str(r.id),
            r.status,
            str(r.attempts),
            "-" if r.response_code is None else str(r.response_code),
            escape(r.last_error or "-"),  # a cell is markup; an error may hold brackets
            _time(r.created_at),
            _time(when),
        )
    console.print(table)


@webhooks_app.command()
def deliver(
    within: Annotated[
        float,
        typer.Option(
            "--within",
            min=0,
            help="Start no try after this many seconds (tries under way then finish, "
            "each within [webhooks] timeout).",
        ),
    ] = 60.0,
    config: ConfigOption = None,
) -> None:
    """Deliver the webhook deliveries that are due now, of every batch, and exit (for cron).

    Exit code 0 when no try failed, 1 when some did (they are due again later).
    """
    with errors():
        settings = settings_from(config)
        done = asyncio.run(_with_service(settings, lambda k: deliver_due(k.service, within=within)))
    console.print(_round_text(done), highlight=False, markup=False)
    raise typer.Exit(EXIT_FAILED if done.failed else EXIT_OK)


def _round_text(done: DeliveryRound) -> str:
    tried = done.delivered + done.failed
    text = (
        f"{done.delivered} delivered, {done.failed} failed" if tried else "Nothing was due"
    ) + f"; {done.pending} pending"
    if done.next_due_at is not None:
        wait = max(0.0, done.next_due_at - time.time())
        text += f" (next due in {wait:.0f} s)"
    return text


def _time(stamp: float | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")
