"""Scale-out: 1, 2, 4, 8 worker processes on PostgreSQL, against Celery + Redis doing the same.

    python -m bench.scaleout [--workers 1,2,4,8] [--rounds 5] [--latency 1.0] [--full]

A fake Stable Diffusion WebUI (served by a child process) takes ``--latency``
seconds per image and runs every request it gets in parallel; each worker has
4 slots. With W workers the ideal time of ``4 × W × rounds`` tasks is
``rounds × latency``; efficiency is ideal / measured (submit to last task
recorded). Each worker count runs on

- pixelkiln: W ``kiln worker --concurrency 4`` processes (a stand-in that runs
  ``Engine.scheduler`` in a process of its own where ``kiln worker`` does not
  exist yet), one fresh PostgreSQL schema each time, the batch submitted by this
  process; LISTEN/NOTIFY wakes the workers;
- Celery (:mod:`bench.celery_peer`): W workers, threads pool of 4, acks late,
  prefetch 1, Redis broker, the result row in PostgreSQL.

Both are warmed up first (one round of tasks, not measured). CPU seconds per
task are the workers' own (``/proc``), summed over the workers, from submit to
the end. ``/proc`` counts in 10 ms ticks per process: at 8 workers the quick
mode's 160 tasks carry about ±1 ms per task of that alone, ``--full`` (800
tasks) about ±0.2; the CPU figures are ``--full``'s. Then one worker of
``--kill-workers`` is SIGKILLed once every task has been taken off the queue,
and the recovery time is the time from the kill until the last task is done
(its tasks come back after the lease, or Redis'
visibility timeout, both ``--lease`` seconds; pixelkiln also spots a dead worker
on the same host at its next look). Targets: efficiency ≥ 0.9 at 8 workers,
time ≤ Celery's, CPU seconds per task ≤ Celery's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import celery_peer
from bench.cpu_per_task import POSTGRES, libpq_url, postgres_schema, process_cpu
from bench.latency_hiding import SIZE, quiet_logs, spec
from pixelkiln.app import Kiln
from pixelkiln.config import load_settings
from pixelkiln.db.batches import get_batch
from pixelkiln.testing import FakeFleet

SLOTS = 4  #: per worker
KILN = [sys.executable, "-m", "pixelkiln.cli"]


@dataclass(frozen=True)
class Round:
    """One system, one worker count."""

    tasks: int
    seconds: float
    cpu: float  #: CPU seconds of the workers, summed

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.tasks


# -- pixelkiln ----------------------------------------------------------------------------------


def has_kiln_worker() -> bool:
    """Whether this pixelkiln has ``kiln worker`` (else the stand-in runs)."""
    done = subprocess.run([*KILN, "worker", "--help"], capture_output=True, timeout=60)
    return done.returncode == 0


def write_config(folder: Path, database: str, url: str, workers: int, lease: float) -> Path:
    """kiln.toml: PostgreSQL, one WebUI backend with a slot per worker slot, leases of ``lease``."""
    path = folder / "kiln.toml"
    path.write_text(
        f"[storage]\ndata_dir = {json.dumps(str(folder / 'data'))}\n"
        f"database_url = {json.dumps(database)}\n"
        f"[scheduler]\nconcurrency = {SLOTS * workers}\nlease_seconds = {lease}\n"
        f'[[backends]]\nname = "sd"\ntype = "sdwebui"\nurls = [{json.dumps(url)}]\n'
        f"concurrency = {SLOTS * workers}\ntimeout = 60\n"
    )
    return path


def start_kiln_worker(config: Path, real: bool) -> subprocess.Popen[bytes]:
    if real:
        command = [*KILN, "worker", "--config", str(config), "--concurrency", str(SLOTS)]
    else:
        command = [sys.executable, "-m", "bench.scaleout", "--stand-in-worker", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def stand_in_worker(config: Path) -> None:
    """What ``kiln worker --concurrency 4`` does, until SIGTERM."""
    quiet_logs()
    async with Kiln(load_settings(config)) as kiln:
        scheduler = kiln.engine().scheduler(concurrency=SLOTS)
        scheduler.listening = lambda: kiln.listening  # idle polls stretch while NOTIFY is up
        kiln.schedulers.add(scheduler)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, scheduler.stop)
        await scheduler.run()


async def _wait_done(kiln: Kiln, batch_id: int, deadline: float) -> None:
    while not (await kiln.db.aread(get_batch, batch_id)).status.finished:
        if time.monotonic() > deadline:
            raise SystemExit(f"pixelkiln: batch {batch_id} did not finish")
        await asyncio.sleep(0.02)


@contextmanager
def kiln_workers(
    workers: int, url: str, lease: float, real: bool
) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    with postgres_schema() as database, tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder), database, url, workers, lease)
        # the schema is migrated once, here, before the workers race to do it
        asyncio.run(_open_once(config))
        procs = [start_kiln_worker(config, real) for _ in range(workers)]
        try:
            yield config, procs
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _open_once(config: Path) -> None:
    async with Kiln(load_settings(config), engine=False):
        pass


async def kiln_round(config: Path, procs: list[subprocess.Popen[bytes]], rounds: int) -> Round:
    tasks = SLOTS * len(procs) * rounds
    async with Kiln(load_settings(config), engine=False) as kiln:
        warm = await kiln.submit(spec(SLOTS * len(procs)), source="cli")
        await _wait_done(kiln, warm, time.monotonic() + 120)
        before = sum(process_cpu(p.pid) for p in procs)
        started = time.perf_counter()
        batch_id = await kiln.submit(spec(tasks), source="cli")
        await _wait_done(kiln, batch_id, time.monotonic() + 120 + 10 * rounds)
        seconds = time.perf_counter() - started
        cpu = sum(process_cpu(p.pid) for p in procs) - before
        batch = await kiln.db.aread(get_batch, batch_id)
    if batch.counts.succeeded != tasks or batch.counts.images != tasks:
        raise SystemExit(f"pixelkiln lost or duplicated work: {batch.counts}")
    return Round(tasks, seconds, cpu)


async def kiln_recovery(config: Path, procs: list[subprocess.Popen[bytes]], rounds: int) -> float:
    """Seconds from the SIGKILL of a worker (nothing left in the queue) to the batch's end."""
    tasks = SLOTS * len(procs) * rounds
    async with Kiln(load_settings(config), engine=False) as kiln:
        warm = await kiln.submit(spec(SLOTS * len(procs)), source="cli")
        await _wait_done(kiln, warm, time.monotonic() + 120)
        batch_id = await kiln.submit(spec(tasks), source="cli")
        while (await kiln.db.aread(get_batch, batch_id)).counts.pending:
            await asyncio.sleep(0.02)
        procs[0].kill()
        killed = time.perf_counter()
        procs[0].wait()  # reaped: a zombie would still look alive to the others
        await _wait_done(kiln, batch_id, time.monotonic() + 300)
        recovered = time.perf_counter() - killed
        batch = await kiln.db.aread(get_batch, batch_id)
    if batch.counts.succeeded != tasks or batch.counts.images != tasks:
        raise SystemExit(f"pixelkiln lost or duplicated work after the kill: {batch.counts}")
    return recovered


