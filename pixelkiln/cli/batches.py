"""``kiln cancel``, ``kiln status``, ``kiln report``, ``kiln export``, ``kiln init``."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pixelkiln.cli.common import (
    BatchArg,
    ConfigOption,
    console,
    err_console,
    errors,
    resolve,
    settings_from,
    with_db,
)
from pixelkiln.exceptions import ConfigError

# Each command imports what only it needs (``kiln status`` starts without the engine,
# the exports or the spreadsheets): see pixelkiln/cli/__init__.py.
if TYPE_CHECKING:
    from pixelkiln.config import Settings
    from pixelkiln.db.database import Database
    from pixelkiln.inputs.headers import Headers
    from pixelkiln.models import Batch

HeadersOption = Annotated[
    str,
    typer.Option(
        "--headers", help="Spreadsheet headings: en (parameter names) or zh (提示词, 图片比例...)."
    ),
]


def cancel(batch: BatchArg, config: ConfigOption = None) -> None:
    """Cancel a batch: pending tasks at once, running ones at their runner's next check."""
    with errors():
        settings = settings_from(config)
        done = asyncio.run(_cancel(settings, batch))
        console.print(
            f"Batch {done.id} cancelled: {done.counts.succeeded} succeeded, "
            f"{done.counts.cancelled} cancelled, {done.counts.failed} failed."
        )


async def _cancel(settings: Settings, ref: str) -> Batch:
    from pixelkiln.app import Kiln
    from pixelkiln.db.batches import find_batch

    async with Kiln(settings, engine=False) as kiln:  # no backend (nor HTTP client) is built
        return await kiln.cancel((await kiln.db.aread(find_batch, ref)).id)


# -- looking ----------------------------------------------------------------------------------


def _batch_facts(batch: Batch) -> dict[str, Any]:
    from pixelkiln.reports import eta_seconds

    c = batch.counts
    return {
        "id": batch.id,
        "name": batch.name,
        "status": str(batch.status),
        "total": c.total,
        "pending": c.pending,
        "running": c.running,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "cancelled": c.cancelled,
        "images": c.images,
        "progress": round(c.progress, 4),
        "eta_seconds": eta_seconds(batch),
        "created_at": batch.created_at,
        "started_at": batch.started_at,
        "finished_at": batch.finished_at,
    }


