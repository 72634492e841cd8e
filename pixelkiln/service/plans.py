"""A plan before the run: what a batch would take — tasks, images, credits, time, money —
and what stops it, said before anything is stored.

The estimate works on groups, never task by task: the batch's tasks are counted once
into (backend, width, height, steps) groups, and every figure after that is per group,
so a plan of 100,000 tasks costs one pass over them and one read of ``speeds``. A sweep
is not even made: its :meth:`~pixelkiln.sweeps.Expansion.sample` (each base task once
per value of the axes over backend, size, steps or n) is resolved and checked, and each
sampled task counts for the tasks it stands for (its prompts × the other axes' values).

Time, per backend: each group's seconds per image comes from ``speeds`` (measured when
batches end, see :mod:`pixelkiln.db.speeds`): the exact (width, height, steps) when
measured, else the backend's nearest measured size and steps scaled by
pixels × steps; a backend never measured is *unknown*. Its work (images × seconds per
image) runs on its slots (concurrency per server × servers, at most the global
concurrency and the batch's ``max_workers``) in rounds: ``ceil(tasks / slots)`` rounds
of the mean task. Backends run side by side, so the batch takes the longest of them, but
no less than all the work over the global concurrency, nor than its ``delay`` between
starts; unknown when any backend it uses is unknown (:attr:`Plan.unknown` names them).

Money, per backend: ``price_per_image`` × images + ``price_per_megapixel`` × megapixels;
None without a price. The batch's money is the sum of the priced backends (None when
none is priced).

>>> groups = group_tasks(new_batch.tasks)                          # doctest: +SKIP
>>> estimate(groups, measured, Capacity(overall=4, slots={"webui": 2}), {})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pixelkiln.config import LimitsSettings
from pixelkiln.db.batches import NewBatch
from pixelkiln.db.credits import InsufficientCreditsError, balance, ensure_covered
from pixelkiln.db.speeds import Speed, measured
from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.inputs.sizes import limit_message
from pixelkiln.resolve import ResolvedTask
from pixelkiln.service.admin import concurrency_view
from pixelkiln.service.context import ServiceContext
from pixelkiln.specs import BatchSpec
from pixelkiln.sweeps import count_tasks


class WorkKey(NamedTuple):
    """What a task's time depends on: where it runs, its size and its steps."""

    backend: str
    width: int
    height: int
    steps: int


@dataclass
class Load:
    """How much of a batch falls in one group."""

    tasks: int = 0
    images: int = 0


class Rate(NamedTuple):
    """Seconds per image used for a group, and where the figure comes from."""

    seconds: float | None  #: None: the backend has no measured speed at all
    basis: str  #: "measured", "scaled" (from another size or steps) or "unknown"


@dataclass(frozen=True)
class Prices:
    """A backend's money per image and per megapixel (``[[backends]]``); None: not set."""

    per_image: float | None = None
    per_megapixel: float | None = None

    def cost(self, images: int, megapixels: float) -> float | None:
        if self.per_image is None and self.per_megapixel is None:
            return None
        return (self.per_image or 0.0) * images + (self.per_megapixel or 0.0) * megapixels


@dataclass(frozen=True)
class Capacity:
    """How many tasks may run at once: in all, per backend, in this batch; its pacing."""

    overall: int  #: the global concurrency (an admin's value at run time, else kiln.toml's)
    slots: Mapping[str, int]  #: per backend: concurrency per server × servers
    max_workers: int | None = None  #: the batch's own cap, if it has one
    delay: float | None = None  #: the batch's seconds between two starts

    def of(self, backend: str) -> int:
        """Tasks of ``backend`` this batch may run at once."""
        limits = [self.slots.get(backend, 1), self.overall, self.max_workers or self.overall]
        return max(1, min(limits))


@dataclass(frozen=True)
class BackendPlan:
    """One backend's share of a plan."""

    name: str
    tasks: int
    images: int
    megapixels: float
    #: mean seconds per image used (weighted by images); None: unknown
    seconds_per_image: float | None
    basis: str  #: "measured", "scaled" (some groups from another size or steps), "unknown"
    slots: int  #: tasks it runs at once for this batch
    seconds: float | None  #: its estimated time; None: unknown
    money: float | None  #: None: no price configured


@dataclass(frozen=True)
class Plan:
    """What a submit would store, charge and take (a dry run's answer)."""

    tasks: int
    images: int
    credits: int  #: what the owner would be charged
    seconds: float | None = None  #: the batch's estimated time; None: unknown (see ``unknown``)
    backends: tuple[BackendPlan, ...] = ()
    money: float | None = None  #: priced backends' money, summed; None: none is priced
    unknown: tuple[str, ...] = ()  #: backends it uses that have no measured speed
    #: why a submit would create nothing: over ``[limits]``, over the owner's credits
    problems: tuple[Problem, ...] = ()
    balance: int | None = None  #: the owner's credits, when the batch costs any

    def refuse(self) -> None:
        """Raise what a submit of this batch would: SpecError over a limit,
        InsufficientCreditsError over the balance; nothing when it would be accepted."""
        limits = [p for p in self.problems if p.field != "credits"]
        if limits:
            raise SpecError(limits)
        if self.balance is not None:
            ensure_covered(self.credits, self.balance)