# -- Celery -------------------------------------------------------------------------------------


@contextmanager
def celery_workers(workers: int) -> Iterator[tuple[str, str, list[subprocess.Popen[bytes]]]]:
    db, table = libpq_url(POSTGRES), f"peer_{os.getpid()}"
    celery_peer.reset(db, table)
    with tempfile.TemporaryDirectory() as folder:
        env = {"PEER_TABLE": table, "PEER_OUT": folder, "PEER_DB": db}
        procs = [celery_peer.start_worker(env, SLOTS, name=f"peer{i}") for i in range(workers)]
        try:
            celery_peer.wait_ready(workers)
            yield db, table, procs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            celery_peer.drop(db, table)


def _celery_wait(db: str, table: str, jobs: int, deadline: float) -> None:
    while celery_peer.results(db, table)[1] < jobs:
        if time.monotonic() > deadline:
            raise SystemExit("Celery did not finish its tasks")
        time.sleep(0.02)


def celery_round(
    db: str, table: str, procs: list[subprocess.Popen[bytes]], url: str, rounds: int
) -> Round:
    tasks, warm = SLOTS * len(procs) * rounds, SLOTS * len(procs)
    celery_peer.enqueue(0, warm, url, SIZE)
    _celery_wait(db, table, warm, time.monotonic() + 120)
    before = sum(process_cpu(p.pid) for p in procs)
    started = time.perf_counter()
    celery_peer.enqueue(warm, tasks, url, SIZE)
    _celery_wait(db, table, warm + tasks, time.monotonic() + 120 + 10 * rounds)
    seconds = time.perf_counter() - started
    cpu = sum(process_cpu(p.pid) for p in procs) - before
    return Round(tasks, seconds, cpu)


