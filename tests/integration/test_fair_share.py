"""Fair share (db.fair), decided in the claim, on SQLite and PostgreSQL.

Among tasks of equal priority, users take turns in proportion to ``users.share`` and
a user's batches take turns; priority still comes first. Assertions are on counts and
on the order of completions, never on durations.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pixelkiln.app import Kiln
from pixelkiln.cli import app
from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.leases import ClaimedTask, claim_tasks
from pixelkiln.db.tables import tasks
from pixelkiln.db.tasks import record_outcomes
from pixelkiln.db.users import add_user, set_share
from pixelkiln.models import BatchStatus, TaskResult, TaskStatus
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage
from tests.conftest import make_settings

WANT = "placeholder"


def _batch(db: Database, owner: int | None, n: int, *, priority: int = 0) -> int:
    spec = parse_batch({"name": f"b{owner}", "tasks": [{"prompt": f"p{i}"} for i in range(n)]})
    resolved = resolve_tasks(spec, default_backend=WANT)
    new = NewBatch(
        name="b", source="api", max_attempts=3, tasks=resolved, owner_id=owner, priority=priority
    )
    return db.write(create_batch, new)


def _user(db: Database, name: str, share: float = 1.0) -> int:
    user, _ = db.write(add_user, name, share=share)
    return user.id


def _claim(db: Database, n: int, owner: str = "w1") -> list[ClaimedTask]:
    return db.write(claim_tasks, owner, {WANT: n}, 30.0, None)


def _finish(db: Database, done: list[ClaimedTask], owner: str = "w1") -> None:
    results = []
    for task in done:
        image = StoredImage(f"images/{task.batch_id}/{task.id}.png", 64, 64, 10, "0" * 64)
        results.append(TaskResult(task, [(image, 1)], 0.1))
    db.write(record_outcomes, owner, results, [])


def test_shares_two_to_one_give_two_to_one_of_the_starts(db: Database) -> None:
    """A runner with 6 slots, finishing its oldest task and refilling the slot."""
    alice, bob = _user(db, "alice", share=2), _user(db, "bob")
    batch_of = {_batch(db, alice, 300): "alice", _batch(db, bob, 300): "bob"}
    running = _claim(db, 6)
    assert Counter(batch_of[t.batch_id] for t in running) == {"alice": 4, "bob": 2}
    starts: Counter[str] = Counter()
    for _ in range(90):
        _finish(db, running[:1])
        got = _claim(db, 1)
        starts.update(batch_of[t.batch_id] for t in got)
        running = running[1:] + got
    assert starts["alice"] + starts["bob"] == 90
    assert abs(starts["alice"] - 60) <= 2, starts


def test_a_share_changed_at_run_time_weighs_the_next_claims(db: Database) -> None:
    alice, bob = _user(db, "alice"), _user(db, "bob")
    batch_of = {_batch(db, alice, 50): "alice", _batch(db, bob, 50): "bob"}
    first = _claim(db, 4)
    assert Counter(batch_of[t.batch_id] for t in first) == {"alice": 2, "bob": 2}
    db.write(set_share, bob, 3.0)
    # bob runs 2 (2/3 per share), alice 2 (2 per share): the next 4 are all bob's, making
    # the counts 2 and 6, his three shares to her one
    more = _claim(db, 4)
    assert Counter(batch_of[t.batch_id] for t in more) == {"bob": 4}


def test_a_small_batch_is_not_starved_by_a_large_one(db: Database) -> None:
    """Alice's 2,000 tasks hold 4 slots; bob's 10 arrive and finish in the next few dozen."""
    alice, bob = _user(db, "alice"), _user(db, "bob")
    big = _batch(db, alice, 2000)
    running = _claim(db, 4)
    for _ in range(8):  # alice alone: every slot hers
        _finish(db, running[:1])
        running = running[1:] + _claim(db, 1)
    assert {t.batch_id for t in running} == {big}
    small = _batch(db, bob, 10)
    finished: list[int] = []
    while db.read(get_batch, small).status is not BatchStatus.COMPLETED:
        assert len(finished) < 100, "bob's batch is starved"
        _finish(db, running[:1])
        finished.append(running[0].batch_id)
        running = running[1:] + _claim(db, 1)
    # bob gets every slot that frees until he runs as many as alice: his ten finish within
    # the first 10 × 2 + 4 completions after he submitted, not after alice's 2,000
    assert finished.count(small) == 10
    assert len(finished) <= 10 * 2 + 4, finished


def test_priority_comes_before_shares(db: Database) -> None:
    alice, bob = _user(db, "alice", share=100), _user(db, "bob")
    mine = _batch(db, alice, 20)
    urgent = _batch(db, bob, 5, priority=5)
    got = _claim(db, 8)
    # bob's five first, whatever the shares; alice's take the rest
    assert Counter(t.batch_id for t in got) == {urgent: 5, mine: 3}
    assert [t.batch_id for t in got[:5]] == [urgent] * 5


def test_local_batches_count_as_one_user_and_a_users_batches_take_turns(db: Database) -> None:
    alice = _user(db, "alice")
    cli_one, cli_two = _batch(db, None, 20), _batch(db, None, 20)
    hers = _batch(db, alice, 20)
    got = Counter(t.batch_id for t in _claim(db, 8))
    # two users (local and alice), four tasks each: a turn of local's first batch
    assert got == {hers: 4, cli_one: 4}
    # then local's other batch has the fewest running: its turn
    assert Counter(t.batch_id for t in _claim(db, 8)) == {hers: 4, cli_two: 4}
    # all even again: the queue order breaks the ties (local's first batch, then alice)
    assert Counter(t.batch_id for t in _claim(db, 4)) == {cli_one: 2, hers: 2}


def test_a_batch_with_nothing_for_the_backend_gives_its_turn_away(db: Database) -> None:
    """Fewer tasks than its turn (here: 2): the shortfall is shared out again."""
    alice, bob = _user(db, "alice"), _user(db, "bob")
    few, many = _batch(db, alice, 2), _batch(db, bob, 20)
    got = Counter(t.batch_id for t in _claim(db, 10))
    assert got == {few: 2, many: 8}


def test_running_tasks_of_a_batch_without_pending_ones_still_count(db: Database) -> None:
    """Alice's first batch is all claimed; her running tasks still weigh against her."""
    alice, bob = _user(db, "alice"), _user(db, "bob")
    _batch(db, alice, 4)
    assert len(_claim(db, 4)) == 4
    later, theirs = _batch(db, alice, 10), _batch(db, bob, 10)
    got = Counter(t.batch_id for t in _claim(db, 6))
    assert got == {theirs: 5, later: 1}  # bob catches up to alice's 4, then they alternate


