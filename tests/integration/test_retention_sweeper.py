"""The server's retention sweeper: a pass at start-up, again every interval, failures logged
and survived; a companion of every server scheduler, of no ``kiln run``."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import batches
from pixelkiln.engine import retention as sweeper_module
from pixelkiln.engine.housekeeping import server_companions
from pixelkiln.engine.retention import Sweeper
from pixelkiln.exceptions import NotFoundError
from pixelkiln.service.retention import DAY
from pixelkiln.specs import parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def kiln(tmp_path: Path) -> AsyncIterator[Kiln]:
    settings = make_settings(
        tmp_path / "data",
        backends=[{"name": "placeholder", "type": "placeholder"}],
        # a pass every ~0.4 s: the test waits for the second one
        retention={"images_days": 7, "interval_hours": 0.0001},
    )
    async with Kiln(settings) as opened:
        yield opened


async def _old_batch(kiln: Kiln) -> int:
    spec = {"name": "old", "defaults": {"width": 64, "height": 64}, "tasks": [{"prompt": "a"}]}
    batch_id = await kiln.submit(parse_batch(spec))
    await kiln.run_until_done([batch_id])

    def age(tx: Tx) -> None:
        ended = time.time() - 10 * DAY
        tx.conn.execute(update(batches).where(batches.c.id == batch_id).values(finished_at=ended))

    await kiln.db.awrite(age)
    return batch_id


async def _gone(kiln: Kiln, batch_id: int) -> bool:
    try:
        await kiln.service.read(get_batch, batch_id)
    except NotFoundError:
        return True
    return False


async def test_a_failed_pass_is_logged_and_the_next_one_removes_what_is_old(
    kiln: Kiln, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = await _old_batch(kiln)
    real, calls = sweeper_module.sweep, []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("database or disk is full")
        return await real(*args, **kwargs)

    monkeypatch.setattr(sweeper_module, "sweep", flaky)
    sweeper = Sweeper(kiln.service)
    caplog.set_level(logging.INFO, "pixelkiln.retention")
    running = asyncio.create_task(sweeper.run())
    try:
        async with asyncio.timeout(20):  # a deadline, not a timing assertion
            while not await _gone(kiln, batch_id):
                await asyncio.sleep(0.05)
    finally:
        await sweeper.finish()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert sweeper.passes >= 2 and len(calls) >= 2
    assert "the pass failed" in caplog.text and "database or disk is full" in caplog.text
    assert "retention: removed 1 batch(es)" in caplog.text


async def test_finish_stops_the_sweeper_between_passes(kiln: Kiln) -> None:
    sweeper = Sweeper(kiln.service)
    running = asyncio.create_task(sweeper.run())
    async with asyncio.timeout(20):
        while sweeper.passes < 1:
            await asyncio.sleep(0.02)
    await sweeper.finish()
    async with asyncio.timeout(20):
        await running  # run() returns on its own once finish() was called


async def test_every_server_scheduler_sweeps(kiln: Kiln) -> None:
    companions = server_companions(kiln.service)
    assert [c.name for c in companions if isinstance(c, Sweeper)] == ["retention"]


async def test_a_pass_removes_what_a_crash_left_half_written(kiln: Kiln) -> None:
    # a SIGKILL between a temp file's write and its rename, or between a batch folder's
    # rename for deletion and its removal, leaves these; young ones may be writes under way
    root = Path(kiln.settings.storage.data_dir)
    old, young = time.time() - 2 * sweeper_module.LEFTOVER_SECONDS, time.time()
    made = {
        "images/7/.0001.png.tmp": old,
        "thumbs/7/.3_256.webp.123-456.tmp": old,
        "images/.deleted-9-abc/0001.png": old,
        "images/8/.0002.png.tmp": young,  # a write under way
        "images/8/0002.png": old,  # a stored image, however old
        "images/8/.hidden": old,  # not one of ours: left alone
    }
    for relative, moment in made.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (moment, moment))
    os.utime(root / "images/.deleted-9-abc", (old, old))
    await Sweeper(kiln.service).sweep_once()
    left = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {"images/7/.0001.png.tmp", "thumbs/7/.3_256.webp.123-456.tmp"}.isdisjoint(left)
    assert not (root / "images/.deleted-9-abc").exists()
    assert {"images/8/.0002.png.tmp", "images/8/0002.png", "images/8/.hidden"} <= left
