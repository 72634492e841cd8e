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

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from croniter import croniter

from pixelkiln.config import Settings, check_timezone
from pixelkiln.db import schedules as store
from pixelkiln.db.schedules import ClaimLost, NewSchedule, Schedule, ScheduleKind
from pixelkiln.db.users import get_user
from pixelkiln.engine.owners import new_owner_id
from pixelkiln.exceptions import KilnError, Problem, SpecError
from pixelkiln.hours import zone_named
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
    """The first slot of ``cron`` after the time ``after``, read in ``zone`` ("" = this
    machine's zone, :func:`pixelkiln.hours.local_zone`). Always later than ``after``.

    Cron names wall-clock times; where the clocks change, each such time runs once
    (docs/schedules.md#when-clocks-change): in the hour that happens twice (autumn) at
    its first occurrence only; in the hour that is skipped (spring) at the instant the
    clocks jump (02:30 runs at 03:00), once however many slots the hour held.

    >>> next_slot("0 0 * * *", "UTC", 0.5)
    86400.0
    """
    tz = zone_named(zone)
    # croniter steps through naive wall-clock times (plain calendar arithmetic); each is
    # then placed in the zone here, where the rules above are applied
    wall = datetime.fromtimestamp(after, tz).replace(tzinfo=None)
    slots = croniter(cron, wall, second_at_beginning=False)
    while True:
        found = _instant(slots.get_next(datetime), tz)
        if found > after:  # an earlier one: the repeated hour's second pass, already run
            return found


def _instant(wall: datetime, tz: tzinfo) -> float:
    """The instant the clocks of ``tz`` first show ``wall``, or, for a time they skip,
    the instant they jump over it."""
    first = wall.replace(tzinfo=tz, fold=0)  # fold 0: the first of a repeated time
    if datetime.fromtimestamp(first.timestamp(), tz).replace(tzinfo=None) == wall:
        return first.timestamp()
    # skipped: fold 1 reads it with the offset before the jump, fold 0 with the one after;
    # the jump lies between (transitions fall on whole seconds)
    before, after = int(wall.replace(tzinfo=tz, fold=1).timestamp()), int(first.timestamp())
    offset = datetime.fromtimestamp(after, tz).utcoffset()  # the one after the jump
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
            after = middle
        else:
            before = middle
    return float(after)


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
    shown = None if when is None else datetime.fromtimestamp(when, zone_named(zone))
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


async def run_now(
    ctx: ServiceContext, caller: Caller, schedule_id: int, *, lease_owner: str | None = None
) -> Fired:
    """Start what a schedule starts, now, outside its slots (its next slot stays).

    ``lease_owner``: a project run is created held by that driver (the CLI that follows
    it), so that no server takes it meanwhile. Raises what the start raised (a target
    gone bad: SpecError), after recording it.
    """
    schedule = await ctx.read(store.get_schedule, schedule_id, caller.scope)
    return await fire(ctx, schedule, raise_errors=True, lease_owner=lease_owner)


# -- firing ---------------------------------------------------------------------------------------


async def run_due(ctx: ServiceContext, now: float | None = None) -> list[Fired]:
    """Claim and fire every due schedule; what each slot this process won came to.

    Each claim moves the schedule's ``next_run_at`` to its first slot after ``now``:
    one process wins each slot, and missed slots collapse into this one run. A claim
    whose process died before starting it (older than ``[scheduler] lease_seconds``)
    is taken over and started first, once (see :mod:`pixelkiln.db.schedules`).
    """
    now = time.time() if now is None else now
    owner = new_owner_id()
    fired = []
    before = now - ctx.settings.scheduler.lease_seconds
    for stale in await ctx.read(store.stale_claims, before):
        if await ctx.write(store.take_over, stale, owner):
            slot = stale.claimed_slot
            log.warning(
                "schedule %d: slot %s left unstarted by %s", stale.id, slot, stale.claimed_by
            )
            fired.append(await fire(ctx, stale, claim=(owner, slot)))
    for schedule in await ctx.read(store.due_schedules, now):
        seen = schedule.next_run_at
        assert seen is not None  # due: it has a slot
        try:
            following: float | None = next_slot(schedule.cron, zone_of(schedule, ctx.settings), now)
        except Exception as exc:  # a zone or expression that no longer reads: no next slot
            log.error("schedule %d: no next slot: %s", schedule.id, exc)
            following = None
        claimed = await ctx.write(
            store.claim_slot, schedule.id, seen=seen, following=following, owner=owner
        )
        if claimed:  # in the log: across processes sharing the database, each appears once
            log.info("schedule %d: slot %d claimed", schedule.id, seen)
            fired.append(await fire(ctx, schedule, claim=(owner, seen)))
    return fired


async def fire(
    ctx: ServiceContext,
    schedule: Schedule,
    *,
    raise_errors: bool = False,
    claim: tuple[str, float | None] | None = None,
    lease_owner: str | None = None,
) -> Fired:
    """Start what ``schedule`` starts and record what came of it (``last_run_id`` or
    ``last_error``). A failed start raises only with ``raise_errors``.

    ``claim`` (claimant, slot): the slot this start is for; its claim is settled with
    the record, in the transaction that creates a project run (a batch file's batch is
    made once per slot however often the claim is taken over: its idempotency key).
    ``lease_owner``: a project run is created held by it (see :func:`run_now`).
    """
    claimant, slot = claim if claim is not None else (None, None)
    record = functools.partial(store.record_result, schedule_id=schedule.id, claimant=claimant)
    try:
        caller = await _caller_of(ctx, schedule)
        if schedule.kind is ScheduleKind.PROJECTS:
            started = await _start_projects(ctx, caller, schedule, record, lease_owner)
        else:
            started = await _start_batch(ctx, caller, schedule, slot)
            await ctx.write(record, run_id=started, error=None)
    except ClaimLost as exc:
        log.warning("%s", exc)
        return Fired(schedule.id, schedule.kind, None, str(exc), slot)
    except Exception as exc:
        why = _why(exc)
        log.error("schedule %d (%s) started nothing: %s", schedule.id, schedule.target, why)
        with contextlib.suppress(ClaimLost):  # taken over: the new holder records its own
            await ctx.write(record, run_id=None, error=why)
        if raise_errors:
            raise
        return Fired(schedule.id, schedule.kind, None, why, slot)
    log.info("schedule %d started %s %d", schedule.id, _started_what(schedule.kind), started)
    return Fired(schedule.id, schedule.kind, started, None, slot)


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


async def _start_batch(
    ctx: ServiceContext, caller: Caller, schedule: Schedule, slot: float | None
) -> int:
    sub = await _batch_submission(ctx, caller, Path(schedule.target))
    if slot is not None:  # a slot's batch is made once, however often its claim is taken over
        sub = replace(sub, idempotency_key=f"schedule {schedule.id} slot {slot!r}")
        sub = replace(sub, fingerprint=sub.idempotency_key or "")
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


async def _start_projects(
    ctx: ServiceContext,
    caller: Caller,
    schedule: Schedule,
    record: Callable[..., None],
    lease_owner: str | None,
) -> int:
    """A run of the schedule's project config, recorded in the transaction that stores it."""
    return await create_projects_run(
        ctx,
        caller,
        Path(schedule.target),
        dict(schedule.options),
        source="schedule",
        schedule_id=schedule.id,
        lease_owner=lease_owner,
        also=lambda tx, run_id: record(tx, run_id=run_id, error=None),
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
