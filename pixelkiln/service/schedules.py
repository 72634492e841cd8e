"""Cron schedules: add (checked now), list with next run times, remove, run now, fire.

A schedule starts a project run (``kind = projects``: a project config, one batch
per project, :mod:`pixelkiln.service.runs`) or a batch file (``kind = batch``) at
every slot of its cron expression. Expressions have 5 fields (minute hour day
month weekday) or 6, the 6th being seconds (croniter's ``second_at_beginning =
False``): ``"0 0 * * *"`` is every night at 00:00, ``"* * * * * */5"`` every five
seconds. They are read in the schedule's time zone, else ``[schedules] timezone``,
else this machine's local time.

A server's schedule runner (:mod:`pixelkiln.engine.schedules`) calls
:func:`run_due`: each due schedule's slot is claimed through the database
(:func:`pixelkiln.db.schedules.claim_slot`) before it is fired, so each slot runs
once across every process, and slots missed while no process ran collapse into
one run. A start that fails is recorded in ``last_error``; nothing raises out.

>>> schedule = await add_schedule(ctx, LOCAL, "0 0 * * *", ScheduleKind.BATCH,
...                               Path("/srv/nightly.yaml"))       # doctest: +SKIP
>>> await run_due(ctx)                                              # doctest: +SKIP
[]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from pixelkiln.config import Settings, check_timezone
from pixelkiln.db import schedules as store
from pixelkiln.db.schedules import NewSchedule, Schedule, ScheduleKind
from pixelkiln.db.users import get_user
from pixelkiln.exceptions import KilnError, Problem, SpecError
from pixelkiln.inputs import load_batch_file
from pixelkiln.service.context import LOCAL, Caller, ServiceContext, require_admin
from pixelkiln.service.runs import create_projects_run, plan_projects_run
from pixelkiln.service.submission import Submission, plan, submit

log = logging.getLogger("pixelkiln.schedules")

#: fields a cron expression may have: 5, or 6 with seconds last
CRON_FIELDS = (5, 6)


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as a face shows it: with its time zone and next run in that zone."""

    schedule: Schedule
    zone: str  #: the zone its cron is read in; "" = this machine's local time
    next_run: datetime | None  #: its next slot, in ``zone``; None: none will come

    @property
    def what(self) -> str:
        """``projects /srv/studio/config.json``."""
        return f"{self.schedule.kind.value} {self.schedule.target}"


@dataclass(frozen=True)
class Fired:
    """What one start of a schedule came to."""

    schedule_id: int
    kind: ScheduleKind
    run_id: int | None  #: the run (projects) or batch (batch) it started
    error: str | None = None  #: why it started nothing
    slot: float | None = None  #: the slot it ran for (None: run now, outside the slots)


# -- cron maths -----------------------------------------------------------------------------------


def zone_of(schedule: Schedule, settings: Settings) -> str:
    """The zone a schedule's cron is read in: its own, else [schedules] timezone ("" = local)."""
    return schedule.timezone or settings.schedules.timezone


def next_slot(cron: str, zone: str, after: float) -> float:
    """The first slot of ``cron`` after the time ``after``, read in ``zone`` ("" = local).

    >>> next_slot("0 0 * * *", "UTC", 0.5)
    86400.0
    """
    start = datetime.fromtimestamp(after, ZoneInfo(zone)) if zone else datetime.fromtimestamp(after)
    found: datetime = croniter(cron, start, second_at_beginning=False).get_next(datetime)
    return found.timestamp()  # a naive (local) time is read as local time here too


def cron_problem(cron: str) -> Problem | None:
    """What is wrong with a cron expression, or None."""
    fields = cron.split()
    if len(fields) not in CRON_FIELDS or not croniter.is_valid(cron, second_at_beginning=False):
        return Problem(
            "",
            "",
            "cron",
            f"'{cron}' is not a cron expression: give 5 fields (minute hour day month "
            "weekday, e.g. '0 0 * * *') or 6 with seconds last (e.g. '* * * * * */10')",
        )
    return None


def _zone_problem(zone: str) -> Problem | None:
    try:
        check_timezone(zone)
    except ValueError as exc:
        return Problem("", "", "timezone", str(exc))
    return None


def _view(schedule: Schedule, settings: Settings) -> ScheduleView:
    zone = zone_of(schedule, settings)
    when = schedule.next_run_at
    shown = None
    if when is not None:
        shown = (
            datetime.fromtimestamp(when, ZoneInfo(zone)) if zone else datetime.fromtimestamp(when)
        )
    return ScheduleView(schedule, zone, shown)


# -- managing schedules ---------------------------------------------------------------------------


async def add_schedule(
    ctx: ServiceContext,
    caller: Caller,
    cron: str,
    kind: ScheduleKind,
    target: Path,
    *,
    options: dict[str, Any] | None = None,
    timezone: str = "",
) -> ScheduleView:
    """Check and store a schedule; its view with the first slot.

    The cron expression, the time zone and the target are checked now: the target must
    exist and be a valid batch file (every check of a submit) or project config (every
    check of a project run's plan); SpecError lists every problem.
    Targets are files on this machine, so only admins (the CLI is one) add schedules.
    """
    require_admin(caller, "schedule files of this machine")
    cron = " ".join(cron.split())
    problems = [p for p in (cron_problem(cron), _zone_problem(timezone)) if p is not None]
    if problems:
        raise SpecError(problems)
    path = target.absolute()
    options = dict(options or {})
    await _check_target(ctx, caller, kind, path, options)
    zone = timezone or ctx.settings.schedules.timezone
    new = NewSchedule(
        owner_id=caller.user_id,
        cron=cron,
        kind=kind,
        target=str(path),
        next_run_at=next_slot(cron, zone, time.time()),
        options=options,
        timezone=timezone,
    )
    schedule_id = await ctx.write(store.add_schedule, new)
    return _view(await ctx.read(store.get_schedule, schedule_id), ctx.settings)


