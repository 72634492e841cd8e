"""The API under load: does polling slow the scheduler, and how fast does it answer?

    python -m bench.api_load [--tasks 20000] [--latency 0.05] [--concurrency 16]
                             [--clients 10] [--interval 0.1] [--status-tasks 0]
                             [--subscribers 0] [--repeat 1]

Two runs of the same batch against a real `kiln serve` subprocess (SQLite,
placeholder backend with ``--latency`` seconds per image, 64×64 images):

1. *unloaded*: the batch is created through the API and watched with one
   status request a second;
2. *loaded*: the same, while ``--clients`` clients each request, every
   ``--interval`` seconds, alternately the batch's status (counters, progress,
   ETA; ``--status-tasks`` tasks with it, none by default, as a progress bar
   polls) and the newest page of 50 image records with their total count (the
   records page). With ``--subscribers N``, N more clients follow the batch's
   Server-Sent Events stream to its end (each must receive every
   ``image_generated`` event), from a process of their own;
   ``--clients 0 --subscribers 20`` measures what subscribers alone cost.

With ``--repeat N`` the pair is measured N times, alternately, and the
medians are reported (this machine is shared and noisy). It prints the
scheduler's throughput in both runs (tasks/s from the batch's
start to its end, as the server recorded them) and their ratio, the p50 / p99
latency of the load's requests, the server's CPU use and its peak RSS.
Targets: p99 below 100 ms, loaded throughput at least 0.9 of unloaded, RSS
below 500 MB. The scheduler shares one interpreter (one GIL) with the API, so
the ratio depends on how busy the scheduler already is: at 50 ms a task,
``--concurrency`` 16 keeps it near half a core on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVE = [sys.executable, "-m", "pixelkiln.cli", "serve"]  # `kiln serve`


@dataclass
class Run:
    """What one run measured."""

    create_seconds: float
    tasks_per_second: float
    peak_rss_mb: float
    cpu_cores: float  #: server CPU seconds per second while the batch ran
    latencies: dict[str, list[float]] = field(default_factory=dict)  #: endpoint → seconds
    #: per SSE subscriber: image_generated events received (each should equal --tasks)
    streamed: list[int] = field(default_factory=list)


def _config(folder: Path, latency: float, concurrency: int) -> Path:
    path = folder / "kiln.toml"
    path.write_text(
        f"""
[storage]
data_dir = "{folder / "data"}"

[scheduler]
concurrency = {concurrency}