# -- the maths --------------------------------------------------------------------------------


def group_tasks(
    tasks: Sequence[ResolvedTask], weights: Sequence[int] | None = None
) -> dict[WorkKey, Load]:
    """The batch's tasks counted into (backend, width, height, steps) groups: one pass.

    ``weights``, one per task, are how many tasks each stands for (a sweep's
    :class:`~pixelkiln.sweeps.Sample`); without them each is one.
    """
    groups: dict[WorkKey, Load] = {}
    counts = [1] * len(tasks) if weights is None else weights
    for task, weight in zip(tasks, counts, strict=True):
        key = WorkKey(task.backend, task.width, task.height, task.steps)
        load = groups.get(key)
        if load is None:
            load = groups[key] = Load()
        load.tasks += weight
        load.images += task.n * weight
    return groups


def rate(key: WorkKey, known: Sequence[Speed]) -> Rate:
    """Seconds per image of ``key`` from its backend's measured speeds ``known``.

    The exact size and steps when measured; else the nearest measured one (by the
    ratio of pixels × steps) scaled by that ratio; unknown when nothing is measured.
    """
    if not known:
        return Rate(None, "unknown")
    work = _work(key.width, key.height, key.steps)
    for speed in known:
        if (speed.width, speed.height, speed.steps) == (key.width, key.height, key.steps):
            return Rate(speed.seconds_per_image, "measured")
    nearest = min(known, key=lambda s: abs(math.log(work / _work(s.width, s.height, s.steps))))
    ratio = work / _work(nearest.width, nearest.height, nearest.steps)
    return Rate(nearest.seconds_per_image * ratio, "scaled")


def _work(width: int, height: int, steps: int) -> float:
    return float(max(1, width) * max(1, height) * max(1, steps))


def estimate(
    groups: Mapping[WorkKey, Load],
    known: Mapping[str, Sequence[Speed]],
    capacity: Capacity,
    prices: Mapping[str, Prices],
) -> tuple[tuple[BackendPlan, ...], float | None]:
    """Each backend's plan, and the batch's seconds (None when any backend is unknown)."""
    by_backend: dict[str, list[tuple[WorkKey, Load]]] = {}
    for key, load in groups.items():
        by_backend.setdefault(key.backend, []).append((key, load))
    plans = tuple(
        _backend_plan(name, parts, known.get(name, ()), capacity, prices.get(name, Prices()))
        for name, parts in sorted(by_backend.items())
    )
    return plans, _overall(plans, capacity)


def _backend_plan(
    name: str,
    parts: list[tuple[WorkKey, Load]],
    known: Sequence[Speed],
    capacity: Capacity,
    prices: Prices,
) -> BackendPlan:
    tasks = sum(load.tasks for _, load in parts)
    images = sum(load.images for _, load in parts)
    megapixels = sum(load.images * key.width * key.height for key, load in parts) / 1e6
    rates = [(rate(key, known), load) for key, load in parts]
    slots = capacity.of(name)
    work: float | None = None
    basis = "unknown"
    if all(r.seconds is not None for r, _ in rates):
        work = sum((r.seconds or 0.0) * load.images for r, load in rates)
        basis = "measured" if all(r.basis == "measured" for r, _ in rates) else "scaled"
    seconds = None if work is None else math.ceil(tasks / slots) * (work / tasks)
    return BackendPlan(
        name=name,
        tasks=tasks,
        images=images,
        megapixels=megapixels,
        seconds_per_image=None if work is None else work / images,
        basis=basis,
        slots=slots,
        seconds=seconds,
        money=prices.cost(images, megapixels),
    )


def _overall(plans: Sequence[BackendPlan], capacity: Capacity) -> float | None:
    """The longest backend, but no less than all the work over the global concurrency
    (the backends share it) nor than the batch's delay between its starts."""
    if not plans or any(p.seconds is None for p in plans):
        return None
    tasks = sum(p.tasks for p in plans)
    work = sum((p.seconds_per_image or 0.0) * p.images for p in plans)
    shared = math.ceil(tasks / max(1, min(capacity.overall, capacity.max_workers or tasks)))
    paced = (tasks - 1) * (capacity.delay or 0.0)
    return max(max(p.seconds or 0.0 for p in plans), shared * work / tasks, paced)


def total_money(plans: Sequence[BackendPlan]) -> float | None:
    """The priced backends' money, summed; None when no backend it uses has a price."""
    priced = [p.money for p in plans if p.money is not None]
    return sum(priced) if priced else None


# -- limits -----------------------------------------------------------------------------------


def task_limit_problem(
    spec: BatchSpec, limits: LimitsSettings, source: str, base_dir: Path | None = None
) -> Problem | None:
    """The batch makes more tasks than ``[limits] max_tasks_per_batch`` allows (counted
    after wildcards, random draws and sweep axes, without making them)."""
    return too_many_tasks(count_tasks(spec, base_dir), limits, source)