def status(
    batch: Annotated[
        str | None, typer.Argument(help="Batch id or name; default: recent batches.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="How many recent batches to list.")] = 20,
    run: Annotated[
        int | None, typer.Option("--run", help="Show this project run (its id) instead.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Show one batch (counts, progress, ETA), or the recent project runs and batches."""
    from pixelkiln.cli.projects import print_run, runs_table
    from pixelkiln.db.batches import list_batches
    from pixelkiln.reports import webhook_facts

    with errors():
        settings = settings_from(config)
        if run is not None:
            with_db(settings, lambda db: print_run(db, run))
            return

        def look(db: Database) -> list[dict[str, Any]]:
            found = db.read(list_batches, limit=limit) if batch is None else [resolve(db, batch)]
            if batch is None and not as_json:  # the table shows no webhooks: read none
                return [_batch_facts(b) for b in found]
            hooks = db.read(lambda conn: [webhook_facts(conn, b) for b in found])
            return [_batch_facts(b) | {"webhook": h} for b, h in zip(found, hooks, strict=True)]

        facts = with_db(settings, look)
    if as_json:
        print(json.dumps(facts[0] if batch is not None else facts, indent=2))
        return
    if batch is not None:
        _print_one(facts[0])
        return
    runs = with_db(settings, runs_table)
    if runs is not None:
        console.print(runs)
    table = Table("id", "name", "status", "done", "failed", "images", "created")
    for f in facts:
        table.add_row(
            str(f["id"]),
            escape(f["name"]),  # a cell is markup; a name is the user's text
            f["status"],
            f"{f['succeeded'] + f['failed'] + f['cancelled']}/{f['total']}",
            str(f["failed"]),
            str(f["images"]),
            datetime.fromtimestamp(f["created_at"]).strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table if facts else "No batches yet. Start one with: kiln run BATCH_FILE")


def _print_one(f: dict[str, Any]) -> None:
    from pixelkiln.reports import webhook_line

    eta = f["eta_seconds"]
    eta_text = "-" if eta is None else f"{eta:.0f} s"
    console.print(
        f"Batch {f['id']} '{f['name']}': {f['status']}  {f['progress']:.0%}\n"
        f"  {f['succeeded']} succeeded, {f['failed']} failed, {f['cancelled']} cancelled, "
        f"{f['running']} running, {f['pending']} pending of {f['total']}\n"
        f"  {f['images']} images; ETA {eta_text}",
        highlight=False,
        markup=False,
    )
    hook = webhook_line(f["id"], f["status"], f["webhook"])
    if hook is not None:
        console.print(f"  {hook}", highlight=False, markup=False, soft_wrap=True)


def report(
    batch: BatchArg,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    output: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
    config: ConfigOption = None,
) -> None:
    """A batch's report: time range, totals, success rate, rates, each failure and why."""
    from pixelkiln.reports import build_report, render_text

    with errors():
        if fmt not in ("text", "json"):
            raise ConfigError("--format must be text or json")
        settings = settings_from(config)
        data = with_db(settings, lambda db: db.read(build_report, resolve(db, batch).id))
    text = json.dumps(data, indent=2, ensure_ascii=False) if fmt == "json" else render_text(data)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"Report written to {output}", markup=False)
    else:
        print(text)


def export(
    batch: BatchArg,
    to: Annotated[
        Path,
        typer.Option(
            "--to",
            help="A folder or a .zip file (images and manifest.json), "
            "or a .xlsx / .csv table (one row per task; kiln run reads it back).",
        ),
    ],
    headers: HeadersOption = "en",
    config: ConfigOption = None,
) -> None:
    """Copy a batch's images and a manifest.json out, or write it as a spreadsheet."""
    from pixelkiln.export import export_batch, export_kind
    from pixelkiln.storage import open_storage

    try:
        kind = export_kind(to)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from None
    language = _headers(headers)
    with errors():
        settings = settings_from(config)

        storage = open_storage(settings.storage)  # the images, wherever they are

        def do_export(db: Database) -> int:
            found = resolve(db, batch).id
            return export_batch(db, storage, found, to, headers=language)

        try:
            count = with_db(settings, do_export)
        finally:
            storage.close()
    what = "task(s)" if kind in ("xlsx", "csv") else "image(s)"
    console.print(f"Exported {count} {what} to {to}", markup=False)


def _headers(value: str) -> Headers:
    from pixelkiln.inputs.headers import check_headers  # the inputs package: for files only

    try:
        return check_headers(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--headers") from None


def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    xlsx: Annotated[
        bool, typer.Option("--xlsx", help="Also write batch.xlsx, a spreadsheet template.")
    ] = False,
    headers: HeadersOption = "en",
) -> None:
    """Write a commented sample kiln.toml and batch.yaml (and batch.xlsx) to start from."""
    from pixelkiln.workbooks import template_bytes

    language = _headers(headers)
    samples = resources.files("pixelkiln") / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Callable[[], bytes]] = {
        name: (samples / name).read_bytes for name in ("kiln.toml", "batch.yaml")
    }
    if xlsx:
        files["batch.xlsx"] = lambda: template_bytes(language)
    for name, content in files.items():
        target = folder / name
        if target.exists() and not force:
            err_console.print(
                f"[yellow]{escape(str(target))} exists; left as it is (use --force to overwrite)"
            )
            continue
        target.write_bytes(content())
        console.print(f"Wrote {target}", markup=False)
    console.print(_next_step(folder, xlsx), markup=False)


def _next_step(folder: Path, xlsx: bool) -> str:
    """What to type next, from where the user is: the files are in ``folder``, and its
    kiln.toml is read only from there ("cd sub && kiln run batch.yaml")."""
    run = "kiln run batch.yaml" + (" (or kiln run batch.xlsx)" if xlsx else "")
    if folder.absolute() == Path.cwd():
        return f"Next: {run}"
    return f"Next: cd {shlex.quote(str(folder))} && {run}"
