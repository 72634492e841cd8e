"""``kiln projects run|check|sample``: a studio's project config, one batch per project.

Thin over :mod:`pixelkiln.service.runs`. Exit codes: ``run`` 0 when every project
succeeded, 1 when one failed, 2 for a config that cannot run, 130 interrupted;
``check`` 0 when every project can run, 1 when one cannot (a missing file), 2 for
a bad config. See docs/projects.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pixelkiln.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigOption,
    LogLevelOption,
    QuietOption,
    console,
    err_console,
    errors,
    settings_from,
    setup_logging,
)
from pixelkiln.exceptions import InvalidStateError

# Each command imports what it uses (`kiln status` lists runs without the engine).
if TYPE_CHECKING:
    from pixelkiln.app import Kiln
    from pixelkiln.config import Settings
    from pixelkiln.db.database import Database
    from pixelkiln.db.runs import Run
    from pixelkiln.inputs.projects import ProjectsPlan
    from pixelkiln.service.runs import RunDriver

projects_app = typer.Typer(
    help="Project runs: a studio's config of project folders, one batch per project.",
    no_args_is_help=True,
)

ProjectConfigArg = Annotated[
    Path | None,
    typer.Argument(help="The project config (.json .yaml .toml); not with --resume."),
]
ProjectsDirOption = Annotated[
    Path | None, typer.Option("--projects-dir", help="Folder of the project folders.")
]
PidOption = Annotated[
    list[str] | None, typer.Option("--pid", help="Only this project (repeatable).")
]
LanguageOption = Annotated[str | None, typer.Option(help="The projects' language.")]
ChannelOption = Annotated[str | None, typer.Option(help="The channel (named style preset).")]
DescriptionOption = Annotated[str | None, typer.Option(help="The projects' description.")]
CfgOption = Annotated[float | None, typer.Option("--cfg-scale", help="CFG scale.")]
NegativeOption = Annotated[str | None, typer.Option("--negative-prompt", help="Negative prompt.")]
StepsOption = Annotated[int | None, typer.Option(help="Sampling steps.")]


@dataclass(frozen=True)
class _Overrides:
    """The command line's settings, as a run's ``overrides``."""

    projects_dir: Path | None
    pid: list[str] | None
    language: str | None
    channel: str | None
    description: str | None
    cfg_scale: float | None
    negative_prompt: str | None
    steps: int | None

    def values(self) -> dict[str, Any]:
        found = {k: v for k, v in vars(self).items() if v is not None and v != []}
        if self.projects_dir is not None:  # relative to where the command runs
            found["projects_dir"] = str(self.projects_dir.absolute())
        return found


def project_settings(
    config: Path | None, project_config: Path | None, level: str | None = None
) -> Settings:
    """The kiln.toml to use: ``--config``, else $KILN_CONFIG or ./kiln.toml, else the one
    beside the project config (cron runs from ``/``)."""
    from pixelkiln.config import DEFAULT_CONFIG_FILE

    if config is None and project_config is not None:
        beside = project_config.absolute().parent / DEFAULT_CONFIG_FILE
        if (
            not os.environ.get("KILN_CONFIG")
            and not DEFAULT_CONFIG_FILE.is_file()
            and beside.is_file()
        ):
            config = beside
    return settings_from(config, level)


@projects_app.command("run")
def run(
    project_config: ProjectConfigArg = None,
    config: ConfigOption = None,
    projects_dir: ProjectsDirOption = None,
    pid: PidOption = None,
    language: LanguageOption = None,
    channel: ChannelOption = None,
    description: DescriptionOption = None,
    cfg_scale: CfgOption = None,
    negative_prompt: NegativeOption = None,
    steps: StepsOption = None,
    resume: Annotated[
        int | None, typer.Option("--resume", help="Continue this run (its id).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before generating.")] = False,
    quiet: QuietOption = False,
    log_level: LogLevelOption = None,
) -> None:
    """Run every project of a config: one batch each, one after another, then the report."""
    overrides = _Overrides(
        projects_dir, pid, language, channel, description, cfg_scale, negative_prompt, steps
    )
    with errors():
        if (project_config is None) == (resume is None):
            raise InvalidStateError("give a project config, or --resume RUN_ID (not both)")
        settings = project_settings(config, project_config, log_level)
        setup_logging(settings, prefix="projects")
        code = asyncio.run(
            run_projects(settings, project_config, overrides.values(), resume, yes, quiet)
        )
    raise typer.Exit(code)


async def run_projects(
    settings: Settings,
    project_config: Path | None,
    overrides: dict[str, Any],
    resume: int | None,
    yes: bool,
    quiet: bool,
    owner: str | None = None,
) -> int:
    """Plan, store and drive a project run here to its end (or ``resume`` a stored one),
    printing each project and the report; the exit code (see the module docstring).

    ``kiln projects run`` and ``kiln schedule run-now`` use it. ``owner``: the lease
    holder id the run was created with (run-now creates it held, so that no server
    takes it before this process does); by default a new one.
    """
    from pixelkiln.app import Kiln
    from pixelkiln.cli.run import run_batches
    from pixelkiln.engine.owners import new_owner_id
    from pixelkiln.reports_runs import render_run_text
    from pixelkiln.service import LOCAL
    from pixelkiln.service.runs import (
        RunDriver,
        RunStopped,
        create_projects_run,
        plan_projects_run,
    )

    async with Kiln(settings) as kiln:
        owner = owner or new_owner_id()
        if project_config is not None:
            planned = await plan_projects_run(kiln.service, LOCAL, project_config, overrides)
            _print_plan(planned)
            if not yes and sys.stdin.isatty() and not typer.confirm("Generate them now?", True):
                return EXIT_OK
            run_id = await create_projects_run(
                kiln.service,
                LOCAL,
                project_config,
                overrides,
                source="cli",
                lease_owner=owner,
                planned=planned,
            )
        else:
            run_id = resume or 0

        async def run_batch(batch_id: int) -> None:
            if await run_batches(kiln, [batch_id], quiet):
                raise RunStopped("interrupted")

        driver = RunDriver(kiln.service, run_id, run_batch=run_batch, owner=owner, notes=_note)
        await _claim(kiln, driver)
        try:
            report = await driver.drive()
        except RunStopped as exc:
            err_console.print(
                f"[yellow]Run {run_id} stopped ({escape(str(exc))}); continue it with:[/] "
                f"kiln projects run --resume {run_id}",
                highlight=False,
            )
            return EXIT_INTERRUPTED if str(exc) == "interrupted" else EXIT_FAILED
        if report is None:
            raise InvalidStateError(f"run {run_id} was taken over by another process")
        console.print(render_run_text(report), markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED if report["projects_failed"] else EXIT_OK


async def _claim(kiln: Kiln, driver: RunDriver) -> None:
    """Take the run, waiting (twice its lease at most) for a dead driver's lease to lapse."""
    from pixelkiln.db.runs import get_run

    deadline = time.monotonic() + 2 * driver.lease + 1
    told = False
    while not await driver.claim():
        run = await kiln.db.aread(get_run, driver.run_id)
        if run.status.finished:
            raise InvalidStateError(f"run {run.id} already ended ({run.status})")
        if time.monotonic() > deadline:
            raise InvalidStateError(f"run {run.id} is being driven by {run.lease_owner}")
        if not told:
            console.print(f"Run {run.id} is held by {run.lease_owner}; waiting for it to lapse…")
            told = True
        await asyncio.sleep(1.0)