def too_many_tasks(count: int, limits: LimitsSettings, source: str) -> Problem | None:
    """The problem of a batch of ``count`` tasks when that is over ``[limits]``; else None."""
    if count <= limits.max_tasks_per_batch:
        return None
    return Problem(source, "", "tasks", limit_message(count, limits.max_tasks_per_batch))


def pixel_problems(
    tasks: Sequence[ResolvedTask], limits: LimitsSettings, source: str, where: str = "task"
) -> list[Problem]:
    """Tasks asking for an image larger than ``[limits] max_pixels``."""
    return [
        Problem(
            source,
            f"{where} {task.position}",
            "width",
            f"{task.width}×{task.height} is {task.width * task.height:,} pixels; at most "
            f"{limits.max_pixels:,} ([limits] max_pixels)",
        )
        for task in tasks
        if task.width * task.height > limits.max_pixels
    ]


def over_limit(spec: BatchSpec, problem: Problem, base_dir: Path | None = None) -> Plan:
    """The plan of a batch over the task limit: its counts (after wildcards and sweep
    axes) and why, nothing estimated (its tasks are not resolved: the limit is there so
    that none has to be). Images: the tasks times their listed tasks' mean ``n``."""
    default_n = spec.defaults.n or 1
    listed = sum(task.n or default_n for task in spec.tasks)
    tasks = count_tasks(spec, base_dir)
    images = round(tasks * listed / len(spec.tasks)) if spec.tasks else tasks * default_n
    return Plan(tasks, images, 0, problems=(problem,))


# -- the service call -------------------------------------------------------------------------


async def plan_batch(
    ctx: ServiceContext,
    new: NewBatch,
    costs: Sequence[int],
    weights: Sequence[int] | None = None,
) -> Plan:
    """The plan of a checked batch: counts, credits, time and money per backend, problems.

    ``weights`` (per task of ``new``) are how many tasks each stands for, when ``new`` is
    a sweep's sample (:meth:`pixelkiln.sweeps.Expansion.sample`); ``costs`` are per task.
    """
    weights = weights or [1] * len(new.tasks)
    groups = group_tasks(new.tasks, weights)
    known = await ctx.read(measured, {key.backend for key in groups})
    view = await concurrency_view(ctx)
    capacity = Capacity(
        overall=view.concurrency,
        slots={b.name: b.cap for b in view.backends},
        max_workers=new.max_workers,
        delay=new.delay,
    )
    prices = {
        b.name: Prices(b.price_per_image, b.price_per_megapixel)
        for b in ctx.settings.effective_backends()
    }
    backends, seconds = estimate(groups, known, capacity, prices)
    credits = sum(cost * weight for cost, weight in zip(costs, weights, strict=True))
    owner_balance, problems = await _credit_check(ctx, new.owner_id, credits)
    return Plan(
        tasks=sum(weights),
        images=sum(load.images for load in groups.values()),
        credits=credits,
        seconds=seconds,
        backends=backends,
        money=total_money(backends),
        unknown=tuple(p.name for p in backends if p.seconds is None),
        problems=tuple(problems),
        balance=owner_balance,
    )


async def _credit_check(
    ctx: ServiceContext, owner_id: int | None, credits: int
) -> tuple[int | None, list[Problem]]:
    """The owner's balance when the batch costs credits, and a problem when it does not
    cover them (as ``charge_new_batch`` would refuse; a grant may still come first)."""
    if not credits or owner_id is None:
        return None, []
    found = await ctx.read(balance, owner_id)
    if credits <= found:
        return found, []
    return found, [Problem("", "", "credits", str(InsufficientCreditsError(credits, found)))]


def confirm_reasons(plan: Plan, limits: LimitsSettings, *, unattended: bool = False) -> list[str]:
    """Why ``kiln run`` asks before queuing this batch (empty: it does not ask).

    Above ``[limits] confirm_images`` images, an estimate above ``confirm_hours``, or
    money above ``confirm_money`` (0: never); an unknown estimate does not ask (a first
    run has none). ``unattended`` (no terminal: cron, a pipe): only money stops a run, so
    that a nightly job of 2,000 images goes on as before while an unwatched spend above
    the threshold someone set does not.
    """
    reasons = []
    if limits.confirm_money and plan.money is not None and plan.money > limits.confirm_money:
        reasons.append(f"money {plan.money:,.2f} (over {limits.confirm_money:,.2f})")
    if unattended:
        return reasons
    if limits.confirm_images and plan.images > limits.confirm_images:
        reasons.append(f"{plan.images:,} images (over {limits.confirm_images:,})")
    hours = limits.confirm_hours
    if hours and plan.seconds is not None and plan.seconds > hours * 3600:
        reasons.append(f"about {duration_text(plan.seconds)} (over {hours:g} h)")
    return reasons


def duration_text(seconds: float) -> str:
    """``1 h 05 min``, ``3 min 20 s``, ``12 s``: a duration for people.

    >>> duration_text(3900.0)
    '1 h 05 min'
    """
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s" if whole else f"{seconds:.1f} s"
