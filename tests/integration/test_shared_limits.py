"""Limits that hold across processes: several schedulers (separate owners, separate Database
objects, as separate processes have) on one database and one fake WebUI.

The fake counts the generations it runs at once itself, so what is asserted is what a
GPU box owner sees, not what pixelkiln believes it sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from pixelkiln.app import Kiln
from pixelkiln.backends.pool import ServerPool, pool_of
from pixelkiln.config import Settings
from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.server_health import servers_down
from pixelkiln.db.settings_store import CONCURRENCY, set_setting
from pixelkiln.db.slots import GLOBAL, SlotWant, exchange, slots_held
from pixelkiln.db.tables import rate_buckets, server_health, server_slots
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.engine.shared_limits import REFRESH, SharedLimits, SlotExchange, server_key
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI, wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio
TXT2IMG = "/sdapi/v1/txt2img"


class CountingWebUI(FakeSDWebUI):
    """A fake WebUI that counts the generations it runs at once, and when each started."""

    def __init__(self, **kwargs: Any) -> None:
        self.now = 0  #: generations running now
        self.peak = 0  #: the most that ever ran at once
        self.starts: list[float] = []  #: time.time() of each generation's start
        self._count_lock = threading.Lock()
        super().__init__(**kwargs)

    async def generating(self, interrupted: asyncio.Event | None = None) -> bool:
        with self._count_lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.starts.append(time.time())
        try:
            return await super().generating(interrupted)
        finally:
            with self._count_lock:
                self.now -= 1


@pytest.fixture
def webui() -> Iterator[CountingWebUI]:
    with CountingWebUI(latency=0.02) as server:
        yield server


def _settings(tmp_path: Path, database_url: str, *urls: str, **backend: Any) -> Settings:
    generator = {"name": "webui", "type": "sdwebui", "urls": list(urls), "concurrency": 2}
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[{**generator, **backend}],
        scheduler={"concurrency": 4},
    )


def _spec(count: int, name: str = "t") -> Any:
    return parse_batch(
        {
            "name": name,
            "defaults": {"width": 64, "height": 64, "backend": "webui"},
            "tasks": [{"prompt": f"{name} {i}", "key": f"{name}{i}"} for i in range(count)],
        }
    )


async def _run_together(kilns: list[Kiln], batch_ids: list[int]) -> None:
    await asyncio.gather(*(k.run_until_done(batch_ids) for k in kilns))


def _all_succeeded_once(db: Database, batch_id: int, count: int) -> None:
    batch = db.read(get_batch, batch_id)
    tasks = db.read(list_tasks, batch_id)
    assert batch.status == BatchStatus.COMPLETED
    assert [t.status for t in tasks] == [TaskStatus.SUCCEEDED] * count
    assert len(db.read(list_images, batch_id)) == count


async def test_two_schedulers_never_send_a_server_more_than_its_slots(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui.url)
    async with Kiln(settings) as a, Kiln(settings) as b:
        batch_id = await a.submit(_spec(24))
        webui.hold()  # generations stay in flight until released
        run = asyncio.create_task(_run_together([a, b], [batch_id]))
        await wait_until(lambda: webui.held == 2)
        # both schedulers started two tasks each (4 want the server's 2 slots), and the
        # two beyond the slots were refused in the database, not merely not yet sent
        await wait_until(lambda: a.scheduler is not None and b.scheduler is not None)
        await wait_until(lambda: _generating(a) == 2 and _generating(b) == 2)
        await wait_until(lambda: any(_refused(k) for k in (a, b)))
        assert (webui.held, webui.peak) == (2, 2)
        webui.release()
        await run
        _all_succeeded_once(a.db, batch_id, 24)
    assert len(webui.received(TXT2IMG)) == 24  # each task sent exactly once
    assert webui.peak == 2


def _generating(kiln: Kiln) -> int:
    assert kiln.scheduler is not None
    return kiln.scheduler.status().generating.get("webui", 0)


def _refused(kiln: Kiln) -> bool:
    pool = pool_of(kiln.engine().backends["webui"])
    assert pool is not None
    return any(s.full_until > 0 for s in pool.servers)


async def test_slots_of_a_dead_holder_come_back_once_their_lease_lapsed(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui.url)
    key = server_key("webui", webui.url)
    async with Kiln(settings) as kiln:
        now = time.time()
        rows = [  # slot 0: a live process's; slot 1: a killed one's, its lease lapsed
            {"server": key, "slot": 0, "holder": "live:1:a", "expires_at": now + 3600},
            {"server": key, "slot": 1, "holder": "dead:2:b", "expires_at": now - 1},
        ]
        kiln.db.write(lambda tx: tx.conn.execute(insert(server_slots), rows))
        batch_id = await kiln.submit(_spec(6))
        await kiln.run_until_done([batch_id])
        _all_succeeded_once(kiln.db, batch_id, 6)
        held = kiln.db.read(slots_held, key, time.time())
    assert webui.peak == 1  # the live holder's slot stayed its own
    assert held == {0: "live:1:a"}  # the lapsed slot was taken, used and given back


async def test_rpm_holds_across_two_schedulers(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    rpm, count = 600, 12  # a start every 0.1 s
    settings = _settings(tmp_path, database_url, webui.url, rpm=rpm, concurrency=4)
    async with Kiln(settings) as a, Kiln(settings) as b:
        batch_id = await a.submit(_spec(count))
        before = time.time()
        await _run_together([a, b], [batch_id])
        _all_succeeded_once(a.db, batch_id, count)
        tat = a.db.read(lambda c: c.execute(select(rate_buckets.c.tat)).scalar_one())
    interval = 60 / rpm
    # every start was reserved in the one shared bucket (two local limiters: no row at all)
    assert tat >= before + count * interval
    # and the server saw them spaced: two limiters of their own would each send 10 a second
    starts = sorted(webui.starts)
    window = 0.5
    busiest = max(sum(1 for t in starts if s <= t < s + window) for s in starts)
    assert busiest <= window / interval + 2  # + burst 1, + 1 for arrival jitter


async def test_a_server_one_scheduler_found_down_is_skipped_by_another(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    with FakeSDWebUI() as bad:
        bad.faults.hang_rate = 1.0  # every generation hangs: only a timeout tells
        options = {"failure_threshold": 1, "open_seconds": 60.0, "max_open_seconds": 60.0}
        settings = _settings(
            tmp_path, database_url, bad.url, webui.url, timeout=0.5, options=options
        )
        async with Kiln(settings) as a:
            first = await a.submit(_spec(4, "a"))
            await a.run_until_done([first])
            _all_succeeded_once(a.db, first, 4)
            recorded = a.db.read(lambda c: c.execute(select(server_health)).all())
        assert [r.server for r in recorded] == [server_key("webui", bad.url)]
        sent = len(bad.received(TXT2IMG))
        assert sent >= 1  # a's timeouts (one per slot at most: both may go before the first)
        async with Kiln(settings) as b:
            second = await b.submit(_spec(6, "b"))
            await b.run_until_done([second])
            _all_succeeded_once(b.db, second, 6)
            pool = pool_of(b.engine().backends["webui"])
            assert pool is not None and not pool.servers[0].up
        assert len(bad.received(TXT2IMG)) == sent  # b sent it nothing: no timeout of its own


async def test_the_global_concurrency_an_admin_stored_holds_across_schedulers(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui.url, concurrency=4)
    async with Kiln(settings) as a, Kiln(settings) as b:
        a.db.write(_store_concurrency, 1)
        batch_id = await a.submit(_spec(8))
        await _run_together([a, b], [batch_id])
        _all_succeeded_once(a.db, batch_id, 8)
        held = a.db.read(slots_held, GLOBAL, 0.0)
    assert webui.peak == 1  # each process alone would have run 4 at once
    assert held == {}  # every global slot given back


def _store_concurrency(tx: Tx, value: int) -> None:
    set_setting(tx, CONCURRENCY, value)


async def test_without_shared_limits_nothing_is_written(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui.url)
    settings.scheduler.shared_limits = False
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(_spec(4))
        await kiln.run_until_done([batch_id])
        _all_succeeded_once(kiln.db, batch_id, 4)
        rows = kiln.db.read(lambda c: c.execute(select(server_slots)).all())
    assert rows == []


async def test_a_server_found_back_by_one_process_is_closed_in_the_others(
    db: Database,
) -> None:
    urls = ["http://gpu1:7860", "http://gpu2:7860"]
    a, b = (ServerPool("sd", urls, concurrency=2) for _ in range(2))
    shared_a, shared_b = (
        SharedLimits(db, owner, {"sd": _Backend(pool)}, lease_seconds=30.0)
        for owner, pool in (("a:1:x", a), ("b:2:y", b))
    )
    shared_a.attach()
    a._open(a.servers[0])  # a found gpu1 down (as its failures would)
    await wait_until(lambda: db.read(servers_down, [server_key("sd", urls[0])]))
    await shared_b.refresh(time.time())
    assert [s.up for s in b.servers] == [False, True]
    assert b.servers[0].reported
    a._close(a.servers[0])  # a's probe found it back
    await wait_until(lambda: not db.read(servers_down, [server_key("sd", urls[0])]))
    await shared_b.refresh(time.time() + REFRESH)
    assert [s.up for s in b.servers] == [True, True]
    await shared_a.close()
    await shared_b.close()


class _Backend:
    """Just enough of a backend for pool_of: its pool."""

    def __init__(self, pool: ServerPool) -> None:
        self.pool = pool


async def test_a_slot_granted_to_a_take_given_up_meanwhile_is_given_back(
    db: Database,
) -> None:
    slots = SlotExchange(db, "me:1:x", lease_seconds=30.0)
    writer_busy, go_on = threading.Event(), threading.Event()

    def block(tx: Tx) -> None:
        writer_busy.set()
        go_on.wait(30)

    blocked = db.submit(block)  # the take's write waits behind this one
    await wait_until(writer_busy.is_set)
    take = asyncio.create_task(slots.take("srv", 2))
    await wait_until(lambda: slots._writes)  # its write is queued
    take.cancel()
    go_on.set()
    blocked.result(30)
    await slots.settled()
    await slots.settled()  # the give-back its grant caused
    assert slots.held("srv") == 0
    assert db.read(slots_held, "srv", 0.0) == {}


def test_an_exchange_grants_no_more_than_asked_and_only_free_slots(db: Database) -> None:
    until = time.time() + 30
    first = db.write(exchange, "a:1:x", [], [SlotWant("srv", 3, 1)], until, {"srv": 3})
    second = db.write(exchange, "b:2:y", [], [SlotWant("srv", 3, 5)], until)
    third = db.write(exchange, "c:3:z", [("srv", 0)], [SlotWant("srv", 3, 2)], until)
    back = db.write(exchange, "a:1:x", [("srv", 0)], [SlotWant("srv", 3, 2)], until)
    assert (first["srv"].slots, second["srv"].slots) == ([0], [1, 2])
    assert third["srv"].slots == []  # c gave back a slot it does not hold: nothing freed
    assert back["srv"].slots == [0]  # a's own slot, given back first, taken again
    assert db.read(slots_held, "srv", 0.0) == {0: "a:1:x", 1: "b:2:y", 2: "b:2:y"}