def _note(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_plan(planned: ProjectsPlan) -> None:
    ready = [p for p in planned.projects if p.spec is not None]
    console.print(
        f"{len(planned.projects)} project(s) in {planned.config.source}: {len(ready)} to "
        f"generate ({planned.images} image(s)), {len(planned.projects) - len(ready)} cannot run",
        markup=False,
        highlight=False,
    )
    for p in planned.projects:
        if p.spec is None:
            console.print(f"  {p.pid}: {p.problem}", markup=False, highlight=False, soft_wrap=True)


@projects_app.command("check")
def check(
    project_config: Annotated[Path, typer.Argument(help="The project config.")],
    config: ConfigOption = None,
    projects_dir: ProjectsDirOption = None,
    pid: PidOption = None,
    language: LanguageOption = None,
    channel: ChannelOption = None,
    description: DescriptionOption = None,
    cfg_scale: CfgOption = None,
    negative_prompt: NegativeOption = None,
    steps: StepsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What a run would do: each project, its images, what is missing; nothing generated."""
    overrides = _Overrides(
        projects_dir, pid, language, channel, description, cfg_scale, negative_prompt, steps
    )
    with errors():
        settings = project_settings(config, project_config)
        planned = asyncio.run(_check(settings, project_config, overrides.values()))
    rows: list[dict[str, Any]] = [
        {
            "pid": p.pid,
            "folder": str(p.folder),
            "ready": p.spec is not None,
            "scenes": len(p.spec.tasks) if p.spec else 0,
            "images": p.images,
            "missing": list(p.missing),
            "problem": p.problem,
        }
        for p in planned.projects
    ]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        table = Table("project", "ready", "scenes", "images", "missing / why")
        for r in rows:
            table.add_row(
                escape(r["pid"]),
                "yes" if r["ready"] else "[red]no",
                str(r["scenes"]),
                str(r["images"]),
                escape(r["problem"]),
            )
        console.print(
            f"Projects folder: {escape(str(planned.config.projects_dir))}", highlight=False
        )
        console.print(table)
    raise typer.Exit(EXIT_OK if all(r["ready"] for r in rows) else EXIT_FAILED)


async def _check(
    settings: Settings, project_config: Path, overrides: dict[str, Any]
) -> ProjectsPlan:
    from pixelkiln.app import Kiln
    from pixelkiln.service import LOCAL
    from pixelkiln.service.runs import plan_projects_run

    async with Kiln(settings, engine=False) as kiln:
        return await plan_projects_run(kiln.service, LOCAL, project_config, overrides)


#: the sample project's files: (name in pixelkiln/samples, name in the project folder)
SAMPLE_PROJECT = (
    ("projects_scenes.json", "{pid}_scenes.json"),
    ("projects_paragraphs.json", "{pid}_paragraphs.json"),
    ("projects_zh.srt", "{pid}_zh.srt"),
)
SAMPLE_PID = "project001"


@projects_app.command("sample")
def sample(
    folder: Annotated[Path, typer.Argument(help="Where to write projects.json.")] = Path("."),
    project: Annotated[
        bool, typer.Option("--project/--no-project", help="Also write a sample project folder.")
    ] = True,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a sample project config (and a sample project folder that `check` accepts)."""
    samples = resources.files("pixelkiln") / "samples"
    files: dict[Path, bytes] = {folder / "projects.json": (samples / "projects.json").read_bytes()}
    if project:
        target = folder / "projects" / SAMPLE_PID
        for name, pattern in SAMPLE_PROJECT:
            files[target / pattern.format(pid=SAMPLE_PID)] = (samples / name).read_bytes()
        files[target / f"{SAMPLE_PID}.aac"] = b""  # the studio's audio: only its presence counts
    for path, content in files.items():
        if path.exists() and not force:
            err_console.print(f"[yellow]{escape(str(path))} exists; left as it is (--force)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        console.print(f"Wrote {path}", markup=False)
    console.print(f"Next: kiln projects check {folder / 'projects.json'}", markup=False)


# -- kiln status ---------------------------------------------------------------------------------


def runs_table(db: Database, limit: int = 5) -> Table | None:
    """The recent runs as a whole, for ``kiln status``; None when there is none."""
    from pixelkiln.db.runs import list_runs

    found = db.read(list_runs, limit=limit)
    if not found:
        return None
    table = Table("run", "name", "status", "projects ok/failed", "images", "started", title="Runs")
    for run in found:
        ok, failed, images = _run_counts(db, run)
        table.add_row(
            str(run.id),
            escape(run.name),
            _shown_status(run),
            f"{ok}/{failed} of {len(run.config.get('projects', []))}",
            str(images),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started_at or run.created_at)),
        )
    return table


def _shown_status(run: Run) -> str:
    """A run no live process drives says so: it goes on under `kiln serve`, or with
    `kiln projects run --resume ID`."""
    idle = run.lease_expires_at is None or run.lease_expires_at < time.time()
    if run.status == "running" and idle:
        return "waiting (no process drives it: kiln serve or --resume)"
    return str(run.status)


def _run_counts(db: Database, run: Run) -> tuple[int, int, int]:
    from pixelkiln.reports_runs import build_run_report

    report = run.report or db.read(build_run_report, run.id)  # a running one: so far
    return report["projects_succeeded"], report["projects_failed"], report["images_total"]


def print_run(db: Database, run_id: int) -> None:
    """One run's report (``kiln status --run ID``): as stored when it ended (its batches may
    since have gone by the retention rules), else as it stands so far."""
    from pixelkiln.db.runs import get_run
    from pixelkiln.reports_runs import build_run_report, render_run_text

    run = db.read(get_run, run_id)
    report = run.report or db.read(build_run_report, run_id)
    console.print(
        render_run_text(report),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