async def list_schedules(ctx: ServiceContext, caller: Caller) -> list[ScheduleView]:
    """The caller's schedules (everyone's for the installation), with their next runs."""
    found = await ctx.read(store.list_schedules, caller.mine)
    return [_view(s, ctx.settings) for s in found]


async def remove_schedule(ctx: ServiceContext, caller: Caller, schedule_id: int) -> None:
    """Delete a schedule; what it started goes on. NotFoundError when there is none."""
    await ctx.write(store.remove_schedule, schedule_id, caller.scope)


async def run_now(ctx: ServiceContext, caller: Caller, schedule_id: int) -> Fired:
    """Start what a schedule starts, now, outside its slots (its next slot stays).

    Raises what the start raised (a target gone bad: SpecError), after recording it.
    """
    schedule = await ctx.read(store.get_schedule, schedule_id, caller.scope)
    return await fire(ctx, schedule, raise_errors=True)


# -- firing ---------------------------------------------------------------------------------------


async def run_due(ctx: ServiceContext, now: float | None = None) -> list[Fired]:
    """Claim and fire every due schedule; what each slot this process won came to.

    Each claim moves the schedule's ``next_run_at`` to its first slot after ``now``:
    one process wins each slot, and missed slots collapse into this one run.
    """
    now = time.time() if now is None else now
    fired = []
    for schedule in await ctx.read(store.due_schedules, now):
        assert schedule.next_run_at is not None  # due: it has a slot
        try:
            following: float | None = next_slot(schedule.cron, zone_of(schedule, ctx.settings), now)
        except Exception as exc:  # a zone or expression that no longer reads: no next slot
            log.error("schedule %d: no next slot: %s", schedule.id, exc)
            following = None
        seen = schedule.next_run_at
        if await ctx.write(store.claim_slot, schedule.id, seen=seen, following=following):
            # the slot in the log: across processes sharing the database, each appears once
            log.info("schedule %d: slot %d claimed", schedule.id, seen)
            fired.append(replace(await fire(ctx, schedule), slot=seen))
    return fired


async def fire(ctx: ServiceContext, schedule: Schedule, *, raise_errors: bool = False) -> Fired:
    """Start what ``schedule`` starts and record what came of it (``last_run_id`` or
    ``last_error``). A failed start raises only with ``raise_errors``."""
    try:
        caller = await _caller_of(ctx, schedule)
        if schedule.kind is ScheduleKind.PROJECTS:
            started = await _start_projects(ctx, caller, schedule)
        else:
            started = await _start_batch(ctx, caller, schedule)
    except Exception as exc:
        why = _why(exc)
        log.error("schedule %d (%s) started nothing: %s", schedule.id, schedule.target, why)
        await ctx.write(store.record_result, schedule.id, run_id=None, error=why)
        if raise_errors:
            raise
        return Fired(schedule.id, schedule.kind, None, why)
    log.info("schedule %d started %s %d", schedule.id, _started_what(schedule.kind), started)
    await ctx.write(store.record_result, schedule.id, run_id=started, error=None)
    return Fired(schedule.id, schedule.kind, started)


def _started_what(kind: ScheduleKind) -> str:
    return "run" if kind is ScheduleKind.PROJECTS else "batch"


def _why(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, KilnError) else f"{type(exc).__name__}: {exc}"
    return text[:1000]


async def _caller_of(ctx: ServiceContext, schedule: Schedule) -> Caller:
    """Who a schedule acts as: its owner, or the installation for one the CLI added."""
    if schedule.owner_id is None:
        return LOCAL
    return Caller(await ctx.read(get_user, schedule.owner_id))


async def _start_batch(ctx: ServiceContext, caller: Caller, schedule: Schedule) -> int:
    sub = await _batch_submission(ctx, caller, Path(schedule.target))
    return (await submit(ctx, caller, sub)).batch_id


async def _batch_submission(ctx: ServiceContext, caller: Caller, path: Path) -> Submission:
    loaded = await ctx.run(load_batch_file, path, source=str(path))
    return Submission(
        loaded.spec,
        source="schedule",
        source_name=loaded.source,
        where=loaded.where,
        server_paths=caller.user is None,  # files of this machine: the installation's own
        base_dir=loaded.base_dir,
    )


async def _start_projects(ctx: ServiceContext, caller: Caller, schedule: Schedule) -> int:
    return await create_projects_run(
        ctx,
        caller,
        Path(schedule.target),
        dict(schedule.options),
        source="schedule",
        schedule_id=schedule.id,
    )


# -- checking targets -----------------------------------------------------------------------------


async def _check_target(
    ctx: ServiceContext, caller: Caller, kind: ScheduleKind, path: Path, options: dict[str, Any]
) -> None:
    """SpecError unless ``path`` is a valid batch file or project config now (a project
    that cannot run, missing files say, is not an error: it fails alone at each run)."""
    if kind is ScheduleKind.BATCH:
        await plan(ctx, caller, await _batch_submission(ctx, caller, path))
    else:
        await plan_projects_run(ctx, caller, path, options)


__all__ = [
    "CRON_FIELDS",
    "Fired",
    "ScheduleKind",
    "ScheduleView",
    "add_schedule",
    "cron_problem",
    "fire",
    "list_schedules",
    "next_slot",
    "remove_schedule",
    "run_due",
    "run_now",
    "zone_of",
]
