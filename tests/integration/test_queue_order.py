"""The queue order a user sets is the order the scheduler claims in, on both databases.

A reorder permutes the caller's listed batches among the places (priority, rank) they
already hold (``pixelkiln.service.queue``): other users' batches keep theirs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pixelkiln.app import Kiln
from pixelkiln.cli import app
from pixelkiln.db.batches import get_batch
from pixelkiln.db.leases import claim_tasks
from pixelkiln.db.queue import lock_queue
from pixelkiln.db.tasks import list_tasks
from pixelkiln.db.users import add_user
from pixelkiln.exceptions import (
    InvalidStateError,
    InvalidValueError,
    NotFoundError,
    PermissionDeniedError,
)
from pixelkiln.service import LOCAL, Caller, Submission, cancel, submit
from pixelkiln.service import queue as queues
from pixelkiln.specs import parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _settings(tmp_path: Path, database_url: str) -> Any:
    """One task at a time everywhere: the order tasks start in is the claim order."""
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        scheduler={"concurrency": 1},
        backends=[{"name": "placeholder", "type": "placeholder", "concurrency": 1}],
    )


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    async with Kiln(_settings(tmp_path, database_url), engine=False) as opened:
        yield opened


async def _user(kiln: Kiln, name: str, *, admin: bool = False) -> Caller:
    user, _ = await kiln.db.awrite(add_user, name, is_admin=admin)
    return Caller(user)


async def _batch(
    kiln: Kiln, caller: Caller, name: str, *, tasks: int = 2, priority: int = 0
) -> int:
    spec = parse_batch(
        {
            "name": name,
            "priority": priority,
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"{name} {i}"} for i in range(tasks)],
        }
    )
    # as the installation on the owner's behalf: only admins may give a priority above 0
    sub = Submission(spec, owner_id=caller.user_id)
    return (await submit(kiln.service, LOCAL, sub)).batch_id


async def _claim_order(kiln: Kiln) -> list[int]:
    """The batches of one claim of every pending task, in the order they were claimed."""
    claimed = await kiln.db.awrite(claim_tasks, "w1", {"placeholder": 1000}, 30.0, None)
    return list(dict.fromkeys(t.batch_id for t in claimed))


async def test_the_scheduler_claims_in_the_new_order_around_other_users(kiln: Kiln) -> None:
    alice, bob = await _user(kiln, "alice"), await _user(kiln, "bob")
    a1 = await _batch(kiln, alice, "a1")
    b1 = await _batch(kiln, bob, "b1")
    a2 = await _batch(kiln, alice, "a2")
    a3 = await _batch(kiln, alice, "a3")

    moved = await queues.reorder(kiln.service, alice, [a3, a1, a2])
    assert moved == 3
    mine = await queues.queue(kiln.service, alice)
    assert [b.id for _, b in mine.numbered()] == [a3, a1, a2]
    assert [p for p, _ in mine.numbered()] == [1, 2, 3]
    # a3 took a1's place, ahead of bob's batch; a1 and a2 took the places after it
    assert await _claim_order(kiln) == [a3, b1, a1, a2]


async def test_priorities_move_with_places_and_nobody_is_passed(kiln: Kiln) -> None:
    alice, bob = await _user(kiln, "alice"), await _user(kiln, "bob")
    low = await _batch(kiln, alice, "low")
    middle = await _batch(kiln, bob, "middle", priority=3)
    high = await _batch(kiln, alice, "high", priority=5)
    assert [b.id for b in (await queues.queue(kiln.service, LOCAL)).batches] == [high, middle, low]

    await queues.reorder(kiln.service, alice, [low, high])
    # low took high's place (priority 5, before bob's); high the place low held
    assert (await kiln.db.aread(get_batch, low)).priority == 5
    assert (await kiln.db.aread(get_batch, high)).priority == 0
    assert await _claim_order(kiln) == [low, middle, high]


async def test_listing_some_batches_permutes_only_those(kiln: Kiln) -> None:
    alice = await _user(kiln, "alice")
    a, b, c, d = [await _batch(kiln, alice, n, tasks=1) for n in "abcd"]
    assert await queues.reorder(kiln.service, alice, [d, b]) == 2  # a swap of b and d
    assert await _claim_order(kiln) == [a, d, c, b]


async def test_move_to_top_and_bottom(kiln: Kiln) -> None:
    alice, bob = await _user(kiln, "alice"), await _user(kiln, "bob")
    a, b = await _batch(kiln, alice, "a", tasks=1), await _batch(kiln, alice, "b", tasks=1)
    other = await _batch(kiln, bob, "other", tasks=1)
    c = await _batch(kiln, alice, "c", tasks=1)
    await queues.move(kiln.service, alice, c, top=True)
    assert [x.id for x in (await queues.queue(kiln.service, alice)).batches] == [c, a, b]
    await queues.move(kiln.service, alice, c, top=False)
    await queues.move(kiln.service, alice, a, top=False)
    assert [x.id for x in (await queues.queue(kiln.service, alice)).batches] == [b, c, a]
    assert await _claim_order(kiln) == [b, c, other, a]  # bob's kept the third place


async def test_bad_reorders_say_why_and_move_nothing(kiln: Kiln) -> None:
    alice, bob = await _user(kiln, "alice"), await _user(kiln, "bob")
    a, b = await _batch(kiln, alice, "a"), await _batch(kiln, alice, "b")
    theirs = await _batch(kiln, bob, "theirs")
    ended = await _batch(kiln, alice, "ended")
    await cancel(kiln.service, alice, ended)
    before = await _places(kiln)

    with pytest.raises(NotFoundError, match=f"no batch of yours with id {theirs}, 999"):
        await queues.reorder(kiln.service, alice, [b, theirs, a, 999])
    # a batch that ended since the page read the queue is left out, the others move
    assert await queues.reorder(kiln.service, alice, [b, ended, a]) == 2
    assert await queues.reorder(kiln.service, alice, [a, b]) == 2
    with pytest.raises(InvalidValueError, match=f"batch {a} is listed more than once"):
        await queues.reorder(kiln.service, alice, [a, b, a])
    with pytest.raises(PermissionDeniedError):
        await queues.reorder(kiln.service, alice, [a, b], all_users=True)
    with pytest.raises(InvalidStateError):
        await queues.move(kiln.service, alice, ended, top=True)
    with pytest.raises(NotFoundError):
        await queues.move(kiln.service, bob, a, top=True)
    assert await _places(kiln) == before


async def test_an_admin_reorders_every_users_batches_only_when_asked(kiln: Kiln) -> None:
    root, alice = await _user(kiln, "root", admin=True), await _user(kiln, "alice")
    bob = await _user(kiln, "bob")
    a, b = await _batch(kiln, alice, "a"), await _batch(kiln, bob, "b")
    with pytest.raises(NotFoundError):  # not root's own
        await queues.reorder(kiln.service, root, [b, a])
    await queues.reorder(kiln.service, root, [b, a], all_users=True)
    assert await _claim_order(kiln) == [b, a]


async def _places(kiln: Kiln) -> list[tuple[int, Any]]:
    def read(tx: Any) -> list[tuple[int, Any]]:
        return [(p.id, p.place) for p in lock_queue(tx, None)]

    return await kiln.db.awrite(read)


async def test_tasks_start_in_the_new_order_when_the_scheduler_runs(
    tmp_path: Path, database_url: str
) -> None:
    """End to end: the real scheduler, one task at a time, runs batches as reordered."""
    async with Kiln(_settings(tmp_path, database_url)) as kiln:
        alice, bob = await _user(kiln, "alice"), await _user(kiln, "bob")
        first = await _batch(kiln, alice, "first", tasks=1)
        theirs = await _batch(kiln, bob, "theirs", tasks=1)
        last = await _batch(kiln, alice, "last", tasks=1)
        await queues.reorder(kiln.service, alice, [last, first])
        await kiln.run_until_done()
        started = {}
        for batch_id in (first, theirs, last):
            (task,) = await kiln.db.aread(list_tasks, batch_id)
            started[batch_id] = task.started_at
        assert sorted(started, key=lambda b: started[b]) == [last, theirs, first]


async def test_concurrent_reorders_leave_every_place_held_once(
    tmp_path: Path, database_url: str
) -> None:
    """Two installations on one database reorder overlapping sets at once: each reorder
    is one transaction, so the places stay a permutation of those there were."""
    settings = _settings(tmp_path, database_url)
    async with Kiln(settings, engine=False) as one, Kiln(settings, engine=False) as two:
        alice = await _user(one, "alice")
        ids = [await _batch(one, alice, f"b{i}", tasks=1) for i in range(8)]
        before = sorted(place for _, place in await _places(one))

        async def shuffle(kiln: Kiln, seed: int) -> None:
            for round_ in range(15):
                subset = ids[(seed + round_) % 3 :: 2]
                order = subset[round_ % len(subset) :] + subset[: round_ % len(subset)]
                await queues.reorder(kiln.service, alice, order)

        await asyncio.gather(shuffle(one, 0), shuffle(two, 1))
        after = await _places(one)
        assert sorted(place for _, place in after) == before
        assert sorted(batch_id for batch_id, _ in after) == sorted(ids)


def test_kiln_queue_list_and_move(tmp_path: Path) -> None:
    """The CLI is the installation: it lists and moves every user's batches."""
    config = tmp_path / "kiln.toml"
    config.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n')

    async def three() -> list[int]:
        async with Kiln(make_settings(tmp_path / "data"), engine=False) as kiln:
            alice = await _user(kiln, "alice")
            return [await _batch(kiln, alice, name, tasks=1) for name in ("one", "two", "three")]

    one, _, three_ = asyncio.run(three())
    cli = CliRunner()
    moved = cli.invoke(app, ["queue", "move", "three", "--top", "--config", str(config)])
    assert moved.exit_code == 0, moved.output
    assert f"Batch {three_} is now number 1" in moved.output
    moved = cli.invoke(app, ["queue", "move", str(one), "--bottom", "--config", str(config)])
    assert f"Batch {one} is now number 3" in moved.output
    listed = cli.invoke(app, ["queue", "list", "--json", "--config", str(config)])
    assert [(r["position"], r["name"]) for r in json.loads(listed.output)] == [
        (1, "three"),
        (2, "two"),
        (3, "one"),
    ]
    nowhere = cli.invoke(app, ["queue", "move", "two", "--config", str(config)])
    assert nowhere.exit_code == 2 and "--top or --bottom" in nowhere.output
    unknown = cli.invoke(app, ["queue", "move", "404", "--top", "--config", str(config)])
    assert unknown.exit_code == 2 and "no batch 404" in unknown.output
