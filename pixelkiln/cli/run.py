"""``kiln run``, ``resume``, ``retry``, ``regenerate``: run batches to the end with a progress bar.

Exit codes: 0 every task succeeded (or nothing to do), 1 some task failed or
was cancelled, 2 bad input (spec, config, unknown batch), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BatchArg,
    ConfigOption,
    LogLevelOption,
    QuietOption,
    console,
    err_console,
    errors,
    resolve,
    settings_from,
    setup_logging,
    with_db,
)
from pixelkiln.cli.plan import YesOption, confirm_run, submission_of
from pixelkiln.config import Settings
from pixelkiln.db.batches import find_batch, unfinished_batch_ids
from pixelkiln.db.batches import get_batch as db_get_batch
from pixelkiln.db.credits import InsufficientCreditsError
from pixelkiln.db.database import Database
from pixelkiln.db.tasks import unfinished_backends
from pixelkiln.exceptions import (
    InvalidStateError,
    KilnError,
    Problem,
    SchedulerStalledError,
    SpecError,
)
from pixelkiln.inputs import LoadedBatch, TableTemplate, load_batch_file
from pixelkiln.models import Batch, BatchStatus
from pixelkiln.progress import BatchProgress
from pixelkiln.reports import build_report, render_text
from pixelkiln.service.plans import Plan
from pixelkiln.sweeps import count_tasks

RunNowOption = Annotated[
    bool, typer.Option("--run/--no-run", help="Run them now (else a server or `kiln resume` does).")
]


async def run_batches(kiln: Kiln, batch_ids: list[int], quiet: bool) -> bool:
    """Run batches to the end with a progress bar; True if interrupted (Ctrl-C / SIGTERM)."""
    batches = [await kiln.db.aread(db_get_batch, b) for b in batch_ids]
    subscription = kiln.bus.subscribe()
    scheduler = kiln.new_scheduler(batch_ids)
    if scheduler.hours:  # a backend outside its hours: say so, not a silent spinner
        waiting_on = await kiln.db.aread(unfinished_backends, batch_ids)
        for note in scheduler.hours.waiting_notes(waiting_on, time.time()):
            err_console.print(f"[yellow]{escape(note)}", highlight=False)
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
    except SchedulerStalledError as exc:  # writes kept failing: say why, exit 1, no hang
        err_console.print(
            f"[red]Stopped:[/] {escape(str(exc))}\n"
            "Unfinished tasks wait in the queue; continue with: "
            f"kiln resume {' '.join(str(b) for b in batch_ids)}",
            highlight=False,
        )
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
        console.print(render_text(data), markup=False, highlight=False, soft_wrap=True)
        path = _report_path(kiln.settings, batch, report if len(batch_ids) == 1 else None)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        except OSError as exc:  # a full disk must not end a night run in a traceback
            err_console.print(
                f"[red]Could not write the report {escape(str(path))}:[/]",
                escape(str(exc.strerror)),
            )
            code = EXIT_FAILED
        console.print(
            f"  report    {path}\n  folder    {kiln.storage.where(f'images/{batch_id}')}",
            markup=False,
        )
        if batch.status != BatchStatus.COMPLETED:
            code = EXIT_FAILED
    console.print(f"  log       {log_path}", markup=False)
    if interrupted:
        ids = " ".join(str(b) for b in batch_ids)
        err_console.print(
            f"[yellow]Interrupted. Unfinished tasks wait in the queue; "
            f"continue with:[/] kiln resume {ids}"
        )
        return EXIT_INTERRUPTED
    return code


async def queue_batch(kiln: Kiln, loaded: LoadedBatch, yes: bool) -> int:
    """Store a loaded batch file as ``kiln run`` does (``kiln submit`` too): a large plan
    is shown and asked about first (``[limits] confirm_*``; ``yes`` skips it); its id."""

    async def confirm(found: Plan) -> None:
        await confirm_run(found, kiln.settings, yes)

    sub = submission_of(loaded)
    return (await service.submit(kiln.service, service.LOCAL, sub, confirm)).batch_id


async def _submit_and_run(
    settings: Settings,
    loaded: LoadedBatch,
    report: Path | None,
    quiet: bool,
    log_path: Path,
    yes: bool = False,
) -> int:
    async with Kiln(settings) as kiln:
        batch_id = await queue_batch(kiln, loaded, yes)
        console.print(
            f"Batch [bold]{batch_id}[/] '{escape(loaded.spec.name)}': "
            f"{count_tasks(loaded.spec, loaded.base_dir):,} task(s)",
            highlight=False,
        )
        interrupted = await run_batches(kiln, [batch_id], quiet)
        return await _finish(kiln, [batch_id], interrupted, report, log_path)


async def continue_batches(
    settings: Settings,
    batch_ids: list[int],
    report: Path | None,
    quiet: bool,
    log_path: Path,
    unpause: bool = False,
) -> int:
    """Run stored batches to their end in this process, with progress and the summary
    (``kiln resume``, ``kiln schedule run-now``); the exit code, as ``kiln run``'s.

    ``report``: where to write the JSON report; ``unpause``: paused batches run too.
    """
    async with Kiln(settings) as kiln:
        if unpause:  # a batch named to `kiln resume` runs even when it was paused
            for batch_id in batch_ids:
                await service.resume(kiln.service, service.LOCAL, batch_id)
        interrupted = await run_batches(kiln, batch_ids, quiet)
        return await _finish(kiln, batch_ids, interrupted, report, log_path)


SpecArg = Annotated[Path, typer.Argument(help="Batch file: .yaml .yml .json .toml .csv .xlsx")]
NameOption = Annotated[str | None, typer.Option(help="Batch name (default: from the file).")]
TemplateOption = Annotated[
    str | None,
    typer.Option(help='A table\'s rows are items; their prompt: "{style}. {title}".'),
]
VarOption = Annotated[
    list[str] | None,
    typer.Option(help="A field every row may use, NAME=VALUE (repeatable; --template)."),
]


def load_spec(
    spec: Path,
    name: str | None,
    template: str | None,
    var: list[str],
    max_tasks: int | None = None,
) -> LoadedBatch:
    """A batch file as ``kiln run`` and ``kiln submit`` read it (SpecError for bad input);
    one listing more than ``max_tasks`` tasks refused before they are built."""
    items = _table_template(template, var)
    return load_batch_file(spec, name=name, partial=True, template=items, max_tasks=max_tasks)


def run(
    spec: SpecArg,
    config: ConfigOption = None,
    report: Annotated[Path | None, typer.Option(help="Where to write the JSON report.")] = None,
    log_level: LogLevelOption = None,
    name: NameOption = None,
    quiet: QuietOption = False,
    template: TemplateOption = None,
    var: VarOption = None,
    yes: YesOption = False,
) -> None:
    """Run a batch file to the end, with a progress bar and a summary.

    A large batch (see `kiln plan`) is shown and asked about first; --yes skips that.
    """
    with errors():
        settings = settings_from(config, log_level)
        limit = settings.limits.max_tasks_per_batch
        loaded = load_spec(spec, name, template, var or [], limit)
        log_path = setup_logging(settings)
        code = asyncio.run(_submit_and_run(settings, loaded, report, quiet, log_path, yes))
    raise typer.Exit(code)


def _table_template(text: str | None, pairs: list[str]) -> TableTemplate | None:
    """``--template`` and its ``--var NAME=VALUE`` fields; BadParameter for a malformed one."""
    fields: dict[str, str] = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip():
            raise typer.BadParameter(f"'{pair}' is not NAME=VALUE", param_hint="--var")
        fields[field.strip()] = value
    if text is None:
        if fields:
            raise typer.BadParameter(
                "a --var is a field of --template: give one", param_hint="--var"
            )
        return None
    return TableTemplate(text, fields or None)


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
    with errors():
        settings = settings_from(config, log_level)
        ids = with_db(settings, lambda db: _resumable(db, batch))
        if not ids:
            console.print("Nothing to resume: no unfinished batch.")
            raise typer.Exit(EXIT_OK)
        log_path = setup_logging(settings)
        code = asyncio.run(
            continue_batches(settings, ids, report, quiet, log_path, batch is not None)
        )
    raise typer.Exit(code)


def _resumable(db: Database, ref: str | None) -> list[int]:
    if ref is None:
        return db.read(unfinished_batch_ids)
    found = resolve(db, ref)
    if found.status.finished:
        raise InvalidStateError(
            f"batch {found.id} already finished ({found.status}); "
            f"use 'kiln retry {found.id}' to run its failed tasks again"
        )
    return [found.id]


def retry(
    batch: BatchArg,
    cancelled: Annotated[bool, typer.Option(help="Also retry cancelled tasks.")] = False,
    run_now: RunNowOption = True,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Put a batch's failed tasks (and with --cancelled, cancelled ones) back in the queue.

    With credits on, a user's batch is charged for the retried tasks, as a retry
    through the API is (they were refunded when they failed or were cancelled).
    """

    def again(kiln: Kiln, batch_id: int) -> Awaitable[int]:
        return service.retry(kiln.service, service.LOCAL, batch_id, include_cancelled=cancelled)

    _requeue_and_run(config, batch, again, run_now, quiet)


