"""Sweep expansion: a 100,000-task sweep expanded and stored in SQLite, vs the same tasks listed.

    python -m bench.sweep [--quick]

The sweep is 10 tasks whose prompts hold a 10-way wildcard group, times three
axes of 10 values (cfg_scale, seed, steps): 10 × 10 × 10 × 10 × 10 = 100,000
tasks (10,000 with ``--quick``: one axis fewer). The baseline submits the very
same tasks written out as a plain task list. Each side runs in its own process
(so that each peak RSS is its own): parse the spec, resolve every task
(``prepare_batch``) and insert the batch into a fresh SQLite database. The
figures are seconds and peak RSS per side, and the sweep's ratio to the baseline;
the targets are < 10 s and < 300 MB for the 100,000-task sweep. CPU seconds are
printed beside wall seconds: on a shared machine they are the figure that does not
depend on what else runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pixelkiln.db.batches import create_batch
from pixelkiln.db.database import Database
from pixelkiln.engine.intake import prepare_batch
from pixelkiln.specs import parse_batch
from pixelkiln.storage import LocalStorage

BASES = 10
WORDS = [f"colour{i}" for i in range(10)]
AXES = {
    "x": {"cfg_scale": [float(v) for v in range(1, 11)]},
    "y": {"seed": list(range(100, 110))},
    "z": {"steps": list(range(10, 20))},
}
TARGET_SECONDS = 10.0
TARGET_MB = 300.0


def sweep_spec(quick: bool) -> dict[str, Any]:
    axes = {k: v for k, v in AXES.items() if not (quick and k == "z")}
    tasks = [{"key": f"t{i}", "prompt": f"a {{{'|'.join(WORDS)}}} fox {i}"} for i in range(BASES)]
    return {"name": "sweep", "defaults": {"width": 64, "height": 64}, "tasks": tasks, "sweep": axes}


def listed_spec(quick: bool) -> dict[str, Any]:
    """The sweep's tasks written out one by one (the same prompts, keys and values)."""
    from pixelkiln.sweeps import Expansion

    spec = parse_batch(sweep_spec(quick))
    expansion = Expansion(spec)
    tasks = []
    for i, task in enumerate(spec.tasks):
        for values in expansion.variants(i, task.model_dump(exclude_none=True)):
            values.pop("axes", None)
            tasks.append(values)
    return {"name": "listed", "defaults": {"width": 64, "height": 64}, "tasks": tasks}


def side(name: str, quick: bool) -> dict[str, float]:
    """Parse, prepare and store one side's batch; its seconds, task count and peak RSS."""
    data = sweep_spec(quick) if name == "sweep" else listed_spec(quick)
    with tempfile.TemporaryDirectory() as folder:
        db = Database.open(f"sqlite:///{folder}/kiln.db")
        try:
            before = resource.getrusage(resource.RUSAGE_SELF)
            cpu_before = before.ru_utime + before.ru_stime
            started = time.perf_counter()
            spec = parse_batch(data)
            new = prepare_batch(
                spec,
                storage=LocalStorage(Path(folder) / "data"),
                default_backend="placeholder",
                known_backends=["placeholder"],
                max_attempts=3,
            )
            db.write(create_batch, new)
            seconds = time.perf_counter() - started
        finally:
            db.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "cpu": cpu, "tasks": len(new.tasks), "peak_mb": peak_mb}


def measure(name: str, quick: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.sweep", "--side", name, *(["--quick"] * quick)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 tasks instead of 100,000")
    parser.add_argument("--side", choices=["sweep", "listed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.quick)))
        return
    listed = measure("listed", args.quick)
    sweep = measure("sweep", args.quick)
    for name, figures in (("listed tasks (baseline)", listed), ("sweep", sweep)):
        print(
            f"{name:24} {figures['tasks']:>8,.0f} tasks  {figures['seconds']:6.2f} s "
            f"(CPU {figures['cpu']:6.2f} s)  peak RSS {figures['peak_mb']:6.0f} MB"
        )
    print(
        f"sweep / baseline: time {sweep['seconds'] / listed['seconds']:.2f}x "
        f"(CPU {sweep['cpu'] / listed['cpu']:.2f}x), "
        f"peak RSS {sweep['peak_mb'] / listed['peak_mb']:.2f}x"
    )
    if not args.quick:
        for line in targets(sweep):
            print(line)


def targets(sweep: dict[str, float]) -> list[str]:
    """The issue's targets for the 100,000-task sweep, judged on wall and on CPU seconds
    (on a shared machine the wall time also counts the other processes' turns)."""
    wall, cpu, peak = sweep["seconds"], sweep["cpu"], sweep["peak_mb"]
    verdict = (
        "meets" if wall < TARGET_SECONDS else "meets on CPU" if cpu < TARGET_SECONDS else "MISSES"
    )
    return [
        f"target expand + insert < {TARGET_SECONDS:.0f} s: {verdict} ({wall:.2f} s wall = "
        f"{wall / TARGET_SECONDS:.2f} of it; CPU {cpu:.2f} s = {cpu / TARGET_SECONDS:.2f})",
        f"target peak RSS < {TARGET_MB:.0f} MB: {'meets' if peak < TARGET_MB else 'MISSES'} "
        f"({peak:.0f} MB = {peak / TARGET_MB:.2f} of it)",
    ]


if __name__ == "__main__":
    main()
