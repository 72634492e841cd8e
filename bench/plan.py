"""The plan of a 100,000-task sweep: the service call and `kiln plan` as a subprocess.

    python -m bench.plan [--tasks 100000] [--repeat 3] [--quick]

The batch file is a real sweep: two tasks (one per backend) whose prompts hold 5 × 4
wildcard alternatives, times ``sweep: {x: {cfg_scale: [25 values]}, y: {seed: [...]},
z: {size: [512x512, 768x512]}}`` (50 seeds make 100,000 tasks). A plan works from the
sweep's sample (:meth:`pixelkiln.sweeps.Expansion.sample`): the base tasks resolved once
per size, weighted by the cfg values, seeds and prompts they stand for.

Baselines, measured in the same run: for the service call, the same plan made from every
task (resolving all 100,000, as plans were made before samples); for `kiln plan`,
`kiln --help` as a subprocess (starting Python and the command list, which every command
pays; it imports no command module: `python -m bench.startup` splits start-up further).
Each figure is the median of ``--repeat`` runs, alternated, because this
machine is shared: CPU seconds are printed beside wall seconds, and the target (`kiln
plan` answers in < 2 s) is judged on both. ``--quick`` plans 10,000 tasks once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from pixelkiln.app import Kiln
from pixelkiln.config import load_settings
from pixelkiln.inputs import load_batch_file
from pixelkiln.service import LOCAL
from pixelkiln.service.submission import Submission, plan
from pixelkiln.sweeps import Expansion

TARGET = 2.0  #: seconds the issue allows `kiln plan` on 100,000 tasks
#: tasks per seed value: 2 tasks × 20 prompts × 25 cfg values × 2 sizes
PER_SEED = 2 * 20 * 25 * 2

Figures = tuple[float, float]  #: (wall seconds, CPU seconds)


def sweep_spec(tasks: int) -> dict[str, object]:
    """A sweep of ``tasks`` tasks (a multiple of :data:`PER_SEED`) over two backends."""
    prompt = "a {red|green|blue|gold|grey} %s, {dawn|dusk|night|noon}"
    return {
        "name": "big",
        "defaults": {"steps": 20},
        "tasks": [
            {"prompt": prompt % "lighthouse", "backend": "a", "key": "lighthouse"},
            {"prompt": prompt % "castle", "backend": "b", "key": "castle"},
        ],
        "sweep": {
            "x": {"cfg_scale": [4 + i / 4 for i in range(25)]},
            "y": {"seed": list(range(1, tasks // PER_SEED + 1))},
            "z": {"size": ["512x512", "768x512"]},
        },
    }


def _write(folder: Path, tasks: int) -> Path:
    path = folder / "big.json"
    path.write_text(json.dumps(sweep_spec(tasks)))
    (folder / "kiln.toml").write_text(
        '[storage]\ndata_dir = "data"\n[limits]\nmax_tasks_per_batch = 1000000\n'
        '[[backends]]\nname = "a"\ntype = "placeholder"\nconcurrency = 4\n'
        '[[backends]]\nname = "b"\ntype = "placeholder"\nprice_per_image = 0.02\n'
    )
    return path


async def _service_plan(folder: Path, path: Path, every_task: bool) -> Figures:
    """The service's plan of the loaded file (read before): from the sweep's sample, or
    (``every_task``) from every task resolved."""
    loaded = load_batch_file(path, partial=True)
    settings = load_settings(folder / "kiln.toml")
    async with Kiln(settings, engine=False) as kiln:
        sub = Submission(loaded.spec, source="cli", where=loaded.where, server_paths=True)
        as_before = mock.patch.object(Expansion, "sample", lambda self: None)
        with as_before if every_task else contextlib.nullcontext():
            started, cpu = time.perf_counter(), time.process_time()
            found = await plan(kiln.service, LOCAL, sub)
            figures = time.perf_counter() - started, time.process_time() - cpu
    assert found.tasks == Expansion(loaded.spec).total and not found.problems
    return figures


def _cli(folder: Path, *args: str) -> Figures:
    """Wall and CPU seconds (the child's user + system) of `kiln ARGS` as a subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pixelkiln.cli", *args],
        cwd=folder,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _median(runs: list[Figures]) -> Figures:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _line(name: str, figures: Figures) -> str:
    return f"  {name:42} {figures[0]:6.2f} s  (CPU {figures[1]:5.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="a multiple of 2,000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 tasks, once")
    args = parser.parse_args()
    tasks, repeat = (10_000, 1) if args.quick else (args.tasks, args.repeat)
    if tasks % PER_SEED:
        parser.error(f"--tasks must be a multiple of {PER_SEED:,}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _write(folder, tasks)
        _cli(folder, "plan", path.name)  # creates the database: not part of any figure
        runs: dict[str, list[Figures]] = {k: [] for k in ("every", "sample", "help", "cli")}
        steps: dict[str, Callable[[], Figures]] = {
            "every": lambda: asyncio.run(_service_plan(folder, path, every_task=True)),
            "sample": lambda: asyncio.run(_service_plan(folder, path, every_task=False)),
            "help": lambda: _cli(folder, "--help"),
            "cli": lambda: _cli(folder, "plan", path.name),
        }
        for _ in range(repeat):
            for name, step in steps.items():
                runs[name].append(step())
    m = {k: _median(v) for k, v in runs.items()}
    print(f"plan of a {tasks:,}-task sweep (median of {repeat}; wall, and CPU in brackets)")
    print(_line("baseline: service plan of every task", m["every"]))
    print(_line("service plan from the sweep's sample", m["sample"]))
    print(f"    ratio to the baseline                  {m['sample'][0] / m['every'][0]:6.3f}")
    print(_line("baseline: `kiln --help` subprocess", m["help"]))
    print(_line("`kiln plan` subprocess", m["cli"]))
    print(f"    ratio to `kiln --help`                 {m['cli'][0] / m['help'][0]:6.2f}")
    wall, cpu = m["cli"]
    verdict = "meets" if wall < TARGET else "meets on CPU" if cpu < TARGET else "MISSES"
    print(
        f"  target `kiln plan` < {TARGET:g} s ({tasks:,} tasks): {verdict} "
        f"({wall:.2f} s wall = {wall / TARGET:.2f} of it; CPU {cpu:.2f} s = {cpu / TARGET:.2f})"
    )


if __name__ == "__main__":
    main()
