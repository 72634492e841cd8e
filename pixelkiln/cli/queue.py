"""``kiln queue list`` and ``kiln queue move BATCH --top|--bottom``: the order unfinished
batches are claimed in, and moving one to either end.

Thin over :mod:`pixelkiln.service.queue`. The CLI is the installation itself, so it
sees and moves every user's batches (``PUT /api/v1/queue`` moves only the caller's):
a batch moved to the top takes the first place of all, priority included, and the
batches it passes each go one place back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.cli.common import BatchArg, ConfigOption, console, errors, settings_from
from pixelkiln.config import Settings
from pixelkiln.db.batches import find_batch
from pixelkiln.exceptions import ConfigError
from pixelkiln.service import queue as queues

queue_app = typer.Typer(
    help="The queue: unfinished batches in the order they are claimed; move one.",
    no_args_is_help=True,
)


@queue_app.command("list")
def list_queue(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="How many batches to show.")] = 100,
    config: ConfigOption = None,
) -> None:
    """Queued, running and paused batches, first to be claimed first."""
    with errors():
        found = asyncio.run(_queue(settings_from(config), limit))
    rows = [
        {
            "position": position,
            "id": b.id,
            "name": b.name,
            "status": str(b.status),
            "priority": b.priority,
            "owner_id": b.owner_id,
            "done": b.counts.total - b.counts.pending - b.counts.running,
            "total": b.counts.total,
        }
        for position, b in found.numbered()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("The queue is empty: no batch is queued, running or paused.")
        return
    table = Table("#", "id", "name", "status", "priority", "owner", "done")
    for r in rows:
        table.add_row(
            str(r["position"]),
            str(r["id"]),
            escape(str(r["name"])),  # a cell is markup; a name is the user's text
            str(r["status"]),
            str(r["priority"]),
            "—" if r["owner_id"] is None else str(r["owner_id"]),
            f"{r['done']}/{r['total']}",
        )
    console.print(table)
    if found.total > len(rows):
        console.print(f"… and {found.total - len(rows)} more (--limit)", highlight=False)


async def _queue(settings: Settings, limit: int) -> queues.QueuePage:
    async with Kiln(settings, engine=False) as kiln:  # no backend (nor HTTP client) is built
        return await queues.queue(kiln.service, service.LOCAL, limit=limit)


@queue_app.command()
def move(
    batch: BatchArg,
    top: Annotated[bool, typer.Option("--top", help="Claimed before every other.")] = False,
    bottom: Annotated[bool, typer.Option("--bottom", help="Claimed after every other.")] = False,
    config: ConfigOption = None,
) -> None:
    """Move an unfinished batch to the top or the bottom of the queue."""
    with errors():
        if top == bottom:
            raise ConfigError("say where: --top or --bottom")
        settings = settings_from(config)
        batch_id, position = asyncio.run(_move(settings, batch, top))
    console.print(f"Batch {batch_id} is now number {position} in the queue.", highlight=False)


async def _move(settings: Settings, ref: str, top: bool) -> tuple[int, int]:
    """Move the batch; its id and new position (1-based)."""
    async with Kiln(settings, engine=False) as kiln:
        ctx = kiln.service
        batch_id = (await kiln.db.aread(find_batch, ref)).id
        await queues.move(ctx, service.LOCAL, batch_id, top=top)
        if top:
            return batch_id, 1
        return batch_id, (await queues.queue(ctx, service.LOCAL, limit=1)).total
