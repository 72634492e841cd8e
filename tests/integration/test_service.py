"""The service layer itself, as every face calls it: real databases, files and scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch, list_batches
from pixelkiln.db.credits import InsufficientCreditsError, balance
from pixelkiln.db.tasks import list_tasks
from pixelkiln.db.users import User, add_user
from pixelkiln.exceptions import (
    IdempotencyKeyReusedError,
    InvalidStateError,
    NotFoundError,
    SpecError,
)
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.service import LOCAL, Caller, ServiceContext, Submission
from pixelkiln.specs import BatchSpec, parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

#: tasks on it run far longer than any test waits: only a wake or a cancel moves them
SLOW = 600.0


def _spec(*prompts: str, backend: str = "placeholder", **top: Any) -> BatchSpec:
    return parse_batch(
        {
            "name": "svc",
            "defaults": {"width": 64, "height": 64, "backend": backend},
            "tasks": [{"prompt": p, "key": f"k{i}"} for i, p in enumerate(prompts, start=1)],
            **top,
        }
    )


def _kiln(tmp_path: Path, database_url: str, **scheduler: Any) -> Kiln:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        credits={"enabled": True, "per_image": 2},
        scheduler={"lease_seconds": 120, **scheduler},
        backends=[
            {
                "name": "placeholder",
                "type": "placeholder",
                "concurrency": 4,
                "options": {"reject_if_prompt_contains": "REJECT"},
            },
            {"name": "slow", "type": "placeholder", "concurrency": 1, "latency": SLOW},
        ],
    )
    return Kiln(settings)


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    async with _kiln(tmp_path, database_url) as opened:
        yield opened


async def _user(kiln: Kiln, name: str, credits: int, *, admin: bool = False) -> Caller:
    user: User = (await kiln.db.awrite(add_user, name, is_admin=admin, credits=credits))[0]
    return Caller(user)


async def _balance(ctx: ServiceContext, caller: Caller) -> int:
    assert caller.user_id is not None
    return await ctx.read(balance, caller.user_id)


async def _until(probe: Callable[[], Awaitable[Any]], wanted: Any) -> None:
    """Wait for ``probe()`` to give ``wanted``: a deadline, not a timing assertion."""
    async with asyncio.timeout(20):
        while await probe() != wanted:
            await asyncio.sleep(0.02)


# -- submit -----------------------------------------------------------------------------------


async def test_submit_charges_the_owner_and_an_idempotent_replay_neither_stores_nor_charges(
    kiln: Kiln,
) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 10)
    sub = Submission(_spec("a", "b"), idempotency_key="job-1", fingerprint="request-1")
    first = await service.submit(ctx, alice, sub)
    assert first.created and await _balance(ctx, alice) == 6  # 2 images × 2 credits
    batch = await ctx.read(get_batch, first.batch_id)
    assert batch.owner_id == alice.user_id and batch.counts.pending == 2

    again = await service.submit(ctx, alice, sub)
    assert again == (first.batch_id, False) and await _balance(ctx, alice) == 6

    other = Submission(_spec("c"), idempotency_key="job-1", fingerprint="request-2")
    with pytest.raises(IdempotencyKeyReusedError):
        await service.submit(ctx, alice, other)
    # the same key is another user's own: it makes their batch
    bob = await _user(kiln, "bob", 10)
    assert (await service.submit(ctx, bob, other)).created
    assert len(await ctx.read(list_batches)) == 2


async def test_a_batch_the_balance_does_not_cover_is_refused_whole(kiln: Kiln) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 5)
    with pytest.raises(InsufficientCreditsError):
        await service.submit(ctx, alice, Submission(_spec("a", "b", "c"), idempotency_key="k"))
    assert await ctx.read(list_batches) == [] and await _balance(ctx, alice) == 5
    # the key was not spent on the refused request
    assert (await service.submit(ctx, alice, Submission(_spec("a"), idempotency_key="k"))).created


async def test_a_user_may_use_only_uploads_and_may_not_raise_priority_or_attempts(
    kiln: Kiln, tmp_path: Path
) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 100)
    local = parse_batch({"name": "x", "tasks": [{"prompt": "p", "init_image": "/etc/passwd"}]})
    with pytest.raises(SpecError) as paths:
        await service.submit(ctx, alice, Submission(local))
    assert [(p.where, p.field) for p in paths.value.problems] == [("task 1", "init_image")]

    greedy = _spec("a", priority=5, max_attempts=50)
    with pytest.raises(SpecError) as limits:
        await service.submit(ctx, alice, Submission(greedy))
    assert {p.field for p in limits.value.problems} == {"priority", "max_attempts"}
    # an admin may do both
    admin = await _user(kiln, "root", 10, admin=True)
    assert (await service.submit(ctx, admin, Submission(greedy))).created
    assert await ctx.read(list_batches, owner_id=alice.user_id) == []


async def test_an_admin_queues_a_batch_for_a_user_who_owns_and_pays_for_it(kiln: Kiln) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 10)
    made = await service.submit(ctx, LOCAL, Submission(_spec("a"), owner_id=alice.user_id))
    assert (await ctx.read(get_batch, made.batch_id)).owner_id == alice.user_id
    assert await _balance(ctx, alice) == 8
    bob = await _user(kiln, "bob", 10)
    with pytest.raises(InvalidStateError):
        await service.submit(ctx, bob, Submission(_spec("a"), owner_id=alice.user_id))


# -- retry ------------------------------------------------------------------------------------


async def test_a_retried_subset_is_charged_again_and_the_rest_stays_failed(kiln: Kiln) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 10)
    made = await service.submit(ctx, alice, Submission(_spec("fine", "REJECT 1", "REJECT 2")))
    await kiln.run_until_done([made.batch_id])
    assert await _balance(ctx, alice) == 8  # 6 charged, the 2 failed tasks refunded
    failed = await ctx.read(list_tasks, made.batch_id, statuses=[TaskStatus.FAILED])
    assert len(failed) == 2

    count = await service.retry(ctx, alice, made.batch_id, task_ids=[failed[0].id])
    assert count == 1 and await _balance(ctx, alice) == 6
    tasks = {t.id: t.status for t in await ctx.read(list_tasks, made.batch_id)}
    assert (tasks[failed[0].id], tasks[failed[1].id]) == (TaskStatus.PENDING, TaskStatus.FAILED)

    # every failed one (here the other), charged the same way
    assert await service.retry(ctx, alice, made.batch_id) == 1
    assert await _balance(ctx, alice) == 4


async def test_a_retry_the_owner_cannot_afford_changes_nothing(kiln: Kiln) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 2)
    made = await service.submit(ctx, alice, Submission(_spec("REJECT")))
    await kiln.run_until_done([made.batch_id])
    spend = Submission(_spec("a"))  # the refund, spent elsewhere
    await service.submit(ctx, alice, spend)
    with pytest.raises(InsufficientCreditsError):
        await service.retry(ctx, LOCAL, made.batch_id)  # the owner pays, whoever asks
    statuses = [t.status for t in await ctx.read(list_tasks, made.batch_id)]
    assert statuses == [TaskStatus.FAILED] and await _balance(ctx, alice) == 0
    with pytest.raises(NotFoundError):  # not bob's batch
        await service.retry(ctx, await _user(kiln, "bob", 10), made.batch_id)


# -- cancel, pause, resume: the database and this process's schedulers -------------------------


async def test_cancel_refunds_and_stops_this_process_s_running_task_now(kiln: Kiln) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 10)
    made = await service.submit(ctx, alice, Submission(_spec("a", "b", backend="slow")))
    assert await _balance(ctx, alice) == 6
    scheduler = kiln.new_scheduler()
    runner = asyncio.create_task(scheduler.run())

    async def generating() -> int:
        return sum(scheduler.status().generating.values())

    try:
        await _until(generating, 1)
        batch = await service.cancel(ctx, alice, made.batch_id)
        assert batch.status == BatchStatus.CANCELLED and batch.counts.cancelled == 2
        # counted in turns of the event loop, not seconds: the scheduler's own lease check
        # (every 2 s) cannot be what stopped the task, only the cancel reaching it
        for _ in range(500):
            if await generating() == 0:
                break
            await asyncio.sleep(0)
        assert await generating() == 0
        assert await _balance(ctx, alice) == 10
    finally:
        scheduler.stop()
        await runner
    with pytest.raises(InvalidStateError):
        await service.cancel(ctx, alice, made.batch_id)


async def test_submit_and_resume_wake_an_idle_scheduler(tmp_path: Path, database_url: str) -> None:
    # an idle scheduler would look again only after a minute: the wake-ups must reach it
    async with _kiln(tmp_path, database_url, poll_interval=60) as kiln:
        ctx = kiln.service
        held = await service.submit(ctx, LOCAL, Submission(_spec("held")))
        paused = await service.pause(ctx, LOCAL, held.batch_id)
        assert paused.status == BatchStatus.PAUSED
        scheduler = kiln.new_scheduler()
        runner = asyncio.create_task(scheduler.run())

        async def status(batch_id: int) -> BatchStatus:
            return (await ctx.read(get_batch, batch_id)).status

        try:
            fresh = await service.submit(ctx, LOCAL, Submission(_spec("fresh")))
            await _until(lambda: status(fresh.batch_id), BatchStatus.COMPLETED)
            assert await status(held.batch_id) == BatchStatus.PAUSED
            resumed = await service.resume(ctx, LOCAL, held.batch_id)
            assert resumed.status == BatchStatus.QUEUED
            await _until(lambda: status(held.batch_id), BatchStatus.COMPLETED)
        finally:
            scheduler.stop()
            await runner


# -- delete -----------------------------------------------------------------------------------


async def test_delete_removes_rows_and_files_and_refuses_what_is_unfinished(kiln: Kiln) -> None:
    ctx, alice = kiln.service, await _user(kiln, "alice", 100)
    done = await service.submit(ctx, alice, Submission(_spec("a", "b")))
    await kiln.run_until_done([done.batch_id])
    folder = kiln.storage.absolute(f"images/{done.batch_id}")
    assert len(list(folder.iterdir())) == 2
    waiting = await service.submit(ctx, alice, Submission(_spec("c", backend="slow")))

    with pytest.raises(NotFoundError):  # not bob's
        await service.delete(ctx, await _user(kiln, "bob", 0), done.batch_id)
    with pytest.raises(InvalidStateError):
        await service.delete(ctx, alice, waiting.batch_id)
    await service.delete(ctx, alice, done.batch_id)

    assert not folder.exists()
    assert not list(folder.parent.glob(".deleted-*"))  # nothing left aside either
    with pytest.raises(NotFoundError):
        await service.batch_page(ctx, alice, done.batch_id)
    page = await service.batch_page(ctx, alice, waiting.batch_id)
    assert [t.prompt for t in page.tasks] == ["c"] and page.task_total == 1
