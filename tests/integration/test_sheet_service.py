"""Contact sheets through the service, on SQLite and PostgreSQL with a real scheduler: each
cell is its task's image, a partial sweep draws placeholders, and a sweep cancelled half
way and retried in a new process draws the same sheet as one that ran straight through."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import update

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import tasks as table
from pixelkiln.db.tasks import images_by_task, list_tasks
from pixelkiln.db.users import User, add_user
from pixelkiln.exceptions import InvalidStateError, InvalidValueError, NotFoundError
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.service import LOCAL, Caller
from pixelkiln.sheets import PLACEHOLDER, Cell, SheetPlan, layout
from pixelkiln.specs import parse_batch
from tests.conftest import make_settings
from tests.sheet_sweeps import SWEEP, mark_sweep, plain_spec

pytestmark = pytest.mark.anyio
SLOW = 600.0  #: tasks on the "slow" backend never end by themselves in a test


def _kiln(tmp_path: Path, database_url: str, slow_latency: float = SLOW) -> Kiln:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        scheduler={"lease_seconds": 120, "concurrency": 32},
        backends=[
            {"name": "placeholder", "type": "placeholder", "concurrency": 4},
            {"name": "slow", "type": "placeholder", "concurrency": 9, "latency": slow_latency},
        ],
    )
    return Kiln(settings)


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    async with _kiln(tmp_path, database_url) as opened:
        yield opened


async def _sweep(kiln: Kiln, spec: dict[str, Any], owner: int | None = None) -> int:
    batch_id = await kiln.submit(parse_batch(spec), owner_id=owner)
    await kiln.db.awrite(mark_sweep, batch_id)
    return batch_id


def _png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _geometry() -> Any:
    """The layout of a 3 × 3 sheet of 64 × 64 images (what the service draws)."""
    empty = tuple(tuple(Cell() for _ in range(3)) for _ in range(3))
    columns = tuple(f"cfg_scale={v}" for v in SWEEP["x"]["cfg_scale"])
    rows = tuple(f"sampler={v}" for v in SWEEP["y"]["sampler"])
    return layout(SheetPlan("sweep · model=m1", columns, rows, empty, (64, 64)))


async def test_each_cell_is_its_tasks_image_and_each_z_value_its_own_sheet(kiln: Kiln) -> None:
    batch_id = await _sweep(kiln, plain_spec())
    await kiln.run_until_done([batch_id])
    refs = await service.list_sheets(kiln.service, LOCAL, batch_id)
    assert [(r.z, r.label, r.group, r.groups) for r in refs] == [
        ("m1", "model=m1", 1, 1),
        ("m2", "model=m2", 1, 1),
    ]
    box = _geometry()
    tasks = await kiln.db.aread(list_tasks, batch_id)
    images = await kiln.db.aread(images_by_task, batch_id)
    for z, value in enumerate(("m1", "m2")):
        sheet = _png(await service.sheet_png(kiln.service, LOCAL, batch_id, z=value))
        assert sheet.size == (box.width, box.height)
        for r in range(3):
            for c in range(3):
                task = tasks[z * 9 + r * 3 + c]
                assert task.axes == {
                    "x": {"cfg_scale": SWEEP["x"]["cfg_scale"][c]},
                    "y": {"sampler": SWEEP["y"]["sampler"][r]},
                    "z": {"model": value},
                }
                stored = Image.open(kiln.storage.absolute(images[task.id][0].path)).convert("RGB")
                expected = stored.resize((256, 256), Image.Resampling.LANCZOS)  # 64 px fitted
                assert sheet.crop(box.cell_box(r, c)).tobytes() == expected.tobytes(), (z, r, c)
    first = await service.sheet_png(kiln.service, LOCAL, batch_id)
    assert first == await service.sheet_png(kiln.service, LOCAL, batch_id, z="m1")


async def test_a_partial_sweep_draws_placeholders_and_a_retry_fills_them_in(
    tmp_path: Path, database_url: str
) -> None:
    """Half the cells on a backend that never answers: cancelled half way, the sheet shows
    grey cells there; retried in a new process (where that backend answers), the sheet
    equals the one of the same spec run straight through."""
    spec = plain_spec(backend_of=lambda i: "slow" if i % 2 else "placeholder")
    async with _kiln(tmp_path, database_url) as first:
        halted = await _sweep(first, spec)
        runner = asyncio.create_task(first.run_until_done([halted]))
        for _ in range(2000):
            batch = await first.db.aread(get_batch, halted)
            if batch.counts.succeeded == 9 and batch.counts.running == 9:
                break
            await asyncio.sleep(0.02)
        assert (batch.counts.succeeded, batch.counts.running) == (9, 9)
        running = _png(await service.sheet_png(first.service, LOCAL, halted, z="m1"))
        await service.cancel(first.service, LOCAL, halted)
        await asyncio.wait_for(runner, 60)
        cancelled = _png(await service.sheet_png(first.service, LOCAL, halted, z="m1"))
    box = _geometry()
    for r in range(3):
        for c in range(3):
            corner = box.cell_box(r, c)[:2]
            grey = (r * 3 + c) % 2 == 1
            assert (cancelled.getpixel(corner) == PLACEHOLDER) is grey, (r, c)
            assert (running.getpixel(corner) == PLACEHOLDER) is grey, (r, c)
    assert running.tobytes() != cancelled.tobytes()  # "running" then "cancelled"

    async with _kiln(tmp_path, database_url, slow_latency=0.0) as second:
        await service.retry(second.service, LOCAL, halted, include_cancelled=True)
        straight = await _sweep(second, spec)
        await second.run_until_done([halted, straight])
        assert (await second.db.aread(get_batch, halted)).status == BatchStatus.COMPLETED
        for z in ("m1", "m2"):
            resumed = await service.sheet_png(second.service, LOCAL, halted, z=z)
            assert resumed == await service.sheet_png(second.service, LOCAL, straight, z=z)
        assert _png(resumed).getpixel(box.cell_box(0, 1)[:2]) != PLACEHOLDER


async def test_several_tasks_per_cell_make_one_sheet_each(kiln: Kiln) -> None:
    """Two prompts swept over the same axes: the k-th task of each cell is sheet k."""
    one, two = plain_spec(), plain_spec()
    spec = {**one, "tasks": [*one["tasks"], *[{**t, "key": f"b{t['key']}"} for t in two["tasks"]]]}
    for task in spec["tasks"][18:]:
        task["prompt"] += ", at night"
    batch_id = await kiln.submit(parse_batch(spec))

    def mark_twice(tx: Tx) -> None:
        mark_sweep(tx, batch_id)
        tasks = list_tasks(tx.conn, batch_id)
        for early, late in zip(tasks[:18], tasks[18:], strict=True):
            tx.conn.execute(update(table).where(table.c.id == late.id).values(axes=early.axes))

    await kiln.db.awrite(mark_twice)
    refs = await service.list_sheets(kiln.service, LOCAL, batch_id)
    assert [(r.z, r.group, r.groups) for r in refs] == [
        ("m1", 1, 2),
        ("m1", 2, 2),
        ("m2", 1, 2),
        ("m2", 2, 2),
    ]
    await kiln.run_until_done([batch_id])
    first = await service.sheet_png(kiln.service, LOCAL, batch_id, z="m2", group=1)
    second = await service.sheet_png(kiln.service, LOCAL, batch_id, z="m2", group=2)
    assert first != second
    with pytest.raises(InvalidValueError, match="group must be 1…2"):
        await service.sheet_png(kiln.service, LOCAL, batch_id, z="m2", group=3)


async def test_errors_name_what_is_wrong(kiln: Kiln) -> None:
    plain = await kiln.submit(parse_batch({"name": "plain", "tasks": [{"prompt": "a cat"}]}))
    assert await service.list_sheets(kiln.service, LOCAL, plain) == []
    with pytest.raises(InvalidStateError, match=f"batch {plain} is not a sweep"):
        await service.sheet_png(kiln.service, LOCAL, plain)
    swept = await _sweep(kiln, plain_spec())
    with pytest.raises(InvalidValueError, match=r"'m3' is not a value .*model.*: m1, m2") as err:
        await service.sheet_png(kiln.service, LOCAL, swept, z="m3")
    assert err.value.field == "z"
    user: User = (await kiln.db.awrite(add_user, "eve"))[0]
    with pytest.raises(NotFoundError):
        await service.sheet_png(kiln.service, Caller(user), swept)
    with pytest.raises(NotFoundError):
        await service.list_sheets(kiln.service, Caller(user), swept)
    pending = _png(await service.sheet_png(kiln.service, LOCAL, swept, z="m2"))
    box = _geometry()
    assert all(
        pending.getpixel(box.cell_box(r, c)[:2]) == PLACEHOLDER for r in range(3) for c in range(3)
    )
    statuses = {t.status for t in await kiln.db.aread(list_tasks, swept)}
    assert statuses == {TaskStatus.PENDING}


async def test_a_spec_sweep_over_two_prompts_gives_two_sets_per_z_value(kiln: Kiln) -> None:
    spec = {
        "name": "two",
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": "a fox", "key": "fox"}, {"prompt": "an owl", "key": "owl"}],
        "sweep": {"x": {"seed": [1, 2]}, "z": {"steps": [10, 20]}},
    }
    batch_id = await kiln.submit(parse_batch(spec))
    await kiln.run_until_done([batch_id])
    refs = await service.list_sheets(kiln.service, LOCAL, batch_id)
    assert [(r.z, r.label, r.group, r.groups) for r in refs] == [
        ("10", "steps=10", 1, 2),
        ("10", "steps=10", 2, 2),
        ("20", "steps=20", 1, 2),
        ("20", "steps=20", 2, 2),
    ]
    fox = await service.sheet_png(kiln.service, LOCAL, batch_id, z="20", group=1)
    owl = await service.sheet_png(kiln.service, LOCAL, batch_id, z="20", group=2)
    assert fox != owl
    box = layout(
        SheetPlan(
            "two · steps=20 · set 1 of 2",
            ("seed=1", "seed=2"),
            ("",),
            ((Cell(), Cell()),),
            (64, 64),
        )
    )
    assert _png(fox).size == (box.width, box.height)
