"""CPU per task: pixelkiln's scheduler against a Celery worker doing the same job.

    python -m bench.cpu_per_task [--tasks 400] [--concurrency 4] [--repeat 2]

The same N tasks (one 64×64 image each from a fake Stable Diffusion WebUI served
by a child process, so its CPU is not counted) are run by

- pixelkiln: ``Kiln.run_until_done`` in this process, on SQLite and on
  PostgreSQL (claims with leases, PNG ``parameters`` chunk, sha256, the file,
  task/image rows, events, counters); CPU seconds of this process (every thread)
  from the start of the run to its end, the batch already submitted;
- Celery (``bench.celery_peer``: acks late, prefetch 1, threads pool of the same
  concurrency, Redis broker, the row written in PostgreSQL): CPU seconds of the
  worker process tree from the moment it is ready to the moment the last row is
  written, the tasks enqueued by this process (not counted).

CPU seconds are read from ``/proc/<pid>/stat`` (user + system). Each side's
median of ``--repeat`` runs, measured alternately. Target: pixelkiln's CPU per
task ≤ Celery's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from bench import celery_peer
from bench.latency_hiding import SIZE, bench_settings, quiet_logs, spec
from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.testing import FakeFleet

POSTGRES = os.environ.get("KILN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its live descendants."""
    total = 0.0
    for each in _tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def _tree(pid: int) -> Iterator[int]:
    yield pid
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            yield from _tree(int(child))


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema of the PostgreSQL test database (its URL), dropped afterwards."""
    schema = f"kiln_bench_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


async def kiln_cpu(url: str, tasks: int, concurrency: int, database: str | None) -> float:
    """CPU seconds of this process while pixelkiln runs ``tasks`` already submitted tasks."""
    with tempfile.TemporaryDirectory() as folder:
        settings = bench_settings(Path(folder), [url], concurrency)
        if database is not None:
            settings.storage.database_url = database
        async with Kiln(settings) as kiln:
            batch_id = await kiln.submit(spec(tasks), source="cli")
            started = time.process_time()
            await kiln.run_until_done([batch_id])
            spent = time.process_time() - started
            batch = kiln.db.read(get_batch, batch_id)
    if batch.counts.succeeded != tasks:
        raise SystemExit(f"pixelkiln lost work: {batch.counts}")
    return spent


def celery_cpu(url: str, tasks: int, concurrency: int) -> float:
    """CPU seconds of a Celery worker tree while it runs ``tasks`` tasks."""
    db, table = libpq_url(POSTGRES), f"peer_{secrets.token_hex(4)}"
    celery_peer.reset(db, table)
    with tempfile.TemporaryDirectory() as folder:
        env = {"PEER_TABLE": table, "PEER_OUT": folder, "PEER_DB": db}
        worker = celery_peer.start_worker(env, concurrency)
        try:
            celery_peer.wait_ready(1)
            before = process_cpu(worker.pid)
            celery_peer.enqueue(0, tasks, url, SIZE)
            deadline = time.monotonic() + 60 + tasks
            while celery_peer.results(db, table)[1] < tasks:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit("the Celery worker did not finish its tasks")
                time.sleep(0.05)
            spent = process_cpu(worker.pid) - before
        finally:
            worker.terminate()
            worker.wait(30)
            celery_peer.drop(db, table)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    quiet_logs()
    n, c = args.tasks, args.concurrency
    runs: dict[str, list[float]] = {"celery": [], "kiln-pg": [], "kiln-sqlite": []}
    with FakeFleet([("sdwebui", {"latency": 0.0})]) as fleet:
        url = fleet.urls[0]
        for _ in range(args.repeat):
            runs["celery"].append(celery_cpu(url, n, c))
            with postgres_schema() as database:
                runs["kiln-pg"].append(asyncio.run(kiln_cpu(url, n, c, database)))
            if not args.no_sqlite:
                runs["kiln-sqlite"].append(asyncio.run(kiln_cpu(url, n, c, None)))
    ms = {k: statistics.median(v) * 1000 / n for k, v in runs.items() if v}
    print(f"CPU per task: {n} tasks, 64x64 fake WebUI, concurrency {c}, median of {args.repeat}")
    print(f"celery worker (threads, Redis, row in PostgreSQL): {ms['celery']:6.2f} ms/task")
    for key, label in (("kiln-pg", "PostgreSQL"), ("kiln-sqlite", "SQLite")):
        if key in ms:
            print(
                f"pixelkiln on {label:<10} {'':24}{ms[key]:6.2f} ms/task   "
                f"ratio to Celery {ms[key] / ms['celery']:.2f} (target <= 1)"
            )


if __name__ == "__main__":
    main()
