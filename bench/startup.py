"""What starting `kiln` costs: each command's start-up against starting Python at all.

    python -m bench.startup [--repeat 7]

Every `kiln` command, and every test that starts `kiln serve` or `kiln worker` as a
subprocess, pays for Python starting and for the imports its command needs. Measured as
subprocesses, alternated, ``--repeat`` times each (median), in one folder whose
``kiln.toml`` keeps its data in an empty ``data/`` (its database created before the first
figure, so no figure includes creating it):

- baseline: ``python -c pass``, measured in the same run: what no command can go below;
- ``python -c "import pixelkiln"`` (what client code pays);
- ``kiln --help`` (the command list: imports no command module);
- ``kiln plan`` of a two-task batch file (reads the config, the file, the database);
- ``kiln status`` on the empty data dir.

Each line prints wall and CPU seconds (the child's user + system: steadier than wall on a
shared machine) and what the command adds to the baseline. The targets (`kiln --help` < 0.5
s) are judged on both.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET = 0.5  #: seconds the issue allows `kiln --help`
KILN = (sys.executable, "-m", "pixelkiln.cli")

Figures = tuple[float, float]  #: (wall seconds, CPU seconds)

#: what is timed, by name: the baseline first
STEPS: dict[str, tuple[str, ...]] = {
    "baseline: python -c pass": (sys.executable, "-c", "pass"),
    "import pixelkiln": (sys.executable, "-c", "import pixelkiln"),
    "kiln --help": (*KILN, "--help"),
    "kiln plan batch.json": (*KILN, "plan", "batch.json"),
    "kiln status (empty data dir)": (*KILN, "status"),
}


def _write(folder: Path) -> None:
    (folder / "kiln.toml").write_text(
        '[storage]\ndata_dir = "data"\n[[backends]]\nname = "a"\ntype = "placeholder"\n'
    )
    batch = {"name": "two", "tasks": [{"prompt": "a red fox"}, {"prompt": "a grey owl"}]}
    (folder / "batch.json").write_text(json.dumps(batch))


def _time(folder: Path, argv: tuple[str, ...]) -> Figures:
    """Wall and CPU seconds (the child's user + system) of ``argv`` as a subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=folder, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _median(runs: list[Figures]) -> Figures:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def measure(repeat: int) -> dict[str, Figures]:
    """The median figures of every step, the steps alternated ``repeat`` times."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write(folder)
        for argv in STEPS.values():  # creates the database, warms the file cache: not timed
            _time(folder, argv)
        runs: dict[str, list[Figures]] = {name: [] for name in STEPS}
        for _ in range(repeat):
            for name, argv in STEPS.items():
                runs[name].append(_time(folder, argv))
    return {name: _median(r) for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    m = measure(args.repeat)
    base_wall, base_cpu = m["baseline: python -c pass"]
    print(f"start-up (median of {args.repeat}; wall and CPU seconds; + is over the baseline)")
    for name, (wall, cpu) in m.items():
        print(
            f"  {name:30} {wall:6.3f} s (+{wall - base_wall:6.3f}, x{wall / base_wall:5.2f})"
            f"   CPU {cpu:6.3f} s (+{cpu - base_cpu:6.3f}, x{cpu / base_cpu:5.2f})"
        )
    wall, cpu = m["kiln --help"]
    verdict = "meets" if wall < HELP_TARGET else "meets on CPU" if cpu < HELP_TARGET else "MISSES"
    print(
        f"  target `kiln --help` < {HELP_TARGET:g} s: {verdict} "
        f"({wall:.3f} s wall, CPU {cpu:.3f} s)"
    )


if __name__ == "__main__":
    main()