# -- the real scheduler, two installations on one database ------------------------------------


async def _until(condition: Callable[[], Awaitable[bool]], what: str, deadline: float) -> None:
    """Wait for ``condition`` (checked every 20 ms) until ``deadline`` seconds have passed."""
    give_up = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _engine_settings(tmp_path: Path, database_url: str) -> Any:
    backend = {"name": WANT, "type": WANT, "concurrency": 2, "latency": 0.25}
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        scheduler={"concurrency": 2},
        backends=[backend],
    )


def _spec(name: str, n: int) -> Any:
    return parse_batch(
        {
            "name": name,
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"{name} {i}"} for i in range(n)],
        }
    )


def _completions(conn: Any, batch_ids: list[int], after: float) -> list[int]:
    query = (
        select(tasks.c.batch_id)
        .where(
            tasks.c.batch_id.in_(batch_ids),
            tasks.c.status == TaskStatus.SUCCEEDED,
            tasks.c.finished_at > after,
        )
        .order_by(tasks.c.finished_at, tasks.c.id)
    )
    return list(conn.execute(query).scalars())


@pytest.mark.anyio
async def test_two_workers_serve_a_second_users_small_batch_within_its_fair_time(
    tmp_path: Path, database_url: str
) -> None:
    """Two schedulers (2 slots each) on one database: alice's 2,000 tasks run when bob's
    10 arrive; bob's finish within the first 10 × 2 + slots + claimed-ahead completions."""
    settings = _engine_settings(tmp_path, database_url)
    async with Kiln(settings) as one, Kiln(settings) as two:
        alice = (await one.db.awrite(add_user, "alice"))[0].id
        bob = (await one.db.awrite(add_user, "bob"))[0].id
        big = await one.submit(_spec("big", 2000), owner_id=alice)
        workers = [asyncio.create_task(k.new_scheduler().run()) for k in (one, two)]
        try:

            async def alice_going() -> bool:
                return (await one.db.aread(get_batch, big)).counts.succeeded >= 8

            await _until(alice_going, "alice's batch to run", 60)
            small = await two.submit(_spec("small", 10), owner_id=bob)
            submitted = (await one.db.aread(get_batch, small)).created_at

            async def bob_done() -> bool:
                batch = await one.db.aread(get_batch, small)
                return batch.status is BatchStatus.COMPLETED

            await _until(bob_done, "bob's batch to finish", 60)
            await one.cancel(big)
        finally:
            for kiln in (one, two):
                kiln.scheduler.stop()
            await asyncio.gather(*workers)
        order = await one.db.aread(_completions, [big, small], submitted)
        # bob did not wait for alice's end: most of hers were still to run, then cancelled
        assert (await one.db.aread(get_batch, big)).counts.cancelled > 1000
    last = max(i for i, batch_id in enumerate(order) if batch_id == small) + 1
    # alice's when bob came: 4 slots, and at most 4 tasks claimed ahead (a slot's worth per
    # worker at 0.25 s a task)
    assert order.count(small) == 10
    assert last <= 10 * 2 + 4 + 4, order[:last]


def test_kiln_users_share(tmp_path: Path) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n')
    cli = CliRunner()
    added = cli.invoke(app, ["users", "add", "alice", "--share", "2", "--config", str(config)])
    assert added.exit_code == 0, added.output
    changed = cli.invoke(app, ["users", "share", "alice", "0.5", "--config", str(config)])
    assert changed.exit_code == 0 and "share of 'alice': 0.5" in changed.output
    listed = cli.invoke(app, ["users", "list", "--config", str(config)])
    assert "share" in listed.output and "0.5" in listed.output
    for bad in ("0", "1e9", "nan"):
        refused = cli.invoke(app, ["users", "share", "alice", bad, "--config", str(config)])
        assert refused.exit_code == 2 and "above 0 and at most 1000" in refused.output, bad
    nobody = cli.invoke(app, ["users", "share", "bob", "2", "--config", str(config)])
    assert nobody.exit_code == 2 and "no user 'bob'" in nobody.output
