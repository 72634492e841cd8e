"""Limits that hold across processes: several schedulers (separate owners, separate Database
objects, as separate processes have) on one database and one fake WebUI.

The fake counts the generations it runs at once itself, so what is asserted is what a
GPU box owner sees, not what pixelkiln believes it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, insert, select, update

from pixelkiln.app import Kiln
from pixelkiln.backends.pool import Server, ServerPool, pool_of
from pixelkiln.config import Settings
from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.server_health import record_down, servers_down
from pixelkiln.db.settings_store import CONCURRENCY, set_setting
from pixelkiln.db.slots import GLOBAL, Bucket, SlotWant, ensure_rows, exchange, slots_held
from pixelkiln.db.tables import rate_buckets, server_health, server_slots
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.engine.shared_limits import REFRESH, SharedLimits, SlotExchange, server_key
from pixelkiln.engine.starts import TryStart
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
    key = server_key(webui.url)
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
    # and the server saw them spaced: the k-th start was reserved for before + k intervals
    # at the earliest and a request only ever arrives late, never early, so the k-th arrival
    # comes no sooner (two limiters of their own would each send 10 a second: the 12th by
    # before + 0.5 s). Lateness under load bunches arrivals; it cannot break this bound.
    starts = sorted(webui.starts)
    early = [k for k, t in enumerate(starts) if t < before + k * interval - 0.005]
    assert early == [], (early, [round(t - before, 3) for t in starts])


async def test_a_server_one_scheduler_found_down_is_skipped_by_another(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    with FakeSDWebUI() as gone:
        dead = gone.url  # its port is closed from here on: connections are refused
    options = {"failure_threshold": 1, "open_seconds": 60.0, "max_open_seconds": 60.0}
    settings = _settings(tmp_path, database_url, dead, webui.url, options=options)
    async with Kiln(settings) as a:
        first = await a.submit(_spec(4, "a"))
        await a.run_until_done([first])
        _all_succeeded_once(a.db, first, 4)
        recorded = a.db.read(lambda c: c.execute(select(server_health)).all())
    assert [r.server for r in recorded] == [server_key(dead)]
    async with Kiln(settings) as b:
        second = await b.submit(_spec(6, "b"))
        await b.run_until_done([second])
        _all_succeeded_once(b.db, second, 6)
        pool = pool_of(b.engine().backends["webui"])
        assert pool is not None and not pool.servers[0].up
        # b probed it on a's word (a cheap health check), and sent it no request
        assert pool.servers[0].requests == 0


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
    await wait_until(lambda: db.read(servers_down, [server_key(urls[0])]))
    await shared_b.refresh(time.time())
    assert [s.up for s in b.servers] == [False, True]
    assert b.servers[0].reported
    a._close(a.servers[0])  # a's probe found it back
    await wait_until(lambda: not db.read(servers_down, [server_key(urls[0])]))
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
    await give_up_before_the_answer(db, slots)
    assert slots.held("srv") == 0
    assert db.read(slots_held, "srv", 0.0) == {}


def test_an_exchange_grants_no_more_than_asked_and_only_free_slots(db: Database) -> None:
    until = time.time() + 30
    db.write(ensure_rows, {"srv": 3})
    srv = ("srv", None)
    first = db.write(exchange, "a:1:x", [], [SlotWant("srv", 3, 1)], until)
    second = db.write(exchange, "b:2:y", [], [SlotWant("srv", 3, 5)], until)
    # c gave back a slot it does not hold: nothing freed (c holds none: it now wants one)
    third = db.write(exchange, "c:3:z", [("srv", 0)], [SlotWant("srv", 3, 2)], until)
    back = db.write(exchange, "a:1:x", [("srv", 0)], [SlotWant("srv", 3, 2)], until)
    assert (first[srv].slots, second[srv].slots, third[srv].slots) == ([0], [1, 2], [])
    assert back[srv].slots == []  # a's slot, given back, is not taken again: c wants it
    assert db.write(exchange, "c:3:z", [], [SlotWant("srv", 3, 1)], until)[srv].slots == [0]
    assert db.read(slots_held, "srv", 0.0) == {0: "c:3:z", 1: "b:2:y", 2: "b:2:y"}


def test_a_slot_given_back_goes_to_the_process_that_wants_one(db: Database) -> None:
    until = time.time() + 30
    db.write(ensure_rows, {"srv": 1})
    srv = ("srv", None)
    assert db.write(exchange, "a:1:x", [], [SlotWant("srv", 1, 1)], until)[srv].slots == [0]
    assert db.write(exchange, "b:2:y", [], [SlotWant("srv", 1, 1)], until)[srv].slots == []
    # a gives its slot back and asks again in the same write (its next request): the slot
    # is free but b was refused first, so a waits (before: a took it again, for ever)
    again = db.write(exchange, "a:1:x", [("srv", 0)], [SlotWant("srv", 1, 1)], until)
    assert again[srv].slots == []
    assert db.write(exchange, "c:3:z", [], [SlotWant("srv", 1, 1)], until)[srv].slots == []
    assert db.write(exchange, "b:2:y", [], [SlotWant("srv", 1, 1)], until)[srv].slots == [0]
    # b got it: its want is over; a, refused meanwhile, is next
    assert db.write(exchange, "a:1:x", [], [SlotWant("srv", 1, 1)], until)[srv].slots == []
    turn = db.write(exchange, "b:2:y", [("srv", 0)], [SlotWant("srv", 1, 1)], until)
    assert turn[srv].slots == []
    assert db.write(exchange, "a:1:x", [], [SlotWant("srv", 1, 1)], until)[srv].slots == [0]


def test_processes_waiting_for_a_slot_get_it_in_the_order_they_asked(db: Database) -> None:
    # four workers on a one-slot server: whoever asks again first after a handover must
    # not get turn after turn while another waits (one of four waited 3 s for eleven)
    until = time.time() + 30
    db.write(ensure_rows, {"srv": 1})
    srv = ("srv", None)

    def ask(holder: str, releases: list[tuple[str, int]] | None = None) -> list[int]:
        got = db.write(exchange, holder, releases or [], [SlotWant("srv", 1, 1)], until)
        return list(got[srv].slots)

    assert ask("x:1:x") == [0]
    assert (ask("a:2:a"), ask("b:3:b"), ask("c:4:c")) == ([], [], [])  # in line: a, b, c
    assert ask("x:1:x", [("srv", 0)]) == []  # x gives back and asks again: behind c
    assert (ask("c:4:c"), ask("b:3:b"), ask("x:1:x")) == ([], [], [])  # not their turn
    assert ask("a:2:a") == [0]
    assert ask("a:2:a", [("srv", 0)]) == []  # a, quick to ask again, is last in line
    assert (ask("a:2:a"), ask("c:4:c"), ask("x:1:x")) == ([], [], [])
    assert ask("b:3:b") == [0]
    assert ask("b:3:b", [("srv", 0)]) == []
    assert (ask("x:1:x"), ask("a:2:a"), ask("b:3:b")) == ([], [], [])
    assert ask("c:4:c") == [0]
    assert db.read(slots_held, "srv", 0.0) == {0: "c:4:c"}


def test_a_slot_given_back_and_wanted_again_is_kept_in_one_statement(db: Database) -> None:
    if db.dialect == "mysql":
        pytest.skip("MySQL gives the slot back and takes one again (db.slots._keep)")
    until = time.time() + 30
    db.write(ensure_rows, {"srv": 3})
    srv = ("srv", None)
    assert db.write(exchange, "a:1:x", [], [SlotWant("srv", 3, 2)], until)[srv].slots == [0, 1]
    db.write(exchange, "a:1:x", [("srv", 0)], [], until)  # slot 0 free now
    statements: list[str] = []

    def counted(tx: Tx) -> list[int]:
        with _counting_statements(tx, statements):
            later = until + 10
            return exchange(tx, "a:1:x", [("srv", 1)], [SlotWant("srv", 3, 1)], later)[srv].slots

    # the request's slot is kept for the next (given back and taken: it would have moved to 0)
    assert db.write(counted) == [1]
    assert len(statements) == 1  # not give back, read the line, take
    assert db.read(slots_held, "srv", 0.0) == {1: "a:1:x"}
    lease = select(server_slots.c.expires_at).where(server_slots.c.slot == 1)
    assert db.read(lambda conn: conn.execute(lease).scalar()) == until + 10


def test_a_slot_that_lapsed_and_went_to_another_is_not_kept(db: Database) -> None:
    now = time.time()
    db.write(ensure_rows, {"srv": 1})
    srv = ("srv", None)
    assert db.write(exchange, "a:1:x", [], [SlotWant("srv", 1, 1)], now - 1)[srv].slots == [0]
    assert db.write(exchange, "b:2:y", [], [SlotWant("srv", 1, 1)], now + 30)[srv].slots == [0]
    again = db.write(exchange, "a:1:x", [("srv", 0)], [SlotWant("srv", 1, 1)], now + 30)
    assert again[srv].slots == []  # b holds it now: a's stale give-back keeps nothing
    assert db.read(slots_held, "srv", 0.0) == {0: "b:2:y"}


def test_a_slot_is_not_kept_while_another_process_waits_for_it(db: Database) -> None:
    until = time.time() + 30
    db.write(ensure_rows, {"srv": 1})
    srv = ("srv", None)
    assert db.write(exchange, "a:1:x", [], [SlotWant("srv", 1, 1)], until)[srv].slots == [0]
    # b's want, lapsed: it no longer waits, so a keeps its slot
    assert db.write(exchange, "b:2:y", [], [SlotWant("srv", 1, 1)], until)[srv].slots == []
    lapse = update(server_slots).where(server_slots.c.holder == "b:2:y").values(expires_at=0.0)
    db.write(lambda tx: tx.conn.execute(lapse))
    kept = db.write(exchange, "a:1:x", [("srv", 0)], [SlotWant("srv", 1, 1)], until)
    assert kept[srv].slots == [0]
    # b waits again (live): a's slot, given back, is b's
    assert db.write(exchange, "b:2:y", [], [SlotWant("srv", 1, 1)], until)[srv].slots == []
    gone = db.write(exchange, "a:1:x", [("srv", 0)], [SlotWant("srv", 1, 1)], until)
    assert gone[srv].slots == []
    assert db.write(exchange, "b:2:y", [], [SlotWant("srv", 1, 1)], until)[srv].slots == [0]


def test_an_rpm_start_too_far_ahead_is_not_granted(db: Database) -> None:
    until = time.time() + 30
    bucket = Bucket("slow", interval=30.0)  # rpm 2
    db.write(ensure_rows, {"srv": 4}, ["slow"])
    key = ("srv", "slow")
    first = db.write(exchange, "a:1:x", [], [SlotWant("srv", 4, 3, bucket)], until)[key]
    assert (first.slots, first.delays) == ([0], [0.0])  # the next starts are 30 s, 60 s away
    assert 24.0 < first.wait <= 25.0  # start in 30 s, granted from RPM_AHEAD (5 s) before
    assert db.read(slots_held, "srv", 0.0) == {0: "a:1:x"}  # no slot held idle meanwhile


async def test_a_slot_granted_in_the_turn_its_take_is_cancelled_is_given_back(
    db: Database,
) -> None:
    # the grant is settled, then (same turn, before the taker resumes) the taker is
    # cancelled, as a task timeout firing then would: nobody holds the slot but the exchange
    slots = SlotExchange(db, "me:1:x", lease_seconds=30.0)
    await cancel_as_granted(db, slots)
    assert slots.held("srv") == 0
    assert db.read(slots_held, "srv", 0.0) == {}
    other = SlotExchange(db, "other:2:y", lease_seconds=30.0)
    assert await other.take("srv", 1) == 0.0  # another process gets it
    await other.settled()


class _OthersHold:
    """Shared slots where other processes hold every slot of ``full`` and none elsewhere."""

    recheck = 0.05

    def __init__(self, full: Server) -> None:
        self.full = full
        self.refused = 0

    async def take(self, server: Server) -> float | None:
        if server is self.full:
            self.refused += 1
            return None
        return 0.0

    def retry_in(self, server: Server) -> float:
        return self.recheck

    def give_back(self, server: Server) -> None:
        pass

    def opened(self, server: Server, retry_in: float) -> None:
        pass

    def closed(self, server: Server) -> None:
        pass


async def test_the_finish_time_choice_does_not_wait_for_a_server_others_hold() -> None:
    pool = ServerPool("sd", ["http://fast", "http://slow"], concurrency=1)
    fast, slow = pool.servers
    fast.latency, slow.latency = 0.1, 0.9
    pool.shared = shared = _OthersHold(fast)
    pool.backlog = lambda: 0  # the end of the work: the choice by finish time applies

    async def call(server: Server) -> str:
        return server.url

    async with asyncio.timeout(10):  # it looped for ever asking for the fast one
        assert await pool.run(call) == "http://slow"
    assert shared.refused >= 1


async def test_a_wait_for_a_faster_server_is_bounded_by_the_free_ones_finish() -> None:
    pool = ServerPool("sd", ["http://fast", "http://slow"], concurrency=1)
    fast, slow = pool.servers
    fast.latency, slow.latency = 0.1, 0.9
    pool.backlog = lambda: 0

    async def keep_cooling() -> None:  # 429s keep pushing the fast server's rest ahead
        while True:
            fast.cooldown_until = time.monotonic() + 0.5
            await asyncio.sleep(0.05)

    async def call(server: Server) -> str:
        return server.url

    fast.cooldown_until = time.monotonic() + 0.5
    cooling = asyncio.create_task(keep_cooling())
    try:
        async with asyncio.timeout(10):  # it waited as long as the fast one kept resting
            assert await pool.run(call) == "http://slow"
    finally:
        cooling.cancel()


async def test_waiting_for_a_slot_others_hold_costs_no_attempt_and_no_timeout(
    tmp_path: Path, database_url: str, webui: CountingWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui.url, concurrency=1)
    settings.scheduler.task_timeout = 0.5
    key = server_key(webui.url)
    other = {"server": key, "slot": 0, "holder": "other:1:a", "expires_at": time.time() + 3600}
    async with Kiln(settings) as kiln:
        kiln.db.write(lambda tx: tx.conn.execute(insert(server_slots), [other]))
        batch_id = await kiln.submit(_spec(1))
        run = asyncio.create_task(kiln.run_until_done([batch_id]))
        await wait_until(lambda: kiln.scheduler is not None and _refused(kiln))
        await asyncio.sleep(1.0)  # twice the task timeout, waiting for the slot
        (waiting,) = kiln.db.read(list_tasks, batch_id)
        assert (waiting.status, waiting.attempts) == (TaskStatus.RUNNING, 0)
        kiln.db.write(lambda tx: tx.conn.execute(_free(key)))  # the other gives it back
        await run
        _all_succeeded_once(kiln.db, batch_id, 1)
        (task,) = kiln.db.read(list_tasks, batch_id)
    assert task.attempts == 1  # the one try that went out


def _free(key: str) -> Any:
    return (
        server_slots.update()
        .where(server_slots.c.server == key)
        .values(holder=None, expires_at=None)
    )


async def test_another_process_finding_a_server_down_makes_this_one_probe_it_now(
    db: Database,
) -> None:
    probed: list[str] = []

    async def healthy(url: str) -> None:  # this process's link to it is fine
        probed.append(url)

    urls = ["http://gpu1:7860", "http://gpu2:7860"]
    pool = ServerPool("sd", urls, concurrency=1, health=healthy)
    shared = SharedLimits(db, "b:2:y", {"sd": _Backend(pool)}, lease_seconds=30.0)
    shared.attach()
    # a worker with a bad link recorded gpu1 down, to be probed by it in an hour
    db.write(record_down, server_key(urls[0]), time.time() + 3600, "connect timeout", "a:1:x")
    await shared.refresh(time.time())
    # not skipped for an hour: probed at once, found up, and the record cleared for all
    await wait_until(lambda: probed == [urls[0]] and pool.servers[0].up)
    await wait_until(lambda: not db.read(servers_down, [server_key(urls[0])]))
    await pool.aclose()
    await shared.close()


async def test_a_server_that_answered_here_since_it_was_found_down_is_not_doubted(
    db: Database,
) -> None:
    urls = ["http://gpu1:7860"]
    pool = ServerPool("sd", urls, concurrency=1)  # no health check: a trial request decides
    shared = SharedLimits(db, "b:2:y", {"sd": _Backend(pool)}, lease_seconds=30.0)
    db.write(record_down, server_key(urls[0]), time.time() + 3600, "refused", "a:1:x")
    pool._succeeded(pool.servers[0], 0.1)  # it answered here after a's discovery
    await shared.refresh(time.time())
    assert pool.servers[0].up
    await shared.close()


async def test_a_failed_slot_write_refuses_and_its_give_back_is_sent_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pixelkiln.engine.shared_limits as module

    slots = SlotExchange(db, "me:1:x", lease_seconds=30.0)
    assert await slots.take("srv", 1) == 0.0
    failing = True

    def flaky(tx: Tx, *args: Any) -> Any:
        if failing:
            raise RuntimeError("deadlock detected")  # as the database would answer
        return exchange(tx, *args)

    monkeypatch.setattr(module, "exchange", flaky)
    slots.give_back("srv")
    # a take while writes fail is refused (looked at again later), not an error in the task
    assert await slots.take("other", 1) is None
    assert slots.retry_in("other") > module.RECHECK  # backing off
    await wait_until(lambda: slots._failures >= 1)
    failing = False
    # nothing else happens here (idle): the give-back is sent again by itself
    await wait_until(lambda: db.read(slots_held, "srv", 0.0) == {})
    await slots.settled()


async def cancel_as_granted(
    db: Database, slots: SlotExchange, start: TryStart | None = None
) -> None:
    """Take a slot of "srv" (for ``start``'s try) and cancel the taker in the very turn
    its grant arrives: after the exchange's own callback, before the taker resumes, as a
    task timeout firing then would; returns once the exchange has settled."""
    assert await slots.take("srv", 1) == 0.0  # its rows added: the next take is one write
    slots.give_back("srv")
    await slots.settled()
    loop = asyncio.get_running_loop()
    writer_busy, go_on = threading.Event(), threading.Event()

    def block(tx: Tx) -> None:
        writer_busy.set()
        go_on.wait(30)

    blocked = db.submit(block)
    await wait_until(writer_busy.is_set)
    take = asyncio.create_task(slots.take("srv", 1, start=start))
    await wait_until(lambda: slots._writes)
    (written,) = slots._writes
    queued = threading.Event()

    def cancel_soon(_: object) -> None:  # after the exchange's own callback: same turn
        loop.call_soon_threadsafe(take.cancel)
        queued.set()

    written.add_done_callback(cancel_soon)
    go_on.set()
    blocked.result(30)
    queued.wait(30)  # the loop waits here: grant and cancel reach it in one turn
    with pytest.raises(asyncio.CancelledError):
        await take
    await slots.settled()


async def give_up_before_the_answer(
    db: Database, slots: SlotExchange, start: TryStart | None = None
) -> None:
    """Take 2 slots of "srv" (for ``start``'s try) and cancel the taker while its write
    waits behind another one; returns once the grant and the give-back it caused have
    been written."""
    writer_busy, go_on = threading.Event(), threading.Event()

    def block(tx: Tx) -> None:
        writer_busy.set()
        go_on.wait(30)

    blocked = db.submit(block)  # the take's write waits behind this one
    await wait_until(writer_busy.is_set)
    take = asyncio.create_task(slots.take("srv", 2, start=start))
    await wait_until(lambda: slots._writes)  # its write (and any start mark) is queued
    take.cancel()
    go_on.set()
    blocked.result(30)
    await slots.settled()
    await slots.settled()  # the give-back its grant caused


@contextlib.contextmanager
def _counting_statements(tx: Tx, statements: list[str]) -> Iterator[None]:
    """Every statement ``tx`` runs, through SQLAlchemy or (PostgreSQL) through the driver
    itself (db.driver): psycopg's cursors of the connection record what they execute."""
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    if tx.dialect != "postgresql":
        event.listen(tx.conn, "before_cursor_execute", listen)
        try:
            yield
        finally:
            event.remove(tx.conn, "before_cursor_execute", listen)
        return

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query))
            return super().execute(query, *args, **kwargs)

    driver: Any = tx.conn.connection.driver_connection
    before = driver.cursor_factory
    driver.cursor_factory = Recording
    try:
        yield
    finally:
        driver.cursor_factory = before