def regenerate(
    batch: BatchArg,
    keys: Annotated[
        str | None, typer.Option("--keys", help="Keys of the tasks, comma-separated.")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Ids of the tasks, comma-separated.")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(help="Delete their earlier images once the new ones are in (default: keep)."),
    ] = False,
    run_now: RunNowOption = True,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run chosen tasks of a batch again, succeeded ones too (--keys s1,s2 or --tasks 7,9).

    Their earlier images are kept as history (newest shown by default) unless
    --replace. With credits on, the batch's owner is charged as for a retry.
    """
    with errors():
        chosen_keys, chosen_ids = _chosen(keys, tasks)

    def again(kiln: Kiln, batch_id: int) -> Awaitable[int]:
        return service.regenerate(
            kiln.service,
            service.LOCAL,
            batch_id,
            keys=chosen_keys,
            task_ids=chosen_ids,
            replace=replace,
        )

    _requeue_and_run(config, batch, again, run_now, quiet)


def _chosen(keys: str | None, tasks: str | None) -> tuple[list[str] | None, list[int] | None]:
    """``--keys`` or ``--tasks`` as lists; SpecError unless exactly one names something."""
    if (keys is None) == (tasks is None):
        raise SpecError([Problem("", "", "--keys", "give either --keys or --tasks")])
    if keys is not None:
        return [k.strip() for k in keys.split(",") if k.strip()] or None, None
    words = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    bad = [w for w in words if not w.isdecimal()]
    if bad or not words:
        why = f"task ids are numbers, got {', '.join(repr(b) for b in bad) or 'none'}"
        raise SpecError([Problem("", "", "--tasks", why)])
    return None, [int(w) for w in words]


def _requeue_and_run(
    config: Path | None,
    ref: str,
    again: Callable[[Kiln, int], Awaitable[int]],
    run_now: bool,
    quiet: bool,
) -> None:
    """Put tasks back (``again``), then run the batch to the end unless ``--no-run``."""
    with errors():
        settings = settings_from(config)
        batch_id, count = asyncio.run(_requeue(settings, ref, again))
        console.print(f"Batch {batch_id}: {count} task(s) back in the queue.")
        if not run_now:
            raise typer.Exit(EXIT_OK)
        log_path = setup_logging(settings)
        code = asyncio.run(continue_batches(settings, [batch_id], None, quiet, log_path))
    raise typer.Exit(code)


async def _requeue(
    settings: Settings, ref: str, again: Callable[[Kiln, int], Awaitable[int]]
) -> tuple[int, int]:
    async with Kiln(settings, engine=False) as kiln:  # pricing needs no backend built
        found = await kiln.db.aread(find_batch, ref)
        try:
            count = await again(kiln, found.id)
        except InsufficientCreditsError as exc:
            raise KilnError(f"{exc}; add credits with 'kiln users grant USER AMOUNT'") from None
        return found.id, count
