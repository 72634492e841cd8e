"""``kiln schedule``: cron schedules of project runs and batch files, run by ``kiln serve``.

Thin over :mod:`pixelkiln.service.schedules`. Schedules added here are the
installation's (no owner). ``run-now`` starts a schedule's target at once and
follows it to the end in the foreground, as ``kiln run`` (a batch file) or ``kiln
projects run`` (a project config) do; ``--no-wait`` leaves it to ``kiln serve``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from pixelkiln.app import Kiln
from pixelkiln.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    ConfigOption,
    QuietOption,
    console,
    errors,
    print_error,
    settings_from,
    setup_logging,
)
from pixelkiln.cli.projects import run_projects
from pixelkiln.cli.run import continue_batches
from pixelkiln.config import Settings
from pixelkiln.db.schedules import ScheduleKind
from pixelkiln.engine.owners import new_owner_id
from pixelkiln.service import LOCAL

if TYPE_CHECKING:  # the commands import it: croniter and the rest load for `kiln schedule` only
    from pixelkiln.service.schedules import Fired, ScheduleView

T = TypeVar("T")

schedule_app = typer.Typer(
    help="Cron schedules of project runs and batch files; `kiln serve` runs them.",
    no_args_is_help=True,
)

CronArg = Annotated[
    str,
    typer.Argument(help='Cron expression: "0 0 * * *" (5 fields), or 6 with seconds last.'),
]
IdArg = Annotated[int, typer.Argument(help="Schedule id (see `kiln schedule list`).")]


async def _with_service(settings: Settings, fn: Callable[[Kiln], Awaitable[T]]) -> T:
    async with Kiln(settings, engine=False) as kiln:  # no backend built: tasks run elsewhere
        return await fn(kiln)


def _kind_and_target(what: str, target: Path | None) -> tuple[ScheduleKind, Path]:
    """``projects CONFIG``, ``batch FILE`` or a bare batch ``FILE``."""
    if what in (k.value for k in ScheduleKind):
        if target is None:
            raise typer.BadParameter(f"give the file after '{what}'", param_hint="TARGET")
        return ScheduleKind(what), target
    if target is not None:
        raise typer.BadParameter(f"'{what}' is neither 'projects' nor 'batch'", param_hint="WHAT")
    return ScheduleKind.BATCH, Path(what)


def _overrides(kind: ScheduleKind, given: dict[str, Any]) -> dict[str, Any]:
    """The project overrides given (as ``kiln schedule add`` names them); none for a batch."""
    chosen = {key: value for key, value in given.items() if value not in (None, [])}
    if chosen and kind is not ScheduleKind.PROJECTS:
        names = ", ".join("--" + k.replace("_", "-") for k in chosen)
        raise typer.BadParameter(f"{names}: overrides of a project run, not of a batch file")
    return chosen


@schedule_app.command()
def add(
    cron: CronArg,
    what: Annotated[str, typer.Argument(help="'projects' or 'batch' (then TARGET), or a file.")],
    target: Annotated[Path | None, typer.Argument(help="The project config or batch file.")] = None,
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA time zone of CRON (default [schedules] timezone, else local)."),
    ] = None,
    pid: Annotated[
        list[str] | None, typer.Option("--pid", help="Only this project (repeatable).")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Projects' language.")] = None,
    channel: Annotated[str | None, typer.Option(help="Projects' channel (style preset).")] = None,
    description: Annotated[str | None, typer.Option(help="Projects' description.")] = None,
    cfg_scale: Annotated[float | None, typer.Option(help="Projects' cfg_scale.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Projects' negative prompt.")] = None,
    steps: Annotated[int | None, typer.Option(help="Projects' steps.")] = None,
    projects_dir: Annotated[
        Path | None, typer.Option(help="Folder of the project folders.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Add a schedule: `kiln schedule add "0 0 * * *" projects CONFIG` or `... batch FILE`.

    The expression, time zone and file are checked now (exit 2 with what is wrong).
    """
    kind, path = _kind_and_target(what, target)
    given = {
        "pid": pid,
        "language": language,
        "channel": channel,
        "description": description,
        "cfg_scale": cfg_scale,
        "negative_prompt": negative_prompt,
        "steps": steps,
        "projects_dir": str(projects_dir.absolute()) if projects_dir else None,
    }
    options = _overrides(kind, given)
    from pixelkiln.service.schedules import add_schedule

    with errors():
        settings = settings_from(config)
        view = asyncio.run(
            _with_service(
                settings,
                lambda k: add_schedule(
                    k.service, LOCAL, cron, kind, path, options=options, timezone=timezone or ""
                ),
            )
        )
    console.print(
        f"Schedule {view.schedule.id}: {escape(view.what)} at '{escape(view.schedule.cron)}'; "
        f"next run {_when(view)}. `kiln serve` runs it.",
        highlight=False,
    )


