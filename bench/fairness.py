"""Fairness: a second user's small batch behind a first user's large one.

    python -m bench.fairness [--big 2000] [--small 10] [--latency 0.1] [--slots 8]

Alice submits ``--big`` tasks; once they run, Bob submits ``--small``. Both run on one
placeholder backend taking ``--latency`` seconds a task, ``--slots`` at once, through the
real engine on SQLite. The figure is Bob's completion time (his submit to his batch's
end) against its ideal under fair share: his tasks on half the slots, after the wait for
a running task to end that no scheduler without pre-emption avoids, so
``latency + small × latency / (slots / 2)``. The baseline, measured in the same run on the
same workload, is the claim order before fair share (priority, then age: the queue
order), which puts Bob behind all of Alice's tasks. The completion at which Bob's last
task ends is shown against ``2 × small + slots + claimed ahead`` (Alice's tasks already
claimed when he arrives run first). A last section times the claim itself (two users,
five batches each, 8 tasks a claim) with and without fair share.
Target: Bob within ~2× of his fair-share time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, select

from bench.latency_hiding import quiet_logs
from pixelkiln.app import Kiln
from pixelkiln.config import Settings, load_settings
from pixelkiln.db import leases
from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.fair import Contender
from pixelkiln.db.leases import claim_tasks, release_tasks
from pixelkiln.db.tables import tasks
from pixelkiln.db.users import add_user
from pixelkiln.engine.dispatch import MAX_PREFETCH, PREFETCH_SECONDS
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import BatchSpec, parse_batch


@dataclass
class QueueOrder:
    """The claim before fair share: batches in the queue's order, each as much as it may."""

    order: list[int]

    @classmethod
    def read(cls, conn: Connection, found: Sequence[Contender]) -> QueueOrder:
        return cls([c.id for c in found])  # found: in the queue's order already

    def plan(
        self, want: int, caps: Mapping[int, int], paced: Collection[int] = (), spare: int = 0
    ) -> dict[int, int]:
        planned: dict[int, int] = {}
        for batch_id in self.order:
            n = min(want, caps.get(batch_id, 0))
            if n > 0:
                planned[batch_id] = n
                want -= n
        return planned

    def took(self, batch_id: int, n: int) -> None:
        """Nothing to count: the order never changes."""


@contextlib.contextmanager
def queue_order() -> Iterator[None]:
    """Claims in this process follow the queue order alone (the baseline)."""
    names = vars(leases)  # the name db.leases.claim looks up on every claim
    fair = names["Turns"]
    names["Turns"] = QueueOrder
    try:
        yield
    finally:
        names["Turns"] = fair


def _spec(name: str, n: int) -> BatchSpec:
    return parse_batch(
        {
            "name": name,
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"{name} {i}"} for i in range(n)],
        }
    )


def _settings(data_dir: Path, latency: float, slots: int) -> Settings:
    backend = {"name": "p", "type": "placeholder", "concurrency": slots, "latency": latency}
    return load_settings(
        None,
        storage={"data_dir": str(data_dir)},
        scheduler={"concurrency": slots, "poll_interval": 0.05},
        backends=[backend],
    )


@dataclass(frozen=True)
class Outcome:
    seconds: float  #: Bob's submit to the end of his batch
    position: int  #: completions (both users) after his submit, up to his last


async def _wait(db: Database, batch_id: int, done: int) -> None:
    """Until the batch has ``done`` succeeded tasks (checked every 10 ms)."""
    while (await db.aread(get_batch, batch_id)).counts.succeeded < done:
        await asyncio.sleep(0.01)


def _position(conn: Connection, ids: list[int], after: float, small: int) -> int:
    query = (
        select(tasks.c.batch_id)
        .where(
            tasks.c.batch_id.in_(ids),
            tasks.c.status == TaskStatus.SUCCEEDED,
            tasks.c.finished_at > after,
        )
        .order_by(tasks.c.finished_at, tasks.c.id)
    )
    order = list(conn.execute(query).scalars())
    return max(i for i, b in enumerate(order) if b == small) + 1


