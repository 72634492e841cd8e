"""``kiln gc [--dry-run]``: delete what the ``[retention]`` rules say is old, now.

The same rules and the same deletes as the pass ``kiln serve`` makes every
``[retention] interval_hours`` (:mod:`pixelkiln.service.retention`): it prints what
the rules name (a table of counts, files and sizes, then the batches by id, name
and end), then removes it with a progress bar, or with ``--dry-run`` removes nothing.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pixelkiln.app import Kiln
from pixelkiln.cli.common import ConfigOption, QuietOption, console, errors, settings_from
from pixelkiln.config import RetentionSettings, Settings
from pixelkiln.service import LOCAL

if TYPE_CHECKING:
    from pixelkiln.service.retention import Outcome, Plan

#: batches listed by name at most (the counts above cover them all)
LISTED = 50

DryRunOption = Annotated[
    bool, typer.Option("--dry-run", "-n", help="Print what would be removed; remove nothing.")
]


def gc(
    dry_run: DryRunOption = False, config: ConfigOption = None, quiet: QuietOption = False
) -> None:
    """Delete old batches, events and uploads by the [retention] rules (see docs/retention.md)."""
    with errors():
        settings = settings_from(config)
        asyncio.run(_gc(settings, dry_run=dry_run, quiet=quiet))


async def _gc(settings: Settings, *, dry_run: bool, quiet: bool) -> None:
    from pixelkiln.service import retention  # here: every other command starts without it

    async with Kiln(settings, engine=False) as kiln:  # no backend (nor HTTP client) is built
        found = await retention.plan(kiln.service, LOCAL)
        console.print(_rules(found.rules), highlight=False)
        if found.off and found.empty:  # with every rule off, a half-deleted batch still goes
            console.print(
                "Retention is off: events_days, images_days and uploads_days are all 0 "
                "in [retention]. Nothing is removed.",
                highlight=False,
            )
            return
        if found.empty:
            console.print("Nothing is old enough to remove.")
            return
        _show(found)
        if dry_run:
            console.print("Dry run: nothing was removed (run `kiln gc` to remove it).")
            return
        done = await _apply(kiln, found, quiet=quiet)
    _show_done(done)


def _rules(rules: RetentionSettings) -> str:
    def days(value: float) -> str:
        return f"after {value:g} day(s)" if value else "off"

    return (
        f"Retention: events {days(rules.events_days)} · batches with their images "
        f"{days(rules.images_days)} · unused uploads {days(rules.uploads_days)}"
    )


def _show(found: Plan) -> None:
    """The counts, then the batches that go whole."""
    table = Table("removes", "count", "what", "files", "size", title="kiln gc")
    tasks, images = sum(b.tasks for b in found.batches), sum(b.images for b in found.batches)
    events = sum(b.events for b in found.batches)
    files = sum(f for f, _ in found.batch_files)
    size = sum(b for _, b in found.batch_files)
    table.add_row(
        "batches",
        str(len(found.batches)),
        f"{tasks} task(s), {images} image(s), {events} event(s)",
        str(files),
        decimal(size),
    )
    table.add_row(
        "events",
        str(sum(b.events for b in found.events)),
        f"of {len(found.events)} batch(es) whose images stay",
        "-",
        "-",
    )
    table.add_row(
        "uploads",
        str(len(found.uploads)),
        "used by no task",
        str(len(found.upload_files)),
        decimal(found.upload_bytes),
    )
    table.add_row("runs", str(len(found.runs)), "whose batches are all gone", "-", "-")
    console.print(table)
    if found.batches:
        _show_batches(found)


def _show_batches(found: Plan) -> None:
    table = Table("id", "name", "status", "ended", "tasks", "images", "size", title="batches")
    for batch, (_, size) in list(zip(found.batches, found.batch_files, strict=True))[:LISTED]:
        ended = datetime.fromtimestamp(batch.finished_at).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            str(batch.id),
            escape(batch.name),
            batch.status,
            ended,
            str(batch.tasks),
            str(batch.images),
            decimal(size),
        )
    console.print(table)
    if len(found.batches) > LISTED:
        console.print(f"… and {len(found.batches) - LISTED} more batch(es)")


async def _apply(kiln: Kiln, found: Plan, *, quiet: bool) -> Outcome:
    from pixelkiln.service import retention

    steps = len(found.batches) + len(found.events) + len(found.uploads)
    columns = (TextColumn("removing"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, disable=quiet, transient=True) as bar:
        job = bar.add_task("removing", total=steps)
        return await retention.apply(
            kiln.service, LOCAL, found, advance=lambda n: bar.advance(job, n)
        )


def _show_done(done: Outcome) -> None:
    console.print(
        f"Removed {done.batches} batch(es) ({done.tasks} task(s), {done.images} image(s)), "
        f"{done.events} event(s), {done.uploads} upload(s), {done.runs} run(s): "
        f"{done.files} file(s), {decimal(done.bytes)} freed.",
        highlight=False,
    )
    for batch_id, why in done.kept:
        console.print(f"Batch {batch_id} was left alone: {why}.", highlight=False)
