"""Latency hiding: 480 tasks on two fake WebUIs that take 200 ms a request, 8 slots each.

    python -m bench.latency_hiding [--tasks 480] [--latency 0.2] [--slots 8]

Drives the real engine (``Kiln``: SQLite, leases, PNG files) against two
``pixelkiln.testing.FakeSDWebUI`` servers over loopback HTTP, served by a child
process (``FakeFleet``) as real generators run elsewhere. The ideal is
every slot busy all the time: tasks × latency / (servers × slots). Efficiency
is ideal / measured wall time (submit to last task recorded); target ≥ 0.95.

The helpers here (:func:`run_batch`, :func:`bench_settings`) are shared by the
other backend benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pixelkiln.app import Kiln
from pixelkiln.config import Settings, load_settings
from pixelkiln.db.batches import get_batch
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.specs import BatchSpec, parse_batch
from pixelkiln.testing import FakeFleet

SIZE = 64


@dataclass(frozen=True)
class RunResult:
    """What one benchmark batch did."""

    seconds: float  #: submit to the end of the run
    tasks: int
    succeeded: int
    images: int
    tasks_with_two_or_more_images: int
    attempts: int  #: summed over tasks (retries show here)

    @property
    def throughput(self) -> float:
        return self.succeeded / self.seconds


def spec(tasks: int) -> BatchSpec:
    """``tasks`` one-image tasks, 64×64, distinct prompts."""
    return parse_batch(
        {
            "name": "bench",
            "defaults": {"width": SIZE, "height": SIZE, "steps": 4, "n": 1},
            "tasks": [{"prompt": f"benchmark prompt {i}", "key": f"t{i}"} for i in range(tasks)],
        }
    )


def bench_settings(data_dir: Path, urls: list[str], slots: int, **overrides: Any) -> Settings:
    """One sdwebui backend over ``urls``; global concurrency = every slot of it."""
    backend = {
        "name": "sd",
        "type": "sdwebui",
        "urls": urls,
        "concurrency": slots,
        "timeout": overrides.pop("timeout", 30.0),
        "options": overrides.pop("options", {}),
    }
    scheduler = {
        "concurrency": slots * len(urls),
        "poll_interval": 0.05,
        **overrides.pop("scheduler", {}),
    }
    return load_settings(
        None, storage={"data_dir": str(data_dir)}, backends=[backend], scheduler=scheduler
    )


async def run_batch(settings: Settings, tasks: int, during: Any = None) -> RunResult:
    """Submit and run one batch to the end; ``during(kiln)`` runs alongside if given."""
    async with Kiln(settings) as kiln:
        started = time.perf_counter()
        batch_id = await kiln.submit(spec(tasks), source="cli")
        side = asyncio.create_task(during()) if during else None
        await kiln.run_until_done([batch_id])
        seconds = time.perf_counter() - started
        if side is not None:
            side.cancel()
            await asyncio.gather(side, return_exceptions=True)
        batch = kiln.db.read(get_batch, batch_id)
        per_task = Counter(i.task_id for i in kiln.db.read(list_images, batch_id))
        attempts = sum(t.attempts for t in kiln.db.read(list_tasks, batch_id))
    return RunResult(
        seconds,
        tasks,
        batch.counts.succeeded,
        batch.counts.images,
        sum(1 for n in per_task.values() if n > 1),
        attempts,
    )


def quiet_logs() -> None:
    """Retries and failovers are expected here; keep the figures readable."""
    logging.basicConfig(level=logging.ERROR)


async def bare_loop(urls: list[str], tasks: int, slots: int) -> float:
    """Seconds for a bare httpx loop (no pool, no engine, nothing kept) over the same servers.

    The ceiling this machine allows: what is left of the ideal is HTTP and
    interpreter cost, not scheduling.
    """
    queue = list(range(tasks))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as http:

        async def worker(url: str) -> None:
            while queue:
                i = queue.pop()
                body = {"prompt": f"benchmark prompt {i}", "width": SIZE, "height": SIZE}
                response = await http.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=30)
                response.raise_for_status()
                response.json()

        started = time.perf_counter()
        await asyncio.gather(*(worker(urls[k % len(urls)]) for k in range(slots * len(urls))))
    return time.perf_counter() - started


async def measure(tasks: int, latency: float, slots: int) -> tuple[RunResult, float]:
    with FakeFleet([("sdwebui", {"latency": latency})] * 2) as fleet:
        bare = await bare_loop(fleet.urls, tasks, slots)
        with tempfile.TemporaryDirectory() as folder:
            result = await run_batch(bench_settings(Path(folder), fleet.urls, slots), tasks)
    return result, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=480)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--slots", type=int, default=8, help="slots per server")
    args = parser.parse_args()
    quiet_logs()
    result, bare = asyncio.run(measure(args.tasks, args.latency, args.slots))
    ideal = args.tasks * args.latency / (2 * args.slots)
    print(
        f"latency hiding: {args.tasks} tasks, 2 fake WebUIs x {args.slots} slots, "
        f"{args.latency * 1000:.0f} ms per request"
    )
    print(f"succeeded:   {result.succeeded}/{result.tasks}")
    print(f"wall time:   {result.seconds:6.2f} s")
    print(
        f"ideal:       {ideal:6.2f} s   ({args.tasks} x {args.latency:g} s / "
        f"{2 * args.slots} slots)"
    )
    print(f"efficiency:  {ideal / result.seconds:6.3f}   (ideal / actual; target >= 0.95)")
    print(
        f"bare loop:   {bare:6.2f} s   efficiency {ideal / bare:.3f} (httpx alone on the "
        "same servers: this machine's ceiling)"
    )
    print(f"pixelkiln / bare loop throughput: {bare / result.seconds:.3f}")


if __name__ == "__main__":
    main()
