"""Project runs: a studio's config made one run of batches, driven to its end, reported.

:func:`create_projects_run` reads the config (:mod:`pixelkiln.inputs.projects`),
resolves channels (kiln.toml's ``[channels.NAME]``, else an active preset of that
title), checks every project's batch as a submit would (a dry run) and stores the
run: nothing is generated yet. :class:`RunDriver` then drives it: one project
after another, ``delay_between_projects`` seconds apart, one batch each (named
after the project, ``source="project"``), and when the last one ends it writes
the run report (``runs.report``, a JSON file and a log file in ``logs_dir``).

The driver holds a lease on the run and keeps what it needs in the database (the
plan in ``runs.config``, the started projects as the run's batches), so a driver
that dies is replaced: ``kiln serve`` (:class:`RunKeeper`, a companion of its
scheduler) or ``kiln projects run --resume RUN_ID`` takes the run over and starts
only the projects that have no batch yet.

>>> run_id = await create_projects_run(ctx, LOCAL, Path("nightly.json"), {})   # doctest: +SKIP
>>> await RunDriver(ctx, run_id, run_batch=wait_for_batch(ctx)).drive()       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pixelkiln.db import runs as store
from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Tx
from pixelkiln.db.presets import list_presets
from pixelkiln.db.runs import NewRun, Run, RunStatus
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.engine.owners import dead_local_owners, new_owner_id
from pixelkiln.exceptions import KilnError, Problem, SpecError
from pixelkiln.inputs.projects import (
    Channel,
    ProjectsPlan,
    load_projects_config,
    plan_projects,
)
from pixelkiln.models import Batch, BatchStatus
from pixelkiln.prompts import json_safe
from pixelkiln.reports_runs import build_run_report, render_run_text
from pixelkiln.service.context import LOCAL, Caller, ServiceContext, require_admin
from pixelkiln.service.presets import PROMPT_SLOT
from pixelkiln.service.reading import wait_until_finished
from pixelkiln.service.submission import Submission, plan, submit
from pixelkiln.specs import BatchSpec, parse_batch
from pixelkiln.storage import safe_name

log = logging.getLogger("pixelkiln.runs")

#: seconds between a server's looks for runs no process drives
RUN_POLL = 5.0
#: command-line keys of a run's overrides that are not project settings
RUN_OVERRIDES = ("pid", "projects_dir")

BatchRunner = Callable[[int], Awaitable[None]]


# -- planning -----------------------------------------------------------------------------------


async def channels_for(ctx: ServiceContext, names: set[str]) -> dict[str, Channel]:
    """The named channels: kiln.toml's ``[channels.NAME]`` first, else the active preset
    titled NAME (its content is the style text, ``{prompt}`` left out)."""
    found = {
        name: Channel(name, c.style, c.params(), "kiln.toml")
        for name, c in ctx.settings.channels.items()
        if name in names
    }
    if names - set(found):
        for preset in await ctx.read(list_presets):
            if preset.title in names and preset.title not in found:
                style = preset.content.replace(PROMPT_SLOT, "").strip(" ,.")
                params = dict(preset.params)
                if preset.negative_prompt:
                    params["negative_prompt"] = preset.negative_prompt
                found[preset.title] = Channel(preset.title, style, params, f"preset {preset.id}")
    return found


async def plan_projects_run(
    ctx: ServiceContext, caller: Caller, config: Path, overrides: Mapping[str, Any]
) -> ProjectsPlan:
    """What a run of ``config`` would do: every project planned and its batch checked.

    SpecError (every problem located) for a config that cannot run at all; a project
    that cannot run (missing files, unknown channel, bad scenes) says why in its plan.
    ``overrides``: ``pid`` (text or list: only those projects), ``projects_dir`` and
    project settings (``language``, ``channel``, ``cfg_scale``...). Nothing is stored.
    """
    require_admin(caller, "run projects from files on the server")
    pids = overrides.get("pid") or ()
    settings = {k: v for k, v in overrides.items() if k != "pid" and v is not None}
    loaded = await ctx.run(
        load_projects_config,
        config,
        settings,
        ctx.settings.projects,
        pids=[pids] if isinstance(pids, str) else list(pids),
    )
    channels = await channels_for(ctx, loaded.channel_names)
    planned = await ctx.run(plan_projects, loaded, channels)
    problems: list[Problem] = []
    for project in planned.projects:
        if project.spec is not None:
            try:
                sub = _submission(project.spec, project.pid, project.folder, loaded.source)
                await plan(ctx, caller, sub)
            except SpecError as exc:
                problems += _in_project(exc.problems, project.pid, len(project.spec.tasks))
    if problems:
        raise SpecError(problems)
    return planned


def _in_project(found: Sequence[Problem], pid: str, scenes: int) -> list[Problem]:
    """The problems of a project's batch, located in the project; one that every scene
    has (a shared setting: an unknown backend in ``default_settings``) is said once."""
    by_kind: dict[tuple[str, str], list[Problem]] = {}
    for problem in found:
        by_kind.setdefault((problem.field, problem.message), []).append(problem)
    said = []
    for (field, message), same in by_kind.items():
        first = same[0]
        if len(same) == 1:
            where = f"project '{pid}'" + (f", {first.where}" if first.where else "")
        else:
            every = "every scene" if len(same) >= scenes else f"{len(same)} scenes"
            where = f"project '{pid}' ({every})"
        said.append(Problem(first.source, where, field, message))
    return said


def _submission(spec: BatchSpec, pid: str, folder: Path, source: str, **extra: Any) -> Submission:
    return Submission(
        spec,
        source="project",
        source_name=f"{source} ({pid})",
        server_paths=True,  # an admin's own files (plan_projects_run requires one)
        base_dir=folder,
        **extra,
    )


async def create_projects_run(
    ctx: ServiceContext,
    caller: Caller,
    config: Path,
    overrides: dict[str, Any],
    *,
    source: str = "cli",
    schedule_id: int | None = None,
    lease_owner: str | None = None,
    planned: ProjectsPlan | None = None,
    also: Callable[[Tx, int], None] | None = None,
) -> int:
    """Plan ``config`` (see :func:`plan_projects_run`) and store it as a run; its id.

    Nothing runs yet: a server's :class:`RunKeeper` drives a run no process holds, or
    the caller drives it itself, holding it from the start with ``lease_owner``.
    ``planned``: the plan the caller just made of the same ``config`` and ``overrides``
    (shown to a person first), not made again. ``also(tx, run_id)`` runs in the
    transaction that stores the run (a schedule records its start): what it raises
    stores nothing.
    """
    if planned is None:
        planned = await plan_projects_run(ctx, caller, config, overrides)
    stored = _stored_config(planned, overrides)
    new = NewRun(
        name=planned.config.path.stem,
        kind="projects",
        source=source,
        config=stored,
        owner_id=caller.user_id,
        schedule_id=schedule_id,
        lease_owner=lease_owner,
        lease_seconds=ctx.settings.scheduler.lease_seconds,
    )
    run_id = await ctx.write(_store_run, new, also)
    log.info("run %s created from %s: %d project(s)", run_id, config, len(planned.projects))
    return run_id


def _store_run(tx: Tx, new: NewRun, also: Callable[[Tx, int], None] | None) -> int:
    run_id = store.create_run(tx, new)
    if also is not None:
        also(tx, run_id)
    return run_id


def _stored_config(planned: ProjectsPlan, overrides: Mapping[str, Any]) -> dict[str, Any]:
    config = planned.config
    return {
        "version": 1,
        "file": str(config.path),
        "description": config.description,
        "overrides": json_safe(
            {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
        ),
        "projects_dir": str(config.projects_dir),
        "logs_dir": str(config.logs_dir),
        "stamp": f"{datetime.now():%Y%m%d_%H%M%S}",
        "projects": [
            {
                "pid": p.pid,
                "folder": str(p.folder),
                "spec": p.spec.model_dump(mode="json", exclude_none=True) if p.spec else None,
                "missing": list(p.missing),
                "problem": p.problem,
                "delay": p.delay,
                "images": p.images,
                "images_dir": str(p.images_dir) if p.images_dir else None,
            }
            for p in planned.projects
        ],
    }


def run_files(run: Run) -> dict[str, str]:
    """The run's JSON report and log file, in its ``logs_dir``."""
    folder = Path(run.config["logs_dir"])
    stem = f"run-{run.id}-{run.config['stamp']}"
    return {"report": str(folder / f"{stem}.json"), "log": str(folder / f"{stem}.log")}


