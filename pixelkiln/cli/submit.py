"""``kiln submit SPEC``: store a batch for the workers (``kiln worker``, ``kiln serve``) to run.

It checks and stores the batch exactly as ``kiln run`` does (the same file
formats, options, ``[limits]`` and the question above ``confirm_*``), then
prints its id and returns without running anything.

Exit codes: 0 queued, 1 not confirmed, 2 bad input (spec, config, a limit).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape

from pixelkiln.app import Kiln
from pixelkiln.cli.common import (
    EXIT_OK,
    ConfigOption,
    err_console,
    errors,
    settings_from,
)
from pixelkiln.cli.plan import YesOption
from pixelkiln.cli.run import (
    NameOption,
    SpecArg,
    TemplateOption,
    VarOption,
    load_spec,
    queue_batch,
)
from pixelkiln.config import Settings
from pixelkiln.inputs import LoadedBatch
from pixelkiln.sweeps import count_tasks


def submit(
    spec: SpecArg,
    config: ConfigOption = None,
    name: NameOption = None,
    template: TemplateOption = None,
    var: VarOption = None,
    yes: YesOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"id", "name", "tasks"} as JSON.')
    ] = False,
) -> None:
    """Check and queue a batch file without running it; print its id.

    `kiln worker` processes (or `kiln serve`) on the same database run it; follow
    it with `kiln status ID`. A large batch is asked about first, as by `kiln run`.
    """
    with errors():
        settings = settings_from(config)
        loaded = load_spec(spec, name, template, var or [], settings.limits.max_tasks_per_batch)
        batch_id = asyncio.run(_queue(settings, loaded, yes))
    tasks = count_tasks(loaded.spec, loaded.base_dir)
    if as_json:
        print(json.dumps({"id": batch_id, "name": loaded.spec.name, "tasks": tasks}))
    else:
        print(batch_id)  # stdout: the id alone, for scripts (ID=$(kiln submit night.yaml))
        err_console.print(
            f"Batch {batch_id} '{escape(loaded.spec.name)}': {tasks:,} task(s) queued",
            highlight=False,
        )
    raise typer.Exit(EXIT_OK)


async def _queue(settings: Settings, loaded: LoadedBatch, yes: bool) -> int:
    async with Kiln(settings, engine=False) as kiln:  # nothing runs here: no backend built
        return await queue_batch(kiln, loaded, yes)