@schedule_app.command("list")
def list_(config: ConfigOption = None) -> None:
    """The schedules: what each starts, its next run (its time zone) and its last result."""
    from pixelkiln.service.schedules import list_schedules

    with errors():
        settings = settings_from(config)
        views = asyncio.run(_with_service(settings, lambda k: list_schedules(k.service, LOCAL)))
    if not views:
        console.print('No schedules. Add one with: kiln schedule add "0 0 * * *" batch FILE')
        return
    table = Table("id", "cron", "what", "next run", "last run", "last result")
    table.columns[2].overflow = "fold"  # the whole path and overrides, never cut short
    for view in views:
        s = view.schedule
        table.add_row(
            str(s.id),
            escape(s.cron),
            escape(view.what),
            _when(view),
            _stamp(s.last_run_at),
            escape(_result(view)),  # a cell is markup; an error may hold brackets
        )
    console.print(table)


@schedule_app.command()
def remove(schedule_id: IdArg, config: ConfigOption = None) -> None:
    """Remove a schedule (what it already started goes on)."""
    from pixelkiln.service.schedules import remove_schedule

    with errors():
        settings = settings_from(config)
        asyncio.run(
            _with_service(settings, lambda k: remove_schedule(k.service, LOCAL, schedule_id))
        )
    console.print(f"Schedule {schedule_id} removed.")


@schedule_app.command("run-now")
def run_now_(
    schedule_id: IdArg,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Follow it to its end here (default), or leave it to `kiln serve`.",
        ),
    ] = True,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Start a schedule's target now (its next slot stays as it is).

    It then runs here to the end with a progress bar and a summary: a batch file's
    batch as `kiln run` runs one, a project run as `kiln projects run` (exit codes
    as theirs). With --no-wait a running `kiln serve` carries it instead.
    """
    from pixelkiln.service.schedules import run_now

    owner = new_owner_id() if wait else None  # a project run is held here from the start
    with errors():
        settings = settings_from(config)
        fired = asyncio.run(
            _with_service(
                settings, lambda k: run_now(k.service, LOCAL, schedule_id, lease_owner=owner)
            )
        )
        code = _after_start(settings, fired, owner, quiet)
    raise typer.Exit(code)


def _after_start(settings: Settings, fired: Fired, owner: str | None, quiet: bool) -> int:
    """Follow what was started here (``owner``: its driver), or leave it (None)."""
    if fired.run_id is None:  # recorded, not raised: cannot happen with run_now, but be plain
        print_error(fired.error or "the schedule started nothing")
        return EXIT_BAD_INPUT
    what = "project run" if fired.kind is ScheduleKind.PROJECTS else "batch"
    console.print(f"Schedule {fired.schedule_id}: {what} {fired.run_id} started.", highlight=False)
    if owner is None:
        return EXIT_OK
    if fired.kind is ScheduleKind.PROJECTS:  # driven here, as `kiln projects run --resume`
        setup_logging(settings, prefix="projects")
        return asyncio.run(run_projects(settings, None, {}, fired.run_id, True, quiet, owner))
    log_path = setup_logging(settings)
    return asyncio.run(continue_batches(settings, [fired.run_id], None, quiet, log_path))


def _when(view: ScheduleView) -> str:
    if view.next_run is None:
        return "never"
    zone = f" {view.zone}" if view.zone else ""
    return f"{view.next_run:%Y-%m-%d %H:%M:%S}{zone}"


def _stamp(stamp: float | None) -> str:
    """This machine's local time, with its zone's name (a schedule's zone may differ)."""
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _result(view: ScheduleView) -> str:
    s = view.schedule
    if s.last_error:
        return f"error: {s.last_error}"
    if s.last_run_id is None:
        return "-"
    return f"{'run' if s.kind is ScheduleKind.PROJECTS else 'batch'} {s.last_run_id}"