[[backends]]
name = "placeholder"
type = "placeholder"
concurrency = {concurrency}
latency = {latency}
"""
    )
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _spec(tasks: int) -> dict[str, Any]:
    return {
        "name": "api load",
        "defaults": {"width": 64, "height": 64, "seed": 1},
        "tasks": [{"prompt": f"benchmark prompt {i}", "key": f"t{i}"} for i in range(tasks)],
    }


async def _wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if process.poll() is not None:
                raise SystemExit("kiln serve exited; see its output above")
            try:
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("kiln serve did not come up")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _poller(
    http: httpx.AsyncClient,
    batch_id: int,
    args: argparse.Namespace,
    stop: asyncio.Event,
    latencies: dict[str, list[float]],
    offset: int,
) -> None:
    """One dashboard: batch status and records, alternately, every ``interval`` seconds."""
    status = f"/api/v1/batches/{batch_id}?task_limit={args.status_tasks}"
    requests = [("batch status", status), ("records", "/api/v1/images?limit=50")]
    interval = args.interval
    n = offset
    while not stop.is_set():
        name, path = requests[n % 2]
        n += 1
        started = time.perf_counter()
        try:
            response = await http.get(path)
        except httpx.TransportError:
            # a keep-alive connection the server closed just as we reused it: counted, not timed
            latencies.setdefault("connection errors", []).append(0.0)
            continue
        latencies[name].append(time.perf_counter() - started)
        response.raise_for_status()
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))


async def _subscriber(http: httpx.AsyncClient, batch_id: int) -> int:
    """Follow the batch's SSE stream to its end; image_generated events received.

    Counted in raw bytes (cheaply: the subscribers share the machine with the server)."""
    marker = b"\nevent: image_generated\n"
    images, tail = 0, b""
    async with http.stream("GET", f"/api/v1/batches/{batch_id}/events") as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            data = tail + chunk
            images += data.count(marker)
            # a marker cut by the chunk boundary is counted with the next chunk, once
            tail = data[-(len(marker) - 1) :]
    return images


def _subscribers(url: str, batch_id: int, count: int) -> list[int]:
    """``count`` subscribers in a process of their own: parsing their streams must not slow
    the pollers' clock (their latencies are measured on this process's event loop)."""

    async def follow() -> list[int]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            return list(await asyncio.gather(*(_subscriber(http, batch_id) for _ in range(count))))

    return asyncio.run(follow())


async def _watch(http: httpx.AsyncClient, batch_id: int) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = (await http.get(f"/api/v1/batches/{batch_id}?task_limit=0")).json()
        if body["finished"]:
            return body
        await asyncio.sleep(1.0)


async def one_run(args: argparse.Namespace, loaded: bool) -> Run:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as folder:
        config = _config(Path(folder), args.latency, args.concurrency)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        command = [*SERVE, "--config", str(config), "--port", str(port), "--log-level", "warning"]
        process = subprocess.Popen(command, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_up(url, process)
            limits = httpx.Limits(max_connections=args.clients + 4)
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
                started = time.perf_counter()
                cpu_before = _cpu_seconds(process.pid)
                created = await http.post("/api/v1/batches", json=_spec(args.tasks))
                created.raise_for_status()
                create_seconds = time.perf_counter() - started
                batch_id = created.json()["id"]
                latencies: dict[str, list[float]] = {"batch status": [], "records": []}
                stop = asyncio.Event()
                pollers = [
                    asyncio.create_task(_poller(http, batch_id, args, stop, latencies, i))
                    for i in range(args.clients if loaded else 0)
                ]
                spawn = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                    streams = args.subscribers if loaded else 0
                    subscribers = asyncio.wrap_future(
                        pool.submit(_subscribers, url, batch_id, streams)
                    )
                    batch = await _watch(http, batch_id)
                    stop.set()
                    await asyncio.gather(*pollers)
                    streamed = await subscribers
                cores = (_cpu_seconds(process.pid) - cpu_before) / (time.perf_counter() - started)
            rss = _peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
    elapsed = batch["finished_at"] - batch["started_at"]
    assert batch["counts"]["succeeded"] == args.tasks, batch["counts"]
    return Run(create_seconds, args.tasks / elapsed, rss, cores, latencies, streamed)


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median_run(runs: list[Run]) -> Run:
    """The run with the median throughput, every run's latencies pooled into it."""
    chosen = sorted(runs, key=lambda r: r.tasks_per_second)[len(runs) // 2]
    pooled: dict[str, list[float]] = {}
    for run in runs:
        for name, values in run.latencies.items():
            pooled.setdefault(name, []).extend(values)
    peak = max(r.peak_rss_mb for r in runs)
    streamed = [n for r in runs for n in r.streamed]
    return Run(
        chosen.create_seconds, chosen.tasks_per_second, peak, chosen.cpu_cores, pooled, streamed
    )


def report(args: argparse.Namespace, unloaded: Run, loaded: Run) -> None:
    ratio = loaded.tasks_per_second / unloaded.tasks_per_second
    errors = len(loaded.latencies.pop("connection errors", []))
    every = [v for values in loaded.latencies.values() for v in values]
    print(
        f"\n{args.tasks} tasks, placeholder latency {args.latency * 1000:.0f} ms, "
        f"concurrency {args.concurrency}; load: {args.clients} clients every "
        f"{args.interval * 1000:.0f} ms, {args.subscribers} SSE subscriber(s); "
        f"median of {args.repeat} run(s) each"
    )
    print(
        f"create through the API: {unloaded.create_seconds:.2f} s / "
        f"{loaded.create_seconds:.2f} s (unloaded / loaded run)"
    )
    for label, run in (("unloaded", unloaded), ("loaded", loaded)):
        print(
            f"scheduler throughput {label + ':':9s} {run.tasks_per_second:8.1f} tasks/s "
            f"(server CPU {run.cpu_cores:.2f} cores)"
        )
    print(f"ratio loaded / unloaded:       {ratio:8.3f}   (target >= 0.9)")
    for name, values in [*loaded.latencies.items(), ("all requests", every)]:
        if values:  # none with --clients 0
            print(
                f"{name:>14}: {len(values):6d} requests  p50 {_ms(values, 0.5):6.1f} ms  "
                f"p99 {_ms(values, 0.99):6.1f} ms  max {1000 * max(values):6.1f} ms"
            )
    print(f"connection errors (retried): {errors}")
    if loaded.streamed:
        whole = sum(n == args.tasks for n in loaded.streamed)
        print(
            f"SSE subscribers that received every image_generated event: "
            f"{whole} / {len(loaded.streamed)}"
        )
    print(
        f"server peak RSS: {unloaded.peak_rss_mb:.0f} MB unloaded, "
        f"{loaded.peak_rss_mb:.0f} MB loaded (target < 500 MB)"
    )
    if every:
        print(
            f"p99 of all requests: {_ms(every, 0.99):.1f} ms (target < 100 ms); "
            f"median {statistics.median(every) * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per placeholder image")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--status-tasks", type=int, default=0, help="tasks per status poll")
    parser.add_argument("--repeat", type=int, default=1, help="measure each side this often")
    parser.add_argument("--clients", type=int, default=10, help="polling clients in the load")
    parser.add_argument(
        "--subscribers", type=int, default=0, help="SSE clients following the batch in the load"
    )
    parser.add_argument(
        "--interval", type=float, default=0.1, help="seconds between a client's requests"
    )
    args = parser.parse_args()
    unloaded: list[Run] = []
    loaded: list[Run] = []
    for i in range(args.repeat):
        for runs, is_loaded in ((unloaded, False), (loaded, True)):
            run = asyncio.run(one_run(args, loaded=is_loaded))
            runs.append(run)
            label = "loaded" if is_loaded else "unloaded"
            print(
                f"run {i + 1} {label}: {run.tasks_per_second:.1f} tasks/s, "
                f"CPU {run.cpu_cores:.2f} cores",
                flush=True,
            )
    report(args, _median_run(unloaded), _median_run(loaded))


if __name__ == "__main__":
    main()