async def run(big: int, small: int, latency: float, slots: int) -> Outcome:
    """One run: Alice's ``big`` tasks, then Bob's ``small`` once hers have started."""
    with tempfile.TemporaryDirectory() as folder:
        async with Kiln(_settings(Path(folder), latency, slots)) as kiln:
            alice = (await kiln.db.awrite(add_user, "alice"))[0].id
            bob = (await kiln.db.awrite(add_user, "bob"))[0].id
            first = await kiln.submit(_spec("big", big), owner_id=alice)
            scheduler = kiln.new_scheduler()
            worker = asyncio.create_task(scheduler.run())
            await _wait(kiln.db, first, 2 * slots)
            started = time.perf_counter()
            second = await kiln.submit(_spec("small", small), owner_id=bob)
            submitted = (await kiln.db.aread(get_batch, second)).created_at
            while (await kiln.db.aread(get_batch, second)).status is not BatchStatus.COMPLETED:
                await asyncio.sleep(0.01)
            seconds = time.perf_counter() - started
            if (await kiln.db.aread(get_batch, first)).status is BatchStatus.RUNNING:
                await kiln.cancel(first)  # the rest of Alice's tasks are not measured
            scheduler.stop()
            await worker
            position = await kiln.db.aread(_position, [first, second], submitted, second)
    return Outcome(seconds, position)


def claims_per_second(claims: int) -> float:
    """Claims of 8 tasks (each given back after) with two users' five batches each."""
    with tempfile.TemporaryDirectory() as folder:
        db = Database.open(f"sqlite:///{folder}/kiln.db")
        try:
            for name in ("alice", "bob"):
                owner = db.write(add_user, name)[0].id
                for _ in range(5):
                    resolved = resolve_tasks(_spec(name, 200), default_backend="p")
                    new = NewBatch(
                        name=name, source="api", max_attempts=3, tasks=resolved, owner_id=owner
                    )
                    db.write(create_batch, new)
            started = time.perf_counter()
            for _ in range(claims):
                got = db.write(claim_tasks, "bench", {"p": 8}, 30.0, None)
                db.write(release_tasks, "bench", [t.id for t in got])
            return claims / (time.perf_counter() - started)
        finally:
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=2000, help="Alice's tasks")
    parser.add_argument("--small", type=int, default=10, help="Bob's tasks")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds a task")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--claims", type=int, default=500, help="claims timed at the end")
    args = parser.parse_args()
    quiet_logs()
    fair = asyncio.run(run(args.big, args.small, args.latency, args.slots))
    with queue_order():
        fifo = asyncio.run(run(args.big, args.small, args.latency, args.slots))
    ideal = args.latency + args.small * args.latency / (args.slots / 2)
    ahead = int(min(MAX_PREFETCH, max(1, args.slots * PREFETCH_SECONDS / args.latency)))
    bound = 2 * args.small + args.slots + ahead
    print(
        f"fairness: alice {args.big} tasks, then bob {args.small}; placeholder "
        f"{args.latency:g} s a task, {args.slots} slots"
    )
    print(f"bob's ideal under fair share:   {ideal:7.2f} s   (half the slots, after one task)")
    print(
        f"fair share:                     {fair.seconds:7.2f} s   ratio to ideal "
        f"{fair.seconds / ideal:6.2f}   (target <= ~2)   done at completion {fair.position}"
        f" (bound {bound})"
    )
    print(
        f"queue order (before, same run): {fifo.seconds:7.2f} s   ratio to ideal "
        f"{fifo.seconds / ideal:6.2f}   done at completion {fifo.position}"
    )
    print(f"fair share / queue order:       {fair.seconds / fifo.seconds:7.3f}")
    fair_claims = claims_per_second(args.claims)
    with queue_order():
        fifo_claims = claims_per_second(args.claims)
    print(
        f"claim of 8 tasks, 2 users x 5 batches: fair {fair_claims:6.0f}/s, queue order "
        f"{fifo_claims:6.0f}/s, ratio {fair_claims / fifo_claims:.2f}"
    )


if __name__ == "__main__":
    main()
