"""Unequal servers: three fake WebUIs taking 0.1, 0.3 and 0.9 s, 2 slots each, 600 tasks.

    python -m bench.unequal_servers [--tasks 600] [--latencies 0.1,0.3,0.9] [--slots 2]

pixelkiln (the real engine, one backend over the three URLs) sends each task to the
server that will finish it first: whichever slot frees while work is queued, so fast
servers do more, and near the end a fast server about to free rather than a slow one.
The ideal throughput is Σ slots/latency (≈ 28.9 tasks/s). A fake server takes longer
than its nominal latency (HTTP, a PNG, the client decoding it, on a shared machine), so
the run also measures what the servers themselves sustain: each server's slots kept
busy back to back by bare loops of the same client code, all three at once, each slot
over its own time; that sum, measured just before and just after pixelkiln's run and
averaged (the machine's load may change), is the ideal this machine allows. The
baseline, measured in the same run on the same servers, is what simple batch scripts do:
tasks dealt to the servers in turn (task i to server i mod 3), each server working
through its share with its own slots.
Target: pixelkiln ≥ 0.95 of ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.latency_hiding import bench_settings, quiet_logs, run_batch
from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.sdwebui import create
from pixelkiln.config import BackendSettings
from pixelkiln.testing import FakeFleet, generation_request


async def round_robin(urls: list[str], tasks: int, slots: int) -> float:
    """Tasks/s when task i goes to server i mod N (same client code, no pool across servers)."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as http:
        backends = [
            create(
                BackendSettings(name=f"rr{k}", type="sdwebui", urls=[url], concurrency=slots),
                BackendDeps(http),
            )
            for k, url in enumerate(urls)
        ]

        async def one(i: int) -> None:
            request = generation_request(task_id=i, prompt=f"benchmark prompt {i}")
            await backends[i % len(backends)].generate(request)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        seconds = time.perf_counter() - started
        for backend in backends:
            await backend.aclose()
    return tasks / seconds


async def capacity(urls: list[str], slots: int, seconds: float) -> list[float]:
    """Requests/s each server sustains with its ``slots`` busy back to back (same client
    code, no pool, no engine), all servers at once for about ``seconds``.

    Each slot's rate is its requests over its own time, from the common start to the end
    of its last request, and a server's rate is the sum over its slots: a slot that
    stopped early (its last request ended soon after ``seconds``) is not charged the
    slow server's tail. (Dividing every server's count by the time until the very last
    request ended, as this did before, charged the fast servers up to one slow latency
    each and put their rate up to ~15 % too low on a short window.)"""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as http:
        backends = [
            create(
                BackendSettings(name=f"cap{k}", type="sdwebui", urls=[url], concurrency=slots),
                BackendDeps(http),
            )
            for k, url in enumerate(urls)
        ]
        rates = [0.0] * len(urls)
        started = time.perf_counter()
        until = started + seconds

        async def worker(k: int) -> None:
            done = 0
            while time.perf_counter() < until:
                request = generation_request(task_id=k, prompt=f"capacity prompt {k}")
                await backends[k].generate(request)
                done += 1
            rates[k] += done / (time.perf_counter() - started)

        await asyncio.gather(*(worker(k) for k in range(len(urls)) for _ in range(slots)))
        for backend in backends:
            await backend.aclose()
    return rates


@dataclass(frozen=True)
class Measured:
    kiln: float  #: tasks/s through pixelkiln
    baseline: float  #: tasks/s dealt in turn
    sustained: list[float]  #: requests/s each server sustains: the mean of before and after
    before: float  #: Σ sustained, measured just before pixelkiln's run
    after: float  #: Σ sustained, measured just after it
    shares: list[int]  #: tasks each server did for pixelkiln


async def measure(tasks: int, latencies: list[float], slots: int) -> Measured:
    servers = [("sdwebui", {"latency": latency}) for latency in latencies]
    window = max(3.0, 6 * max(latencies))
    with FakeFleet(servers) as fleet:
        # the servers' capacity is measured on both sides of pixelkiln's run and averaged,
        # so that a change in the machine's load during the run weighs on both alike
        before = await capacity(fleet.urls, slots, window)
        served = [sum(fleet.outcomes(k).values()) for k in range(len(latencies))]
        with tempfile.TemporaryDirectory() as folder:
            result = await run_batch(bench_settings(Path(folder), fleet.urls, slots), tasks)
        if result.succeeded != tasks:
            raise SystemExit(f"pixelkiln lost work: {result}")
        shares = [sum(fleet.outcomes(k).values()) - served[k] for k in range(len(latencies))]
        after = await capacity(fleet.urls, slots, window)
        baseline = await round_robin(fleet.urls, tasks, slots)
    sustained = [(a + b) / 2 for a, b in zip(before, after, strict=True)]
    return Measured(result.throughput, baseline, sustained, sum(before), sum(after), shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--latencies", default="0.1,0.3,0.9")
    parser.add_argument("--slots", type=int, default=2, help="slots per server")
    args = parser.parse_args()
    latencies = [float(x) for x in args.latencies.split(",")]
    quiet_logs()
    got = asyncio.run(measure(args.tasks, latencies, args.slots))
    kiln, baseline = got.kiln, got.baseline
    ideal = sum(args.slots / latency for latency in latencies)
    sustained = sum(got.sustained)
    print(
        f"unequal servers: {args.tasks} tasks, servers taking "
        f"{', '.join(f'{x:g}' for x in latencies)} s, {args.slots} slots each"
    )
    print(f"ideal throughput (nominal latencies):       {ideal:6.2f} tasks/s")
    print(
        f"ideal the servers sustain here (same run):  {sustained:6.2f} tasks/s   "
        f"({', '.join(f'{x:.2f}' for x in got.sustained)} per server; "
        f"{sustained / ideal:.3f} of nominal; {got.before:.2f} before pixelkiln's run, "
        f"{got.after:.2f} after)"
    )
    print(
        f"pixelkiln:               {kiln:6.2f} tasks/s   ratio {kiln / ideal:.3f} of nominal, "
        f"{kiln / sustained:.3f} of sustained   (target >= 0.95)"
    )
    print(f"round robin (same run):  {baseline:6.2f} tasks/s   ratio {baseline / ideal:.3f}")
    print(f"pixelkiln / round robin: {kiln / baseline:6.2f}x")
    print(f"tasks per server (pixelkiln): {got.shares}")


if __name__ == "__main__":
    main()
