"""``kiln plan SPEC``: what a batch would take before anything runs; and the question
``kiln run`` asks above ``[limits] confirm_*`` (``--yes`` skips it).

Exit codes: 0 the batch would be accepted, 2 bad input or over a limit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ConfigOption,
    console,
    err_console,
    errors,
    settings_from,
)
from pixelkiln.config import Settings
from pixelkiln.inputs import LoadedBatch, load_batch_file
from pixelkiln.service.plans import Plan, confirm_reasons, duration_text
from pixelkiln.service.submission import Submission
from pixelkiln.service.submission import plan as dry_run
from pixelkiln.wire.web import BatchPlan

YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Queue without asking, however large the plan (cron, scripts)."
    ),
]


def submission_of(loaded: LoadedBatch) -> Submission:
    """A batch file as the CLI submits it: its inputs are this machine's files."""
    return Submission(
        loaded.spec,
        source="cli",
        source_name=loaded.source,
        where=loaded.where,
        server_paths=True,
        base_dir=loaded.base_dir,
    )


def plan(
    spec: Annotated[Path, typer.Argument(help="Batch file: .yaml .yml .json .toml .csv .xlsx")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    name: Annotated[str | None, typer.Option(help="Batch name (default: from the file).")] = None,
) -> None:
    """Say what a batch file would take: tasks, images, credits, time and money per backend.

    Nothing is queued. Time comes from the speeds measured by earlier batches
    (unknown for a backend that never ran); exit 2 on bad input or over a limit.
    """
    with errors():
        settings = settings_from(config)
        loaded = load_batch_file(spec, name=name, partial=True)
        found = asyncio.run(_plan(settings, loaded))
    if as_json:
        print(json.dumps(plan_json(found), indent=2, ensure_ascii=False))
    else:
        show_plan(found, console)
    show_problems(found)
    raise typer.Exit(EXIT_BAD_INPUT if found.problems else 0)


async def _plan(settings: Settings, loaded: LoadedBatch) -> Plan:
    async with Kiln(settings, engine=False) as kiln:
        return await dry_run(kiln.service, service.LOCAL, submission_of(loaded))


def plan_json(found: Plan) -> dict[str, Any]:
    """The plan as the API's dry run answers it, with its problems."""
    data = BatchPlan.model_validate(found, from_attributes=True).model_dump(mode="json")
    data["problems"] = [str(p) for p in found.problems]
    return data


def show_plan(found: Plan, out: Console) -> None:
    """The plan as a table per backend and a summary line."""
    if found.backends:
        out.print(_table(found))
    seconds = "unknown" if found.seconds is None else f"about {duration_text(found.seconds)}"
    if found.unknown:
        seconds += f" (no measured speed yet for {', '.join(found.unknown)})"
    elif found.seconds is None:
        seconds = "not estimated"
    lines = [
        f"Plan: {found.tasks:,} task(s), {found.images:,} image(s)",
        f"  time      {seconds}",
    ]
    if found.credits:
        lines.append(f"  credits   {found.credits:,}")
    if found.money is not None:
        lines.append(f"  money     {found.money:,.2f}")
    out.print("\n".join(lines), markup=False, highlight=False)


def _table(found: Plan) -> Table:
    table = Table(title="Plan per backend", title_justify="left")
    for heading in ("backend", "tasks", "images", "s/image", "basis", "slots", "time", "money"):
        table.add_column(heading, justify="left" if heading in ("backend", "basis") else "right")
    for b in found.backends:
        table.add_row(
            escape(b.name),
            f"{b.tasks:,}",
            f"{b.images:,}",
            "—" if b.seconds_per_image is None else f"{b.seconds_per_image:.2f}",
            b.basis,
            str(b.slots),
            "unknown" if b.seconds is None else duration_text(b.seconds),
            "—" if b.money is None else f"{b.money:,.2f}",
        )
    return table


def show_problems(found: Plan) -> None:
    """Why a submit would create nothing, on stderr."""
    if found.problems:
        err_console.print(f"[red]Not accepted ({len(found.problems)} problem(s)):")
        for problem in found.problems:
            err_console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)


async def confirm_run(found: Plan, settings: Settings, yes: bool) -> None:
    """``kiln run``'s question before it queues a batch above ``[limits] confirm_*``.

    Asked only on a terminal. Without one (cron) nobody can answer: only money above
    ``confirm_money`` stops the run (exit 2, saying ``--yes``); the rest goes on.
    """
    unattended = not sys.stdin.isatty()
    reasons = confirm_reasons(found, settings.limits, unattended=unattended)
    if yes or not reasons:
        return
    show_plan(found, console)
    why = "; ".join(reasons)
    if unattended:
        err_console.print(
            f"[red]Not queued:[/] the plan is large ({escape(why)}); "
            "run again with --yes to queue it without asking.",
            highlight=False,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    answer = await asyncio.to_thread(typer.confirm, f"This batch is large ({why}). Queue it?")
    if not answer:
        console.print("Nothing queued.")
        raise typer.Exit(EXIT_FAILED)