# -- driving ------------------------------------------------------------------------------------


def wait_for_batch(ctx: ServiceContext) -> BatchRunner:
    """A batch runner that only waits: another scheduler (a server's) runs the tasks."""

    async def wait(batch_id: int) -> None:
        while not await wait_until_finished(ctx, batch_id, 60.0):
            pass

    return wait


class RunStopped(KilnError):
    """The driver stopped before the run ended (interrupted, or its lease was taken)."""


class RunDriver:
    """Drives one run to its end; see the module docstring.

    ``run_batch(batch_id)`` returns once the batch has ended (or raises RunStopped);
    ``notes`` hears each line the run's log gets (the CLI prints them).
    """

    def __init__(
        self,
        ctx: ServiceContext,
        run_id: int,
        *,
        run_batch: BatchRunner,
        owner: str | None = None,
        notes: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.owner = owner or new_owner_id()
        self.run_batch = run_batch
        self.notes = notes
        self.lease = ctx.settings.scheduler.lease_seconds
        self.lost = False  #: another process took the run over
        self._log: Path | None = None

    async def claim(self) -> bool:
        """Take the run's lease: free, lapsed, already this driver's, or held by a process
        of this host that is gone (a killed `kiln projects run`: no wait for its lease)."""
        if await self.ctx.write(store.claim_run, self.run_id, self.owner, self.lease):
            return True
        holder = (await self.ctx.read(store.get_run, self.run_id)).lease_owner
        dead = dead_local_owners([holder], self.owner) if holder else []
        if not dead:
            return False
        return await self.ctx.write(store.claim_run, self.run_id, self.owner, self.lease, dead[0])

    async def drive(self) -> dict[str, Any] | None:
        """Drive the run to its end; its report, or None when stopped first (or held by
        another process). The lease is given back when stopping early."""
        if not await self.claim():
            return None
        work = asyncio.ensure_future(self._drive())
        keeper = asyncio.ensure_future(self._keep(work))
        try:
            return await work
        except (RunStopped, asyncio.CancelledError):
            if self.lost:
                return None
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(Exception):
                await self.ctx.write(store.release_run, self.run_id, self.owner)

    async def _keep(self, work: asyncio.Future[Any]) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                held = await self.ctx.write(store.renew_run, self.run_id, self.owner, self.lease)
            except KilnError as exc:  # a database hiccup: try again at the next beat
                log.warning("run %s: lease renewal failed: %s", self.run_id, exc)
                continue
            if not held:
                self.lost = True
                log.warning("run %s: another process took the run over", self.run_id)
                work.cancel()
                return

    async def _drive(self) -> dict[str, Any]:
        run = await self.ctx.read(store.get_run, self.run_id)
        self._log = Path(run_files(run)["log"])
        resumed = run.started_at is not None
        await self.ctx.write(store.mark_started, self.run_id)
        projects = run.config["projects"]
        self.note(
            f"run {run.id} '{run.name}' {'resumed' if resumed else 'started'}: "
            f"{len(projects)} project(s) from {run.config['file']}"
        )
        for index, project in enumerate(projects):
            if project.get("problem"):
                if not resumed:
                    self.note(f"project {project['pid']} failed: {project['problem']}")
                continue
            await self._project(run, index, project)
        return await self._finish(run)

    async def _project(self, run: Run, index: int, project: dict[str, Any]) -> None:
        pid = project["pid"]
        started = {b.name: b for b in await self.ctx.read(store.run_batches, self.run_id)}
        batch = started.get(pid)
        if batch is None:
            await self._pause(list(started.values()), float(project.get("delay") or 0))
            batch_id = await self._start(run, index, project)
            if batch_id is None:
                return
        else:
            batch_id = batch.id
        found = await self.ctx.read(get_batch, batch_id)
        if not found.status.finished:
            await self.run_batch(batch_id)
            found = await self.ctx.read(get_batch, batch_id)
        if not found.status.finished:
            raise RunStopped(f"batch {batch_id} of project {pid} has not ended")
        copied = await self.ctx.run(self._copy, project, found)
        self._ended(pid, found, copied)

    async def _pause(self, started: list[Any], delay: float) -> None:
        """Wait out ``delay`` after the latest project ended (none before the first)."""
        ends = [b.finished_at for b in started if b.finished_at]
        if delay <= 0 or not ends:
            return
        left = max(ends) + delay - time.time()
        if left > 0:
            self.note(f"waiting {left:.0f} s before the next project")
            await asyncio.sleep(left)

    async def _start(self, run: Run, index: int, project: dict[str, Any]) -> int | None:
        pid = project["pid"]
        caller = LOCAL  # the run's owner pays, as when it was planned (owner_id below)
        try:
            spec = parse_batch(project["spec"], run.config["file"])
            folder = Path(project["folder"])
            sub = _submission(
                spec, pid, folder, run.config["file"], run_id=run.id, owner_id=run.owner_id
            )
            submitted = await submit(self.ctx, caller, sub)
        except KilnError as exc:  # refused at its start (credits spent since, a file gone)
            why = str(exc) or type(exc).__name__
            await self.ctx.write(store.set_project_problem, self.run_id, self.owner, index, why)
            self.note(f"project {pid} failed: {why}")
            return None
        self.note(f"project {pid} started: batch {submitted.batch_id}, {len(spec.tasks)} task(s)")
        return submitted.batch_id

    def _copy(self, project: dict[str, Any], batch: Batch) -> int:
        """``output = "project"``: the batch's images into the project's images folder as
        ``{pid}_{scene key}_{index}.png`` (names made safe; the same file is not copied twice)."""
        target = project.get("images_dir")
        if not target:
            return 0
        folder = Path(target)
        keys = {t.id: t.key for t in self.ctx.db.read(list_tasks, batch.id)}
        count = 0
        for image in self.ctx.db.read(list_images, batch.id):
            key = safe_name(keys.get(image.task_id, str(image.task_id)), "scene")
            name = f"{safe_name(project['pid'], 'project')}_{key}_{image.index}.png"
            dest = folder / name
            if dest.is_file() and dest.stat().st_size == image.bytes:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            self.ctx.storage.save_to(image.path, dest)  # from the storage, wherever it is
            count += 1
        return count

    def _ended(self, pid: str, batch: Batch, copied: int) -> None:
        c = batch.counts
        seconds = (batch.finished_at or 0) - (batch.started_at or batch.created_at)
        if batch.status == BatchStatus.COMPLETED:
            self.note(f"project {pid} succeeded: {c.images} image(s) in {seconds:.1f} s")
        else:
            self.note(
                f"project {pid} failed: batch {batch.id} {batch.status}, {c.failed} of "
                f"{c.total} task(s) failed, {c.cancelled} cancelled"
            )
        if copied:
            self.note(f"project {pid}: {copied} image(s) copied into its images folder")

    async def _finish(self, run: Run) -> dict[str, Any]:
        files = run_files(run)
        before = await self.ctx.read(build_run_report, self.run_id, files)
        ok, total = before["projects_succeeded"], before["projects_total"]
        status = RunStatus.PARTIAL
        if ok == total:
            status = RunStatus.COMPLETED
        elif ok == 0:
            status = RunStatus.FAILED
        ending = (status, time.time())
        report = await self.ctx.read(build_run_report, self.run_id, files, ending)
        ended = await self.ctx.write(
            store.finish_run, self.run_id, self.owner, status, report, ending[1]
        )
        if not ended:
            self.lost = True
            raise RunStopped(f"run {self.run_id} was taken over before it ended")
        for line in render_run_text(report).splitlines():
            self._write_log(line)
        try:
            path = Path(files["report"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        except OSError as exc:  # a full disk must not lose the run: the report is in the DB
            log.error("run %s: could not write %s: %s", self.run_id, files["report"], exc)
        return report

    def note(self, line: str) -> None:
        """One line of the run's log (and the CLI's console)."""
        log.info("run %s: %s", self.run_id, line)
        self._write_log(line)
        if self.notes is not None:
            self.notes(line)

    def _write_log(self, line: str) -> None:
        if self._log is None:
            return
        try:
            self._log.parent.mkdir(parents=True, exist_ok=True)
            with self._log.open("a", encoding="utf-8") as fh:
                fh.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")
        except OSError as exc:
            log.error("run %s: could not write its log %s: %s", self.run_id, self._log, exc)


class RunKeeper:
    """A server's companion: drives every project run that no live process holds (one
    whose driver died, or one a schedule created), until the server stops."""

    name = "run driver"

    def __init__(self, ctx: ServiceContext, poll: float = RUN_POLL) -> None:
        self.ctx = ctx
        self.poll = poll
        self.owner = new_owner_id()
        self._driving: dict[int, asyncio.Task[None]] = {}

    async def run(self) -> None:
        while True:
            for run_id in await self.ctx.read(store.orphan_runs, time.time()):
                if run_id not in self._driving:
                    self._driving[run_id] = asyncio.create_task(self._drive(run_id))
            self._driving = {k: t for k, t in self._driving.items() if not t.done()}
            await asyncio.sleep(self.poll)

    async def _drive(self, run_id: int) -> None:
        driver = RunDriver(self.ctx, run_id, run_batch=wait_for_batch(self.ctx), owner=self.owner)
        try:
            await driver.drive()
        except RunStopped as exc:
            log.warning("run %s stopped: %s", run_id, exc)
        except KilnError:
            log.exception("run %s: driving it failed; the next look tries again", run_id)

    async def finish(self) -> None:
        """Stop driving: each run's lease is given back for the next process to take."""
        for task in self._driving.values():
            task.cancel()
        await asyncio.gather(*self._driving.values(), return_exceptions=True)
        self._driving.clear()
