"""Engine overhead: N placeholder tasks through the real engine vs a bare asyncio loop.

    python -m bench.overhead [--tasks 2000] [--concurrency 4] [--repeat 3]

Both sides call the same placeholder backend (64×64 images, no artificial
latency) with the same concurrency. The baseline keeps nothing; pixelkiln
claims from SQLite with leases, writes PNG files with metadata, records
images and events, and commits outcomes. The ratio and the per-task
overhead are the figures; each side's median of ``--repeat`` runs is used,
measured alternately in the same process because this machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from pixelkiln.app import Kiln
from pixelkiln.backends.base import GenerationRequest
from pixelkiln.backends.placeholder import PlaceholderBackend
from pixelkiln.config import BackendSettings, Settings, load_settings
from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.leases import claim_tasks
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import BatchSpec, parse_batch

SIZE = 64


def _spec(tasks: int) -> BatchSpec:
    return parse_batch(
        {
            "name": "bench",
            "defaults": {"width": SIZE, "height": SIZE, "seed": 1},
            "tasks": [{"prompt": f"benchmark prompt {i}"} for i in range(tasks)],
        }
    )


def _settings(data_dir: Path, concurrency: int) -> Settings:
    backend = {"name": "placeholder", "type": "placeholder", "concurrency": concurrency}
    return load_settings(
        None,
        storage={"data_dir": str(data_dir)},
        scheduler={"concurrency": concurrency},
        backends=[backend],
    )


async def baseline(tasks: int, concurrency: int) -> float:
    """Tasks/s of a plain asyncio loop over the placeholder backend, keeping nothing."""
    backend = PlaceholderBackend(BackendSettings(name="p", type="placeholder"))
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            request = GenerationRequest(
                i, f"benchmark prompt {i}", "", SIZE, SIZE, 20, 7.0, "", 1, 1, "", 0.75
            )
            await backend.generate(request)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(tasks)))
    return tasks / (time.perf_counter() - started)


async def engine(tasks: int, concurrency: int, where: str | None = None) -> tuple[float, float]:
    """(tasks/s of the run, tasks/s including submitting the batch) through pixelkiln."""
    with tempfile.TemporaryDirectory(dir=where) as folder:
        async with Kiln(_settings(Path(folder), concurrency)) as kiln:
            started = time.perf_counter()
            batch_id = await kiln.submit(_spec(tasks), source="cli")
            submitted = time.perf_counter()
            await kiln.run_until_done([batch_id])
            finished = time.perf_counter()
            batch = kiln.db.read(get_batch, batch_id)
            if batch.counts.succeeded != tasks or batch.counts.images != tasks:
                raise SystemExit(f"engine lost work: {batch.counts}")
    return tasks / (finished - submitted), tasks / (finished - started)


def claim_path(claims: int) -> float:
    """Single-task claims per second through the writer (the SQLite claim path alone)."""
    with tempfile.TemporaryDirectory() as folder:
        db = Database.open(f"sqlite:///{folder}/kiln.db")
        try:
            spec = _spec(claims)
            resolved = resolve_tasks(spec, default_backend="placeholder")
            db.write(
                create_batch, NewBatch(name="claims", source="cli", max_attempts=3, tasks=resolved)
            )
            started = time.perf_counter()
            for _ in range(claims):
                db.write(claim_tasks, "bench", {"placeholder": 1}, 30.0, None)
            return claims / (time.perf_counter() - started)
        finally:
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="parent folder of the runs' data (default: the system temp dir)",
    )
    args = parser.parse_args()

    tmpfs = "/dev/shm" if Path("/dev/shm").is_dir() else None
    base_runs, run_runs, e2e_runs, mem_runs = [], [], [], []
    for _ in range(args.repeat):
        base_runs.append(asyncio.run(baseline(args.tasks, args.concurrency)))
        run, e2e = asyncio.run(engine(args.tasks, args.concurrency, args.data_dir))
        run_runs.append(run)
        e2e_runs.append(e2e)
        if tmpfs:
            mem_runs.append(asyncio.run(engine(args.tasks, args.concurrency, tmpfs))[1])
    base, run, e2e = (statistics.median(x) for x in (base_runs, run_runs, e2e_runs))
    claims = claim_path(1000)
    overhead_ms = (1 / e2e - 1 / base) * 1000
    print(
        f"tasks: {args.tasks} placeholder {SIZE}x{SIZE}, concurrency {args.concurrency}, "
        f"median of {args.repeat}"
    )
    print(f"baseline (asyncio loop, no persistence): {base:8.0f} tasks/s")
    print(f"pixelkiln run (SQLite, files, events):   {run:8.0f} tasks/s")
    print(f"pixelkiln end to end (incl. submit):     {e2e:8.0f} tasks/s   target >= 1000")
    print(f"ratio end-to-end / baseline:             {e2e / base:8.2f}")
    print(f"engine overhead per task:                {overhead_ms:8.3f} ms   target < 1 ms")
    if mem_runs:
        mem = statistics.median(mem_runs)
        print(
            f"same, data folder on tmpfs (no disk):    {mem:8.0f} tasks/s   "
            f"ratio {mem / base:.2f}, overhead {(1 / mem - 1 / base) * 1000:.3f} ms"
        )
    print(f"SQLite claim path alone (1 task/claim):  {claims:8.0f} claims/s")


if __name__ == "__main__":
    main()
