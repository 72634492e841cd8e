"""Regenerate: chosen tasks run again, succeeded ones too; earlier images kept as history.

And the credits policy ``[credits] refund_failed``. Real databases (SQLite and
PostgreSQL), real files, the real scheduler on the placeholder backend. "The
generator was fixed" between two runs is a second ``Kiln`` on the same data
whose placeholder no longer rejects the failing prompts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.credits import balance
from pixelkiln.db.events import events_after
from pixelkiln.db.records import ImageQuery, count_images, delete_image, search_images
from pixelkiln.db.tables import credit_ledger, tasks
from pixelkiln.db.tasks import images_by_task, list_images, list_tasks
from pixelkiln.db.users import add_user
from pixelkiln.exceptions import InvalidStateError, NotFoundError, SpecError
from pixelkiln.models import BatchStatus, EventType, Task, TaskStatus
from pixelkiln.service import LOCAL, Caller, Submission
from pixelkiln.specs import parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

STORY = {f"s{i}": f"storyboard shot {i}" for i in range(1, 7)} | {
    "s3": "storyboard shot 3 FLAKY",
    "s5": "storyboard shot 5 FLAKY",
}


def _storyboard(**top: Any) -> Submission:
    spec = parse_batch(
        {
            "name": "storyboard",
            "defaults": {"width": 64, "height": 64},
            # storyboard items: each id is its task's key, the template makes the prompt
            "template": "{shot}",
            "items": [{"id": k, "shot": p} for k, p in STORY.items()],
            **top,
        }
    )
    return Submission(spec)


@contextlib.asynccontextmanager
async def _kiln(
    tmp_path: Path, database_url: str, *, reject: str = "FLAKY", **credits: Any
) -> AsyncIterator[Kiln]:
    """An installation on the test's database; its placeholder rejects prompts with ``reject``.

    Credits are on (2 an image); ``fail_rate`` 1 when ``reject`` is "ALL" (every try fails).
    """
    backend: dict[str, Any] = {"name": "placeholder", "type": "placeholder", "concurrency": 4}
    if reject == "ALL":
        backend["fail_rate"] = 1.0
    else:
        backend["options"] = {"reject_if_prompt_contains": reject}
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        credits={"enabled": True, "per_image": 2, **credits},
        backends=[backend],
    )
    async with Kiln(settings) as kiln:
        yield kiln


async def _user(kiln: Kiln, credits: int) -> Caller:
    user = (await kiln.db.awrite(add_user, "ann", credits=credits))[0]
    return Caller(user)


async def _balance(kiln: Kiln, caller: Caller) -> int:
    assert caller.user_id is not None
    return await kiln.db.aread(balance, caller.user_id)


async def _tasks(kiln: Kiln, batch_id: int) -> dict[str, Task]:
    return {t.key: t for t in await kiln.db.aread(list_tasks, batch_id)}


async def _run_storyboard(tmp_path: Path, database_url: str) -> tuple[int, Caller]:
    """The storyboard run once: s3 and s5 fail (refunded); the owner had 100 credits."""
    async with _kiln(tmp_path, database_url) as kiln:
        ann = await _user(kiln, 100)
        made = await service.submit(kiln.service, ann, _storyboard())
        await kiln.run_until_done([made.batch_id])
        batch = await kiln.db.aread(get_batch, made.batch_id)
        assert batch.status == BatchStatus.PARTIAL and batch.counts.failed == 2
        assert await _balance(kiln, ann) == 100 - 12 + 4
    return made.batch_id, ann


def _charges(conn: Connection, user_id: int) -> list[tuple[int, str, str]]:
    query = select(credit_ledger.c.delta, credit_ledger.c.reason, credit_ledger.c.note)
    query = query.where(credit_ledger.c.user_id == user_id).order_by(credit_ledger.c.id)
    return [(r.delta, r.reason, r.note or "") for r in conn.execute(query)]


async def test_regenerating_a_failed_and_a_succeeded_task_keeps_the_old_image_as_history(
    tmp_path: Path, database_url: str
) -> None:
    batch_id, ann = await _run_storyboard(tmp_path, database_url)
    async with _kiln(tmp_path, database_url, reject="NEVER") as kiln:  # the generator was fixed
        before = await _tasks(kiln, batch_id)
        old = (await kiln.db.aread(images_by_task, batch_id))[before["s2"].id]
        count = await service.regenerate(kiln.service, ann, batch_id, keys=["s3", "s2"])
        assert count == 2
        assert await _balance(kiln, ann) == 92 - 4  # charged like a retry: one image each
        assert (await kiln.db.aread(get_batch, batch_id)).status == BatchStatus.QUEUED
        await kiln.run_until_done([batch_id])

        batch = await kiln.db.aread(get_batch, batch_id)
        assert batch.status == BatchStatus.PARTIAL  # s5 still failed
        assert (batch.counts.succeeded, batch.counts.failed, batch.counts.images) == (5, 1, 5)
        tasks = await _tasks(kiln, batch_id)
        assert {k: t.run for k, t in tasks.items()} == {f"s{i}": 0 for i in range(1, 7)} | {
            "s2": 1,
            "s3": 1,
        }
        current = await kiln.db.aread(images_by_task, batch_id)
        new_s2, new_s3 = current[tasks["s2"].id], current[tasks["s3"].id]
        assert [(i.run, i.superseded) for i in new_s2 + new_s3] == [(1, False), (1, False)]
        assert new_s2[0].path.endswith("_0002_0_r1.png") and new_s2[0].id != old[0].id
        assert old[0].path.endswith("_0002_0.png")

        everything = await kiln.db.aread(images_by_task, batch_id, True)
        history = everything[tasks["s2"].id]
        assert [(i.id, i.run, i.superseded) for i in history] == [
            (old[0].id, 0, True),
            (new_s2[0].id, 1, False),
        ]
        assert kiln.storage.absolute(old[0].path).read_bytes()  # the old file is kept
        # the seeds were drawn at random: the new run draws again (the same seed would
        # make the same picture); tasks not regenerated keep theirs
        assert tasks["s2"].params["seed"] != before["s2"].params["seed"]
        assert new_s2[0].sha256 != old[0].sha256
        assert tasks["s1"].params["seed"] == before["s1"].params["seed"]
        assert len(await kiln.db.aread(list_images, batch_id)) == 5
        assert len(await kiln.db.aread(list_images, batch_id, True)) == 6
        assert await kiln.db.aread(count_images, ImageQuery(batch_id=batch_id), owner_id=None) == 5
        found = await kiln.db.aread(
            search_images, ImageQuery(batch_id=batch_id, history=True), owner_id=None, limit=50
        )
        assert len(found) == 6
        assert (
            await kiln.db.aread(
                count_images, ImageQuery(batch_id=batch_id, history=True), owner_id=None
            )
            == 6
        )

        # nothing failed this time: no refund; the ledger names the regenerate
        entries = await kiln.db.aread(_charges, ann.user_id)
        assert entries[-1] == (-4, "charge", "regenerate of 2 task(s)")
        assert await _balance(kiln, ann) == 88
        # the batch ended twice: a `done` event for each end
        events = await kiln.db.aread(events_after, 0, batch_id=batch_id)
        assert [e.data["summary"]["succeeded"] for e in events if e.type == EventType.DONE] == [
            4,
            5,
        ]


async def test_replace_deletes_the_earlier_images_rows_and_files(
    tmp_path: Path, database_url: str
) -> None:
    batch_id, ann = await _run_storyboard(tmp_path, database_url)
    async with _kiln(tmp_path, database_url) as kiln:
        tasks = await _tasks(kiln, batch_id)
        old = (await kiln.db.aread(images_by_task, batch_id))[tasks["s1"].id][0]
        await service.regenerate(kiln.service, ann, batch_id, keys=["s1"], replace=True)
        # until the new run succeeds the old image is still the task's image
        assert [i.id for i in await kiln.db.aread(list_images, batch_id)].count(old.id) == 1
        await kiln.run_until_done([batch_id])

        every = await kiln.db.aread(list_images, batch_id, True)
        assert old.id not in {i.id for i in every} and len(every) == 4
        assert not kiln.storage.absolute(old.path).exists()
        s1 = [i for i in every if i.task_id == tasks["s1"].id]
        assert [(i.run, i.superseded) for i in s1] == [(1, False)]
        assert kiln.storage.absolute(s1[0].path).exists()
        assert (await kiln.db.aread(get_batch, batch_id)).counts.images == 4

        # the mark is spent: a later regenerate without replace keeps history again
        await service.regenerate(kiln.service, ann, batch_id, task_ids=[tasks["s1"].id])
        await kiln.run_until_done([batch_id])
        s1_all = (await kiln.db.aread(images_by_task, batch_id, True))[tasks["s1"].id]
        assert [(i.run, i.superseded) for i in s1_all] == [(1, True), (2, False)]
        # deleting a history image leaves the count of current images alone
        await kiln.db.awrite(delete_image, s1_all[0].id)
        assert (await kiln.db.aread(get_batch, batch_id)).counts.images == 4


async def test_a_new_run_that_fails_leaves_the_earlier_images_current_and_is_refunded(
    tmp_path: Path, database_url: str
) -> None:
    batch_id, ann = await _run_storyboard(tmp_path, database_url)
    async with _kiln(tmp_path, database_url, reject="ALL") as kiln:
        s4 = (await _tasks(kiln, batch_id))["s4"]
        await service.regenerate(kiln.service, ann, batch_id, keys=["s4"])
        assert await _balance(kiln, ann) == 92 - 2
        await kiln.run_until_done([batch_id])
        after = (await _tasks(kiln, batch_id))["s4"]
        assert (after.status, after.run) == (TaskStatus.FAILED, 1)
        images = (await kiln.db.aread(images_by_task, batch_id))[s4.id]
        assert [(i.run, i.superseded) for i in images] == [(0, False)]
        assert (await kiln.db.aread(get_batch, batch_id)).counts.images == 4
        assert await _balance(kiln, ann) == 92  # refunded: the default policy


async def test_unknown_busy_and_unnamed_tasks_are_refused_and_nothing_changes(
    tmp_path: Path, database_url: str
) -> None:
    async with _kiln(tmp_path, database_url) as kiln:
        ann = await _user(kiln, 100)
        made = await service.submit(kiln.service, ann, _storyboard())
        ctx, batch_id = kiln.service, made.batch_id
        with pytest.raises(NotFoundError, match=r"no task with key 'nope', 'zz'"):
            await service.regenerate(ctx, ann, batch_id, keys=["s1", "nope", "zz"])
        with pytest.raises(NotFoundError, match="no task with id 999999"):
            await service.regenerate(ctx, ann, batch_id, task_ids=[999999])
        with pytest.raises(InvalidStateError, match="s1, s2 are still pending or running"):
            await service.regenerate(ctx, ann, batch_id, keys=["s2", "s1"])
        with pytest.raises(SpecError):
            await service.regenerate(ctx, ann, batch_id)
        with pytest.raises(NotFoundError):  # someone else's batch
            other = Caller((await kiln.db.awrite(add_user, "bob", credits=9))[0])
            await service.regenerate(ctx, other, batch_id, keys=["s1"])
        assert await _balance(kiln, ann) == 100 - 12
        assert {t.run for t in (await _tasks(kiln, batch_id)).values()} == {0}

        await kiln.run_until_done([batch_id])
        await service.regenerate(ctx, LOCAL, batch_id, keys=["s1"])  # the owner pays
        assert await _balance(kiln, ann) == 100 - 12 + 4 - 2
        # one finished, one queued again: refused whole
        with pytest.raises(InvalidStateError, match="s1 are still pending"):
            await service.regenerate(ctx, ann, batch_id, keys=["s1", "s2"])
        assert (await _tasks(kiln, batch_id))["s2"].run == 0


async def test_refund_failed_false_keeps_a_failed_task_s_charge_and_refunds_cancelled(
    tmp_path: Path, database_url: str
) -> None:
    async with _kiln(tmp_path, database_url, refund_failed=False) as kiln:
        ann = await _user(kiln, 100)
        made = await service.submit(kiln.service, ann, _storyboard())
        await kiln.run_until_done([made.batch_id])
        assert await _balance(kiln, ann) == 100 - 12  # the two failures are not refunded
        # a retry is charged again, and its failure kept again
        await service.retry(kiln.service, ann, made.batch_id)
        await kiln.run_until_done([made.batch_id])
        assert await _balance(kiln, ann) == 100 - 12 - 4

        queued = await service.submit(kiln.service, ann, _storyboard())
        assert await _balance(kiln, ann) == 100 - 28
        await service.cancel(kiln.service, ann, queued.batch_id)
        assert await _balance(kiln, ann) == 100 - 16  # cancelled: refunded in full
        reasons = [r for _, r, _ in await kiln.db.aread(_charges, ann.user_id)]
        assert reasons == ["grant", "charge", "charge", "charge", "refund"]


async def test_an_asked_for_seed_is_kept_by_a_regenerate(tmp_path: Path, database_url: str) -> None:
    spec = parse_batch({"name": "fixed", "tasks": [{"key": "k", "prompt": "a fox", "seed": 7}]})
    async with _kiln(tmp_path, database_url) as kiln:
        made = await service.submit(kiln.service, LOCAL, Submission(spec))
        await kiln.run_until_done([made.batch_id])
        await service.regenerate(kiln.service, LOCAL, made.batch_id, keys=["k"])
        await kiln.run_until_done([made.batch_id])
        [task] = (await _tasks(kiln, made.batch_id)).values()
        assert (task.run, task.params["seed"]) == (1, 7)
        assert "seed_drawn" not in task.params


async def test_a_free_regenerate_then_cancel_refunds_nothing_of_the_earlier_run(
    tmp_path: Path, database_url: str
) -> None:
    """A task holds what its current run was charged: a regenerate that costs nothing
    (credits since switched off, or the owner's own key) leaves nothing to refund, and
    the images of the earlier run are not paid back."""
    batch_id, ann = await _run_storyboard(tmp_path, database_url)
    async with _kiln(tmp_path, database_url, enabled=False) as kiln:
        assert await _balance(kiln, ann) == 92
        await service.regenerate(kiln.service, ann, batch_id, keys=["s1", "s3"])
        await service.cancel(kiln.service, ann, batch_id)
        assert await _balance(kiln, ann) == 92
        keys = ("s1", "s3")
        costs = select(tasks.c.cost).where(tasks.c.batch_id == batch_id, tasks.c.key.in_(keys))
        assert set(await kiln.db.aread(lambda conn: conn.execute(costs).scalars().all())) == {0}
