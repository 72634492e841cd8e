"""The peer the scale-out benchmarks measure pixelkiln against: a sane Celery app.

One task does what a pixelkiln task does at its core, the way a careful Celery
user would write it: POST ``txt2img`` to a WebUI with a pooled ``httpx``
client, decode the JSON answer and the base64 image, write the PNG file, and
record a result row in PostgreSQL (one ``INSERT`` on a per-thread psycopg
connection, autocommit). Acks late, prefetch 1, no result backend (the row is
the result), so a killed worker's tasks go back to the queue.

The worker is configured from the environment (it runs as its own process)::

    PEER_BROKER=redis://127.0.0.1:6379/9 PEER_DB=postgresql://postgres@127.0.0.1/test \\
    PEER_TABLE=peer_results PEER_OUT=/tmp/peer \\
        celery -A bench.celery_peer worker -P threads -c 4

:func:`start_worker`, :func:`enqueue` and :func:`results` are what the
benchmarks call from the parent process.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from celery import Celery

BROKER = os.environ.get("PEER_BROKER", "redis://127.0.0.1:6379/9")
DB = os.environ.get("PEER_DB", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = os.environ.get("PEER_TABLE", "peer_results")
OUT = Path(os.environ.get("PEER_OUT", "/tmp/celery-peer"))
TASK = "bench.celery_peer.generate"
#: this run's queue: benchmarks running at once on one Redis never take, or purge, each
#: other's tasks (the workers, started from here, inherit it through the environment)
QUEUE = os.environ.setdefault("PEER_QUEUE", f"peer-{os.getpid()}")

app = Celery("peer", broker=BROKER)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,  # a killed worker's task goes back, as pixelkiln's do
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue=QUEUE,
    # a message unacked this long is redelivered (Redis' visibility timeout): the peer's
    # recovery after a worker dies; short, as pixelkiln's lease is
    broker_transport_options={"visibility_timeout": float(os.environ.get("PEER_VISIBILITY", "10"))},
)

_local = threading.local()
_http = httpx.Client(limits=httpx.Limits(max_connections=100), timeout=60)


def _conn() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None:
        conn = psycopg.connect(DB, autocommit=True)
        _local.conn = conn
    return conn


@app.task(name=TASK)
def generate(job: int, url: str, prompt: str, size: int) -> None:
    """One image: ask the WebUI, write the file, record the row."""
    body = {"prompt": prompt, "width": size, "height": size, "steps": 4, "seed": job}
    response = _http.post(f"{url}/sdapi/v1/txt2img", json=body)
    response.raise_for_status()
    data = base64.b64decode(response.json()["images"][0])
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{job}.png"
    path.write_bytes(data)
    _conn().execute(
        f"INSERT INTO {TABLE} (job, path, bytes, pid) VALUES (%s, %s, %s, %s)",
        (job, str(path), len(data), os.getpid()),
    )


# -- the parent's side ------------------------------------------------------------------------


def reset(db: str, table: str) -> None:
    """An empty result table and an empty queue."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (job int, path text, bytes int, pid int)")
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)


def start_worker(
    env: dict[str, str], concurrency: int, pool: str = "threads", name: str = "peer"
) -> subprocess.Popen[bytes]:
    """A Celery worker process (its own process group, so a kill takes its children too)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.celery_peer",
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        f"{name}-{QUEUE}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "warning",
    ]
    return subprocess.Popen(
        command,
        env={**os.environ, **env},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(workers: int, deadline: float = 60.0) -> None:
    """Until ``workers`` workers answer a ping."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        answers = app.control.ping(timeout=0.5) or []
        ours = [a for a in answers for worker in a if f"-{QUEUE}@" in worker]
        if len(ours) >= workers:
            return
    raise RuntimeError(f"{workers} Celery worker(s) did not start within {deadline:g} s")


def enqueue(first: int, count: int, url: str, size: int) -> None:
    """``count`` tasks, jobs ``first`` … ``first + count - 1``."""
    with app.producer_or_acquire() as producer:
        for job in range(first, first + count):
            generate.apply_async((job, url, f"benchmark prompt {job}", size), producer=producer)


def results(db: str, table: str) -> tuple[int, int]:
    """(rows, distinct jobs) recorded so far."""
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*), count(DISTINCT job) FROM {table}").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def drop(db: str, table: str) -> None:
    """Remove a result table made by :func:`reset`."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
