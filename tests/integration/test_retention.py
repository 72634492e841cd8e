"""Retention on real databases (SQLite and PostgreSQL) and real files: what the rules name,
what goes, what never does. Batches are aged by moving their timestamps back."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import insert, select, update

from pixelkiln import service
from pixelkiln.api.media import thumbnail
from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Tx
from pixelkiln.db.records import Asset, batch_images, record_asset
from pixelkiln.db.retention import delete_batch_step
from pixelkiln.db.tables import assets, batches, events, runs, tasks, webhook_deliveries
from pixelkiln.engine.intake import asset_record
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import BatchStatus
from pixelkiln.service import LOCAL
from pixelkiln.service.retention import DAY, apply, plan, sweep
from pixelkiln.specs import parse_batch
from pixelkiln.storage import read_input_image
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _settings(tmp_path: Path, database_url: str, **rules: float) -> Any:
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[
            {
                "name": "placeholder",
                "type": "placeholder",
                "concurrency": 4,
                "options": {"reject_if_prompt_contains": "REJECT"},
            }
        ],
        retention={"events_days": 0, "images_days": 0, "uploads_days": 0, **rules},
    )


async def _opened(tmp_path: Path, database_url: str, **rules: float) -> Kiln:
    kiln = Kiln(_settings(tmp_path, database_url, **rules))
    await kiln.open()
    return kiln


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    """Whole batches after 7 days, events after 3, unused uploads after 30."""
    opened = await _opened(tmp_path, database_url, images_days=7, events_days=3, uploads_days=30)
    yield opened
    await opened.aclose()


def _picture(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, "PNG")
    return out.getvalue()


async def _run(kiln: Kiln, name: str, *prompts: str, init: Path | None = None) -> int:
    """A batch run to its end; its tasks use ``init`` as their init image when given."""
    extra = {"init_image": str(init)} if init else {}
    spec = parse_batch(
        {
            "name": name,
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": p, "key": f"k{i}", **extra} for i, p in enumerate(prompts)],
        }
    )
    batch_id = await kiln.submit(spec, source="cli")
    await kiln.run_until_done([batch_id])
    return batch_id


async def _age(kiln: Kiln, batch_id: int, days: float) -> None:
    """The batch ended ``days`` ago (and was made a little before)."""
    ended = time.time() - days * DAY

    def move(tx: Tx) -> None:
        values = {"finished_at": ended, "created_at": ended - 60}
        tx.conn.execute(update(batches).where(batches.c.id == batch_id).values(values))

    await kiln.db.awrite(move)


async def _upload(kiln: Kiln, colour: str, *, owner: int | None = None, days: float = 0) -> Asset:
    """An uploaded picture as the API stores one, made ``days`` ago (row and file)."""
    image = read_input_image(_picture(colour))
    path = kiln.storage.write_asset(image)
    asset = await kiln.db.awrite(record_asset, owner, asset_record(image, path, f"{colour}.png"))
    if days:
        made = time.time() - days * DAY

        def move(tx: Tx) -> None:
            tx.conn.execute(update(assets).where(assets.c.id == asset.id).values(created_at=made))

        await kiln.db.awrite(move)
        os.utime(kiln.storage.absolute(path), (made, made))
    return asset


async def _exists(kiln: Kiln, batch_id: int) -> bool:
    try:
        await kiln.service.read(get_batch, batch_id)
    except NotFoundError:
        return False
    return True


def _count(kiln: Kiln, table: Any, *where: Any) -> int:
    def counted(conn: Any) -> int:
        return len(conn.execute(select(table.c.id).where(*where)).all())

    return kiln.db.read(counted)


async def _thumbnail(kiln: Kiln, batch_id: int) -> Path:
    """The API's cached thumbnail of the batch's first image, made now."""
    image = (await kiln.service.read(batch_images, batch_id))[0].image
    return kiln.storage.absolute(await asyncio.to_thread(thumbnail, kiln.storage, image, 128))


# -- whole batches ----------------------------------------------------------------------------


async def test_dry_run_names_old_finished_batches_then_apply_removes_rows_and_files(
    kiln: Kiln,
) -> None:
    old = await _run(kiln, "old", "a moth", "a fox")
    recent = await _run(kiln, "recent", "a heron")
    await _age(kiln, old, 10)
    await _age(kiln, recent, 2)
    thumb = await _thumbnail(kiln, old)
    old_images = [
        kiln.storage.absolute(i.image.path) for i in await kiln.service.read(batch_images, old)
    ]
    assert thumb.exists() and all(p.exists() for p in old_images)

    found = await plan(kiln.service, LOCAL)
    assert [(b.id, b.name, b.tasks, b.images) for b in found.batches] == [(old, "old", 2, 2)]
    assert found.files == 3 and found.bytes > 0  # two images and a thumbnail
    # the events rule names the recent batch (3 days), not the one that goes whole
    assert [b.id for b in found.events] == []
    assert await _exists(kiln, old) and all(p.exists() for p in old_images)  # nothing yet

    done = await apply(kiln.service, LOCAL, found)
    assert (done.batches, done.tasks, done.images, done.files) == (1, 2, 2, 3)
    assert done.bytes == found.bytes and done.kept == []
    assert not await _exists(kiln, old) and await _exists(kiln, recent)
    assert not any(p.exists() for p in old_images) and not thumb.exists()
    assert _count(kiln, events, events.c.batch_id == old) == 0
    assert _count(kiln, tasks, tasks.c.batch_id == old) == 0
    assert len(await kiln.service.read(batch_images, recent)) == 1
    assert (await plan(kiln.service, LOCAL)).empty  # a second pass finds nothing


async def test_unfinished_batches_are_never_touched(kiln: Kiln) -> None:
    queued = await kiln.submit(parse_batch({"name": "waits", "tasks": [{"prompt": "a"}]}))
    await _age(kiln, queued, 30)  # even with a finished_at far back (a retried batch's)
    found = await plan(kiln.service, LOCAL)
    assert found.batches == () and found.events == ()
    await apply(kiln.service, LOCAL, found)
    assert (await kiln.service.read(get_batch, queued)).status == BatchStatus.QUEUED


async def test_a_batch_retried_after_the_plan_is_left_alone(kiln: Kiln) -> None:
    batch_id = await _run(kiln, "half", "a moth", "REJECT this")
    await _age(kiln, batch_id, 10)
    found = await plan(kiln.service, LOCAL)
    assert [b.id for b in found.batches] == [batch_id]

    await service.retry(kiln.service, LOCAL, batch_id)  # queued again, its images kept
    done = await apply(kiln.service, LOCAL, found)
    assert done.batches == 0 and done.kept == [(batch_id, "queued now")]
    batch = await kiln.service.read(get_batch, batch_id)
    assert batch.status == BatchStatus.QUEUED and batch.counts.total == 2
    images = await kiln.service.read(batch_images, batch_id)
    assert len(images) == 1 and kiln.storage.absolute(images[0].image.path).exists()


async def test_a_big_batch_goes_in_steps_each_checking_it_again(kiln: Kiln) -> None:
    batch_id = await _run(kiln, "big", *(f"p{i}" for i in range(5)))
    await _age(kiln, batch_id, 10)
    ended = (await kiln.service.read(get_batch, batch_id)).finished_at
    assert ended is not None

    first = await kiln.db.awrite(delete_batch_step, batch_id, ended, chunk=2)
    assert (first.tasks, first.images, first.done) == (2, 2, False)
    assert first.events > 0 and _count(kiln, events, events.c.batch_id == batch_id) == 0
    assert _count(kiln, tasks, tasks.c.batch_id == batch_id) == 3  # the rest waits
    steps = [await kiln.db.awrite(delete_batch_step, batch_id, ended, chunk=2) for _ in range(2)]
    assert [(s.tasks, s.done) for s in steps] == [(2, False), (1, True)]
    assert not await _exists(kiln, batch_id)
    again = await kiln.db.awrite(delete_batch_step, batch_id, ended, chunk=2)
    assert again.kept == "gone"  # another pass got there first: nothing to do


async def test_two_passes_racing_remove_each_batch_once(kiln: Kiln) -> None:
    ids = [await _run(kiln, f"b{i}", "a", "b") for i in range(3)]
    for batch_id in ids:
        await _age(kiln, batch_id, 10)
    first, second = await asyncio.gather(sweep(kiln.service, LOCAL), sweep(kiln.service, LOCAL))
    assert first.batches + second.batches == 3
    assert first.tasks + second.tasks == 6
    assert not any([await _exists(kiln, i) for i in ids])
    assert not list(kiln.storage.absolute("images").iterdir())


async def test_a_run_goes_once_its_batches_are_gone(kiln: Kiln) -> None:
    gone, kept = await _run(kiln, "p1", "a"), await _run(kiln, "p2", "b")
    await _age(kiln, gone, 10)
    ended = time.time() - 10 * DAY

    def make_runs(tx: Tx) -> list[int]:
        made = []
        for name in ("emptied", "holding"):
            row = {"name": name, "kind": "projects", "source": "cli", "status": "completed"}
            row |= {"config": {}, "created_at": ended, "finished_at": ended}
            made.append(tx.conn.execute(insert(runs).returning(runs.c.id), row).scalar_one())
        tx.conn.execute(update(batches).where(batches.c.id == gone).values(run_id=made[0]))
        tx.conn.execute(update(batches).where(batches.c.id == kept).values(run_id=made[1]))
        return made

    emptied, holding = await kiln.db.awrite(make_runs)
    found = await plan(kiln.service, LOCAL)
    assert found.runs == (emptied,)
    assert (await apply(kiln.service, LOCAL, found)).runs == 1
    assert _count(kiln, runs) == 1 and _count(kiln, runs, runs.c.id == holding) == 1


async def test_a_batch_of_a_run_still_going_stays(kiln: Kiln) -> None:
    """A project run knows what it has done by its batches: deleting a finished project's
    batch while the run goes on would run that project again."""
    old = await _run(kiln, "project001", "a")
    await _age(kiln, old, 10)

    def make_run(tx: Tx) -> int:
        row = {"name": "nightly", "kind": "projects", "source": "cli", "status": "running"}
        row |= {"config": {}, "created_at": time.time()}
        run_id: int = tx.conn.execute(insert(runs).returning(runs.c.id), row).scalar_one()
        tx.conn.execute(update(batches).where(batches.c.id == old).values(run_id=run_id))
        return run_id

    run_id = await kiln.db.awrite(make_run)
    assert (await plan(kiln.service, LOCAL)).batches == ()
    await kiln.db.awrite(
        lambda tx: tx.conn.execute(
            update(runs).where(runs.c.id == run_id).values(status="completed")
        )
    )
    found = await plan(kiln.service, LOCAL)
    assert [b.id for b in found.batches] == [old]


# -- events only ------------------------------------------------------------------------------


async def test_the_events_rule_keeps_tasks_images_and_files(
    tmp_path: Path, database_url: str
) -> None:
    kiln = await _opened(tmp_path, database_url, events_days=5)  # images_days 0: off
    try:
        old, recent = await _run(kiln, "old", "a", "b"), await _run(kiln, "recent", "c")
        await _age(kiln, old, 40)
        await _age(kiln, recent, 1)
        found = await plan(kiln.service, LOCAL)
        assert found.batches == () and [b.id for b in found.events] == [old]
        done = await apply(kiln.service, LOCAL, found)
        assert done.event_batches == 1 and done.events == found.events[0].events > 0
        assert (done.batches, done.files) == (0, 0)
        assert _count(kiln, events, events.c.batch_id == old) == 0
        assert _count(kiln, events, events.c.batch_id == recent) > 0
        images = await kiln.service.read(batch_images, old)
        assert len(images) == 2 and all(
            kiln.storage.absolute(i.image.path).exists() for i in images
        )
        assert (await kiln.service.read(get_batch, old)).status == BatchStatus.COMPLETED
    finally:
        await kiln.aclose()


async def test_rules_off_plan_nothing(tmp_path: Path, database_url: str) -> None:
    kiln = await _opened(tmp_path, database_url)
    try:
        old = await _run(kiln, "old", "a")
        await _age(kiln, old, 400)
        found = await plan(kiln.service, LOCAL)
        assert found.off and found.empty
        assert (await apply(kiln.service, LOCAL, found)).batches == 0
        assert await _exists(kiln, old)
    finally:
        await kiln.aclose()


# -- uploads ----------------------------------------------------------------------------------


async def test_an_old_upload_no_task_uses_goes_with_its_file(kiln: Kiln) -> None:
    unused = await _upload(kiln, "red", days=40)
    young = await _upload(kiln, "blue", days=2)
    file = kiln.storage.absolute(unused.path)
    found = await plan(kiln.service, LOCAL)
    assert [u.id for u in found.uploads] == [unused.id] and found.upload_files == (unused.path,)
    done = await apply(kiln.service, LOCAL, found)
    assert done.uploads == 1 and done.files == 1 and not file.exists()
    assert _count(kiln, assets) == 1 and kiln.storage.absolute(young.path).exists()


async def test_an_upload_a_batch_uses_stays_and_so_does_a_shared_file(
    kiln: Kiln, tmp_path: Path
) -> None:
    picture = tmp_path / "in.png"
    picture.write_bytes(_picture("green"))
    old = await _run(kiln, "old", "a", init=picture)
    kept = await _run(kiln, "kept", "b", init=picture)  # the same input: one stored file
    await _age(kiln, old, 10)
    (input_row,) = kiln.db.read(lambda c: c.execute(select(assets)).all())
    await _upload(kiln, "green", days=40)  # stored again: the same row, its file touched now
    os.utime(kiln.storage.absolute(input_row.path), (time.time() - 40 * DAY,) * 2)

    def age_row(tx: Tx) -> None:
        tx.conn.execute(update(assets).values(created_at=time.time() - 40 * DAY))

    await kiln.db.awrite(age_row)
    found = await plan(kiln.service, LOCAL)
    assert [b.id for b in found.batches] == [old] and found.uploads == ()
    await apply(kiln.service, LOCAL, found)
    assert not await _exists(kiln, old) and await _exists(kiln, kept)
    assert kiln.storage.absolute(input_row.path).exists()  # the kept batch's input
    assert _count(kiln, assets) == 1


async def test_a_file_two_owners_share_stays_with_the_newer_row(kiln: Kiln) -> None:
    old = await _upload(kiln, "red", owner=None, days=40)
    newer = await _upload(kiln, "red", owner=7, days=0)  # the same bytes: one file, stored now
    assert old.path == newer.path
    os.utime(kiln.storage.absolute(old.path), (time.time() - 40 * DAY,) * 2)
    found = await plan(kiln.service, LOCAL)
    assert [u.id for u in found.uploads] == [old.id] and found.upload_files == ()
    done = await apply(kiln.service, LOCAL, found)
    assert (done.uploads, done.files) == (1, 0)
    assert kiln.storage.absolute(newer.path).exists()


async def test_an_upload_stored_again_lately_is_not_old(kiln: Kiln) -> None:
    again = await _upload(kiln, "red", days=40)
    await _upload(kiln, "red")  # uploaded again: the same row, its file touched
    assert (await plan(kiln.service, LOCAL)).uploads == ()
    assert kiln.storage.absolute(again.path).exists()


async def test_an_upload_a_batch_takes_after_the_plan_is_kept(kiln: Kiln) -> None:
    upload = await _upload(kiln, "red", days=40)
    found = await plan(kiln.service, LOCAL)
    assert [u.id for u in found.uploads] == [upload.id]
    spec = parse_batch(
        {"name": "late", "tasks": [{"prompt": "x", "init_image": f"asset:{upload.id}"}]}
    )
    await service.submit(kiln.service, LOCAL, service.Submission(spec))
    done = await apply(kiln.service, LOCAL, found)
    assert done.uploads == 0 and kiln.storage.absolute(upload.path).exists()


async def test_a_batch_whose_webhook_is_owed_keeps_its_events(
    tmp_path: Path, database_url: str
) -> None:
    kiln = await _opened(tmp_path, database_url, events_days=5)
    try:
        owed, plain = await _run(kiln, "owed", "a"), await _run(kiln, "plain", "b")
        for batch_id in (owed, plain):
            await _age(kiln, batch_id, 40)

        def owe(tx: Tx) -> None:
            row = {"batch_id": owed, "event_id": 10_000, "url": "http://127.0.0.1:9/hook"}
            row |= {"status": "pending", "created_at": tx.now}
            tx.conn.execute(insert(webhook_deliveries), row)

        await kiln.db.awrite(owe)
        found = await plan(kiln.service, LOCAL)
        assert [b.id for b in found.events] == [plain]
    finally:
        await kiln.aclose()
