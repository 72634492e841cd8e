"""The ``kiln`` command: run batch files, watch, retry, cancel, report and export.

Exit codes: 0 every task succeeded (or nothing to do), 1 some task failed or
was cancelled, 2 bad input (spec, config, unknown batch), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from pixelkiln.api.cli import serve, users_app
from pixelkiln.api.pricing import load_pricing, retry_charged
from pixelkiln.app import Kiln
from pixelkiln.backends.check import all_ok, check_backends, print_reports
from pixelkiln.config import Settings, load_settings
from pixelkiln.db.batches import (
    cancel_batch,
    find_batch,
    list_batches,
    set_paused,
    unfinished_batch_ids,
)
from pixelkiln.db.batches import get_batch as db_get_batch
from pixelkiln.db.credits import InsufficientCreditsError
from pixelkiln.db.database import Database
from pixelkiln.exceptions import (
    ConfigError,
    InvalidStateError,
    KilnError,
    NotFoundError,
    SpecError,
)
from pixelkiln.export import export_batch
from pixelkiln.inputs import LoadedBatch, load_batch_file
from pixelkiln.models import Batch, BatchStatus
from pixelkiln.progress import BatchProgress
from pixelkiln.reports import build_report, eta_seconds, render_text
from pixelkiln.testing.cli import dev_app

app = typer.Typer(
    help="pixelkiln: batch image generation. Queue thousands of prompts, come back to images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
backends_app = typer.Typer(help="Inspect the configured generator backends.", no_args_is_help=True)
app.add_typer(backends_app, name="backends")
app.command()(serve)
app.add_typer(users_app, name="users", help="API users, their tokens and credits.")
app.add_typer(dev_app, name="dev")

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("pixelkiln.cli")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="kiln.toml to use (default: ./kiln.toml or $KILN_CONFIG)."),
]
LogLevelOption = Annotated[
    str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
BatchArg = Annotated[str, typer.Argument(help="Batch id, or the name of the newest batch.")]

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


# -- plumbing ---------------------------------------------------------------------------------


@contextmanager
def _errors() -> Iterator[None]:
    """Turn our errors into a clear message and exit code: never a traceback for bad input."""
    try:
        yield
    except SpecError as exc:
        err_console.print(f"[red]Invalid input ({len(exc.problems)} problem(s)):")
        for problem in exc.problems[:50]:
            err_console.print(f"  - {problem}", markup=False, highlight=False)
        if len(exc.problems) > 50:
            err_console.print(f"  … and {len(exc.problems) - 50} more")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except (ConfigError, NotFoundError, InvalidStateError) as exc:
        err_console.print(f"[red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KilnError as exc:
        err_console.print(f"[red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None


def _settings(config: Path | None, log_level: str | None = None) -> Settings:
    overrides: dict[str, Any] = {"log": {"level": log_level}} if log_level else {}
    return load_settings(config, **overrides)


def _setup_logging(settings: Settings) -> Path:
    """A log file per run under <data_dir>/logs; the terminal keeps the progress bar."""
    folder = settings.storage.data_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kiln_{datetime.now():%Y%m%d_%H%M%S}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("pixelkiln")
    root.handlers = [handler]
    root.setLevel(settings.log.level)
    root.propagate = False
    return path


def _with_db(settings: Settings, fn: Callable[[Database], T]) -> T:
    db = Database.open(settings.storage.resolved_database_url())
    try:
        return fn(db)
    finally:
        db.close()


def _resolve(db: Database, ref: str) -> Batch:
    return db.read(find_batch, ref)


# -- running ----------------------------------------------------------------------------------


async def _run_batches(kiln: Kiln, batch_ids: list[int], quiet: bool) -> bool:
    """Run batches to the end with a progress bar; True if interrupted (Ctrl-C / SIGTERM)."""
    batches = [await kiln.db.aread(db_get_batch, b) for b in batch_ids]
    subscription = kiln.bus.subscribe()
    scheduler = kiln.new_scheduler(batch_ids)
    interrupted = False
    loop = asyncio.get_running_loop()

    def stop() -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: leave now; the leases lapse and tasks come back
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        err_console.print(
            "[yellow]Stopping: running tasks go back to the queue (Ctrl-C again to quit at once)…"
        )
        scheduler.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        runner = asyncio.create_task(scheduler.run(until_done=True))
        await BatchProgress(console, batches, enabled=not quiet).follow(
            subscription, runner, scheduler
        )
        await runner
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        subscription.close()
    return interrupted


def _report_path(settings: Settings, batch: Batch, given: Path | None) -> Path:
    if given is not None:
        return given
    folder = settings.storage.data_dir / "reports"
    return folder / f"{batch.id}-{datetime.now():%Y%m%d_%H%M%S}.json"


async def _finish(
    kiln: Kiln, batch_ids: list[int], interrupted: bool, report: Path | None, log_path: Path
) -> int:
    """Print each batch's summary, write its JSON report, choose the exit code."""
    code = EXIT_OK
    for batch_id in batch_ids:
        data = await kiln.db.aread(build_report, batch_id)
        batch = await kiln.db.aread(db_get_batch, batch_id)
        console.print(render_text(data), markup=False, highlight=False)
        path = _report_path(kiln.settings, batch, report if len(batch_ids) == 1 else None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        console.print(
            f"  report    {path}\n  folder    {kiln.storage.root / 'images' / str(batch_id)}"
        )
        if batch.status != BatchStatus.COMPLETED:
            code = EXIT_FAILED
    console.print(f"  log       {log_path}")
    if interrupted:
        ids = " ".join(str(b) for b in batch_ids)
        err_console.print(
            f"[yellow]Interrupted. Unfinished tasks wait in the queue; "
            f"continue with:[/] kiln resume {ids}"
        )
        return EXIT_INTERRUPTED
    return code


async def _submit_and_run(
    settings: Settings, loaded: LoadedBatch, report: Path | None, quiet: bool, log_path: Path
) -> int:
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(
            loaded.spec,
            source="cli",
            source_name=loaded.source,
            base_dir=loaded.base_dir,
            where=loaded.where,
        )
        console.print(
            f"Batch [bold]{batch_id}[/] '{loaded.spec.name}': {len(loaded.spec.tasks)} task(s)",
            highlight=False,
        )
        interrupted = await _run_batches(kiln, [batch_id], quiet)
        return await _finish(kiln, [batch_id], interrupted, report, log_path)


async def _continue(
    settings: Settings, batch_ids: list[int], report: Path | None, quiet: bool, log_path: Path
) -> int:
    async with Kiln(settings) as kiln:
        interrupted = await _run_batches(kiln, batch_ids, quiet)
        return await _finish(kiln, batch_ids, interrupted, report, log_path)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Batch file: .yaml .yml .json .toml .csv .xlsx")],
    config: ConfigOption = None,
    report: Annotated[Path | None, typer.Option(help="Where to write the JSON report.")] = None,
    log_level: LogLevelOption = None,
    name: Annotated[str | None, typer.Option(help="Batch name (default: from the file).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Run a batch file to the end, with a progress bar and a summary."""
    with _errors():
        settings = _settings(config, log_level)
        loaded = load_batch_file(spec, name=name)
        log_path = _setup_logging(settings)
        code = asyncio.run(_submit_and_run(settings, loaded, report, quiet, log_path))
    raise typer.Exit(code)


@app.command()
def resume(
    batch: Annotated[
        str | None, typer.Argument(help="Batch id or name; default: all unfinished.")
    ] = None,
    config: ConfigOption = None,
    report: Annotated[Path | None, typer.Option(help="Where to write the JSON report.")] = None,
    log_level: LogLevelOption = None,
    quiet: QuietOption = False,
) -> None:
    """Continue interrupted (or paused) batches, redoing only unfinished tasks."""
    with _errors():
        settings = _settings(config, log_level)
        ids = _with_db(settings, lambda db: _resumable(db, batch))
        if not ids:
            console.print("Nothing to resume: no unfinished batch.")
            raise typer.Exit(EXIT_OK)
        log_path = _setup_logging(settings)
        code = asyncio.run(_continue(settings, ids, report, quiet, log_path))
    raise typer.Exit(code)


def _resumable(db: Database, ref: str | None) -> list[int]:
    if ref is None:
        return db.read(unfinished_batch_ids)
    found = _resolve(db, ref)
    if found.status.finished:
        raise InvalidStateError(
            f"batch {found.id} already finished ({found.status}); "
            f"use 'kiln retry {found.id}' to run its failed tasks again"
        )
    if found.status == BatchStatus.PAUSED:
        db.write(set_paused, found.id, False)
    return [found.id]


@app.command()
def retry(
    batch: BatchArg,
    cancelled: Annotated[bool, typer.Option(help="Also retry cancelled tasks.")] = False,
    run_now: Annotated[bool, typer.Option("--run/--no-run", help="Run them now.")] = True,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Put a batch's failed tasks (and with --cancelled, cancelled ones) back in the queue.

    With credits on, a user's batch is charged for the retried tasks, as a retry
    through the API is (they were refunded when they failed or were cancelled).
    """
    with _errors():
        settings = _settings(config)
        batch_id, count = asyncio.run(_requeue(settings, batch, cancelled))
        console.print(f"Batch {batch_id}: {count} task(s) back in the queue.")
        if not run_now:
            raise typer.Exit(EXIT_OK)
        log_path = _setup_logging(settings)
        code = asyncio.run(_continue(settings, [batch_id], None, quiet, log_path))
    raise typer.Exit(code)


async def _requeue(settings: Settings, ref: str, cancelled: bool) -> tuple[int, int]:
    async with Kiln(settings) as kiln:  # the backends tell which take users' own keys
        found = await kiln.db.aread(find_batch, ref)
        pricing = await kiln.db.aread(load_pricing, settings, kiln.backends, found.owner_id)
        try:
            count = await kiln.db.awrite(
                retry_charged,
                found.id,
                scope=None,
                task_ids=None,
                include_cancelled=cancelled,
                pricing=pricing,
            )
        except InsufficientCreditsError as exc:
            raise KilnError(f"{exc}; add credits with 'kiln users grant USER AMOUNT'") from None
        return found.id, count


@app.command()
def cancel(batch: BatchArg, config: ConfigOption = None) -> None:
    """Cancel a batch: pending tasks at once, running ones at their runner's next check."""
    with _errors():
        settings = _settings(config)
        done = _with_db(settings, lambda db: db.write(cancel_batch, _resolve(db, batch).id))
        console.print(
            f"Batch {done.id} cancelled: {done.counts.succeeded} succeeded, "
            f"{done.counts.cancelled} cancelled, {done.counts.failed} failed."
        )


# -- looking ----------------------------------------------------------------------------------


def _batch_facts(batch: Batch) -> dict[str, Any]:
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


@app.command()
def status(
    batch: Annotated[
        str | None, typer.Argument(help="Batch id or name; default: recent batches.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="How many recent batches to list.")] = 20,
    config: ConfigOption = None,
) -> None:
    """Show one batch (counts, progress, ETA) or the most recent batches."""
    with _errors():
        settings = _settings(config)
        if batch is None:
            found = _with_db(settings, lambda db: db.read(list_batches, limit=limit))
        else:
            found = [_with_db(settings, lambda db: _resolve(db, batch))]
    facts = [_batch_facts(b) for b in found]
    if as_json:
        print(json.dumps(facts[0] if batch is not None else facts, indent=2))
        return
    if batch is not None:
        _print_one(facts[0])
        return
    table = Table("id", "name", "status", "done", "failed", "images", "created")
    for f in facts:
        table.add_row(
            str(f["id"]),
            f["name"],
            f["status"],
            f"{f['succeeded'] + f['failed'] + f['cancelled']}/{f['total']}",
            str(f["failed"]),
            str(f["images"]),
            datetime.fromtimestamp(f["created_at"]).strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table if facts else "No batches yet. Start one with: kiln run BATCH_FILE")


def _print_one(f: dict[str, Any]) -> None:
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


@app.command()
def report(
    batch: BatchArg,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    output: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
    config: ConfigOption = None,
) -> None:
    """A batch's report: time range, totals, success rate, rates, each failure and why."""
    with _errors():
        if fmt not in ("text", "json"):
            raise ConfigError("--format must be text or json")
        settings = _settings(config)
        data = _with_db(settings, lambda db: db.read(build_report, _resolve(db, batch).id))
    text = json.dumps(data, indent=2, ensure_ascii=False) if fmt == "json" else render_text(data)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"Report written to {output}")
    else:
        print(text)


@app.command()
def export(
    batch: BatchArg,
    to: Annotated[Path, typer.Option("--to", help="A folder, or a file ending in .zip.")],
    config: ConfigOption = None,
) -> None:
    """Copy a batch's images and a manifest.json to a folder or a ZIP file."""
    with _errors():
        settings = _settings(config)

        def do_export(db: Database) -> int:
            return export_batch(db, settings.storage.data_dir, _resolve(db, batch).id, to)

        count = _with_db(settings, do_export)
    console.print(f"Exported {count} image(s) to {to}")


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a commented sample kiln.toml and batch.yaml to start from."""
    samples = resources.files("pixelkiln") / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("kiln.toml", "batch.yaml"):
        target = folder / name
        if target.exists() and not force:
            err_console.print(f"[yellow]{target} exists; left as it is (use --force to overwrite)")
            continue
        target.write_text((samples / name).read_text(encoding="utf-8"), encoding="utf-8")
        console.print(f"Wrote {target}")
    console.print("Next: kiln run batch.yaml")


@backends_app.command("list")
def backends_list(config: ConfigOption = None) -> None:
    """The configured backends (the offline placeholder when none is configured)."""
    with _errors():
        settings = _settings(config)
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
    with _errors():
        settings = _settings(config)
        reports = asyncio.run(check_backends(settings, names or None))
    print_reports(reports, console)
    raise typer.Exit(EXIT_OK if all_ok(reports) else EXIT_FAILED)


def main() -> None:
    """Console-script entry point."""
    started = time.monotonic()
    try:
        app()
    finally:
        log.debug("kiln finished in %.2f s", time.monotonic() - started)


if __name__ == "__main__":
    main()

__all__ = ["app", "main"]