def celery_recovery(
    db: str, table: str, procs: list[subprocess.Popen[bytes]], url: str, rounds: int
) -> tuple[float, int]:
    """(seconds from the SIGKILL of a worker, the queue empty, to the last task done;
    tasks run twice)."""
    tasks, warm = SLOTS * len(procs) * rounds, SLOTS * len(procs)
    celery_peer.enqueue(0, warm, url, SIZE)
    _celery_wait(db, table, warm, time.monotonic() + 120)
    celery_peer.enqueue(warm, tasks, url, SIZE)
    with celery_peer.app.connection_for_write() as conn:
        client = conn.default_channel.client
        while client.llen(celery_peer.QUEUE):
            time.sleep(0.02)
    os.killpg(procs[0].pid, signal.SIGKILL)
    killed = time.perf_counter()
    procs[0].wait()
    _celery_wait(db, table, warm + tasks, time.monotonic() + 600)
    rows, jobs = celery_peer.results(db, table)
    return time.perf_counter() - killed, rows - jobs


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=5, help="tasks per slot (quick mode)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per image")
    parser.add_argument("--lease", type=float, default=10.0, help="lease = visibility timeout")
    parser.add_argument("--kill-workers", type=int, default=4, help="0: no recovery test")
    parser.add_argument("--full", action="store_true", help="25 tasks per slot")
    parser.add_argument("--stand-in-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_in_worker is not None:
        asyncio.run(stand_in_worker(args.stand_in_worker))
        return
    quiet_logs()
    rounds = 25 if args.full else args.rounds
    counts = [int(w) for w in args.workers.split(",")]
    real = has_kiln_worker()
    os.environ["PEER_VISIBILITY"] = str(args.lease)
    print(
        f"scale-out: {SLOTS} slots per worker, {args.latency:g} s per image, "
        f"{rounds} tasks per slot; pixelkiln workers: "
        f"{'kiln worker' if real else 'stand-in (no kiln worker yet)'}"
    )
    header = (
        f"{'workers':>7} {'tasks':>6} {'ideal':>6} | {'kiln s':>7} {'eff':>5} {'cpu ms':>7}"
        f" | {'celery s':>8} {'eff':>5} {'cpu ms':>7} | {'time k/c':>8} {'cpu k/c':>7}"
    )
    print(header)
    with FakeFleet([("sdwebui", {"latency": args.latency})]) as fleet:
        url = fleet.urls[0]
        for workers in counts:
            with kiln_workers(workers, url, args.lease, real) as (config, procs):
                kiln = asyncio.run(kiln_round(config, procs, rounds))
            with celery_workers(workers) as (db, table, cprocs):
                peer = celery_round(db, table, cprocs, url, rounds)
            ideal = rounds * args.latency
            print(
                f"{workers:>7} {kiln.tasks:>6} {ideal:>6.1f} | {kiln.seconds:>7.2f} "
                f"{ideal / kiln.seconds:>5.2f} {kiln.cpu_ms:>7.2f} | {peer.seconds:>8.2f} "
                f"{ideal / peer.seconds:>5.2f} {peer.cpu_ms:>7.2f} | "
                f"{kiln.seconds / peer.seconds:>8.2f} {kiln.cpu_ms / peer.cpu_ms:>7.2f}"
            )
        if args.kill_workers:
            k = args.kill_workers
            with kiln_workers(k, url, args.lease, real) as (config, procs):
                kiln_back = asyncio.run(kiln_recovery(config, procs, rounds))
            with celery_workers(k) as (db, table, cprocs):
                peer_back, twice = celery_recovery(db, table, cprocs, url, rounds)
            print(
                f"recovery after SIGKILL of 1 of {k} workers (queue empty, lease / visibility "
                f"timeout {args.lease:g} s): pixelkiln {kiln_back:.2f} s (nothing lost or run "
                f"twice), Celery {peer_back:.2f} s ({twice} task(s) run twice); "
                f"ratio {kiln_back / peer_back:.2f}"
            )
    print("targets: efficiency >= 0.9 at 8 workers; time and CPU ratios (k/c) <= 1")


if __name__ == "__main__":
    main()
