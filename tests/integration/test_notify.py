"""LISTEN/NOTIFY on PostgreSQL: other processes' work and events arrive without polling.

Every test here sets the polls far longer than its deadline (a scheduler's
``poll_interval``, the event bus's look at the events table), so only a
notification can make it pass in time; none measures how fast one arrives.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pixelkiln.app import Kiln
from pixelkiln.config import Settings, load_settings
from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.events import PendingEvent, append_events, events_after
from pixelkiln.db.notify import EVENTS, SLOTS, STATE, WORK, Listener, notify
from pixelkiln.db.server_health import record_down, record_up
from pixelkiln.db.settings_store import CONCURRENCY, delete_setting, set_setting
from pixelkiln.db.slots import SlotWant, ensure_rows, exchange
from pixelkiln.engine import scheduler as scheduler_module
from pixelkiln.models import Event, EventType
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.testing import wait_until
from tests.processes import env

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

#: longer than any deadline below: a poll cannot be what made a test pass
LONG = 120.0

#: a second process: submits a batch to the installation of the config file given, prints its id
SUBMIT = """
import asyncio, sys
from pathlib import Path
from pixelkiln.app import Kiln
from pixelkiln.config import load_settings
from pixelkiln.specs import parse_batch

async def main() -> None:
    async with Kiln(load_settings(Path(sys.argv[1])), engine=False) as kiln:
        spec = {"name": "elsewhere", "defaults": {"width": 64, "height": 64},
                "tasks": [{"prompt": "a fox"}, {"prompt": "a hare"}]}
        print(await kiln.submit(parse_batch(spec), source="cli"))

asyncio.run(main())
"""


def config(tmp_path: Path, database_url: str, *, latency: float = 0.0) -> Path:
    """A kiln.toml both processes read: PostgreSQL, a placeholder backend, polls of LONG."""
    data = tmp_path / "data"
    path = tmp_path / "kiln.toml"
    path.write_text(
        f"[storage]\ndata_dir = {json.dumps(str(data))}\n"
        f"database_url = {json.dumps(database_url)}\n"
        f"[scheduler]\npoll_interval = {LONG}\nconcurrency = 2\n"
        '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n'
        f"latency = {latency}\n"
    )
    return path


def settings_of(path: Path) -> Settings:
    return load_settings(path)


async def submit_elsewhere(path: Path) -> int:
    """A batch submitted by another process; its id."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SUBMIT, str(path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def test_a_committed_notification_reaches_a_listener(postgres_url: str) -> None:
    heard: list[str] = []
    live = threading.Event()
    listener = Listener(postgres_url, heard.append, lambda up: live.set() if up else None)
    db = Database.open(postgres_url)
    listener.start()
    try:
        assert live.wait(10)
        heard.clear()  # (a connect hands on every kind once: news sent while nobody listened)

        def both(tx: Tx) -> None:
            notify(tx, WORK)
            notify(tx, WORK)  # once per transaction is enough
            notify(tx, EVENTS)

        db.write(both)
        asyncio.run(wait_until(lambda: set(heard) == {WORK, EVENTS}, timeout=10))
    finally:
        listener.stop()
        db.close()
    assert not listener.live


async def test_a_submit_in_another_process_wakes_an_idle_scheduler(
    tmp_path: Path, postgres_url: str
) -> None:
    path = config(tmp_path, postgres_url)
    async with Kiln(settings_of(path)) as kiln:
        scheduler = kiln.new_scheduler()
        running = asyncio.create_task(scheduler.run())
        try:
            # listening, and the scheduler woken by the connect (its first look, finding
            # nothing, takes far less than the second process needs to start): it waits
            # LONG seconds now, unless told
            wakeups = kiln.wakeups
            assert wakeups is not None
            await wait_until(lambda: kiln.listening and wakeups.heard_work >= 1, timeout=10)
            heard = wakeups.heard_work
            batch_id = await submit_elsewhere(path)

            async def finished() -> bool:
                return (await kiln.db.aread(get_batch, batch_id)).status.finished

            await wait_until(finished, timeout=30)
        finally:
            scheduler.stop()
            await running
        batch = await kiln.db.aread(get_batch, batch_id)
    assert batch.counts.succeeded == 2
    assert wakeups.heard_work > heard  # the other process's submit was heard


def test_slots_given_back_are_announced_to_other_processes(postgres_url: str) -> None:
    """A process giving back server slots tells the others, whose waiters look again now
    instead of at their next re-check (engine.shared_limits)."""
    heard: list[str] = []
    live = threading.Event()
    listener = Listener(postgres_url, heard.append, lambda up: live.set() if up else None)
    db = Database.open(postgres_url)
    listener.start()
    try:
        assert live.wait(10)
        key = "http://gpu:7860"
        db.write(ensure_rows, {key: 2})
        took = db.write(exchange, "a", [], [SlotWant(key, 2, 2)], 1e12)
        assert took[(key, None)].slots == [0, 1]
        heard.clear()  # what the listener announces on connecting
        db.write(exchange, "a", [(key, 1)], [], 1e12)  # nobody waits: nothing announced
        db.write(exchange, "a", [], [SlotWant(key, 2, 1)], 1e12)  # taking announces nothing
        db.write(exchange, "b", [], [SlotWant(key, 2, 1)], 1e12)  # refused: b waits
        db.write(exchange, "a", [(key, 0)], [], 1e12)
        asyncio.run(wait_until(lambda: SLOTS in heard, timeout=10))
        assert heard.count(SLOTS) == 1
    finally:
        listener.stop()
        db.close()


@contextmanager
def listening(url: str, kinds: Collection[str]) -> Iterator[tuple[Database, list[str]]]:
    """A database and a live Listener on ``kinds``; what it hears from now on (the connect's
    own announcement of each kind, once it came, is not in it)."""
    heard: list[str] = []
    listener = Listener(url, heard.append, kinds=kinds)
    db = Database.open(url)
    listener.start()
    try:
        asyncio.run(wait_until(lambda: sorted(heard) == sorted(kinds), timeout=10))
        heard.clear()
        yield db, heard
    finally:
        listener.stop()
        db.close()


def test_a_listener_hears_only_the_kinds_it_listens_for(postgres_url: str) -> None:
    """``kinds`` limits what is listened for: a process that streams no events to anyone
    (``kiln worker``) is not woken by every task recorded in any process."""
    with listening(postgres_url, (WORK,)) as (db, heard):

        def events_then_work(tx: Tx) -> None:
            notify(tx, EVENTS)
            notify(tx, SLOTS)

        db.write(events_then_work)
        db.write(lambda tx: notify(tx, WORK))  # after the others: once it is heard, they were
        asyncio.run(wait_until(lambda: WORK in heard, timeout=10))
        assert heard == [WORK]


async def test_a_kiln_that_hears_no_events_still_hears_work(
    tmp_path: Path, postgres_url: str
) -> None:
    """``Kiln(hear_events=False)`` (what ``kiln worker`` opens): work from other processes
    wakes it, their events do not."""
    path = config(tmp_path, postgres_url)
    async with Kiln(settings_of(path), engine=False, hear_events=False) as kiln:
        wakeups = kiln.wakeups
        assert wakeups is not None
        await wait_until(lambda: kiln.listening and wakeups.heard_work >= 1, timeout=10)
        work = wakeups.heard_work
        await asyncio.to_thread(kiln.db.write, lambda tx: notify(tx, EVENTS))
        await submit_elsewhere(path)  # commits tasks (WORK) and a "created" event (EVENTS)
        await wait_until(lambda: wakeups.heard_work > work, timeout=10)
        assert wakeups.heard_events == 0


def test_stored_limits_and_servers_found_down_are_announced(postgres_url: str) -> None:
    """What schedulers otherwise re-read every second or two is announced when it changes:
    an admin's stored concurrency (set or forgotten), a server found down or back."""
    changes = [
        lambda tx: set_setting(tx, CONCURRENCY, 3),
        lambda tx: delete_setting(tx, CONCURRENCY),
        lambda tx: record_down(tx, "http://gpu:7860", 1e12, "refused", "w1"),
        lambda tx: record_up(tx, "http://gpu:7860"),
    ]
    with listening(postgres_url, (STATE,)) as (db, heard):
        for change in changes:
            heard.clear()
            db.write(change)
            asyncio.run(wait_until(lambda: heard == [STATE], timeout=10))


async def test_a_listening_scheduler_follows_a_stored_concurrency_at_once(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin's concurrency stored by another process reaches a listening scheduler at
    once, though it re-reads the settings by itself far less often than the deadline."""
    monkeypatch.setattr(scheduler_module, "SETTINGS_INTERVAL", LONG)
    path = config(tmp_path, postgres_url)
    other = Database.open(postgres_url)
    try:
        await asyncio.to_thread(other.write, set_setting, CONCURRENCY, 5)
        async with Kiln(settings_of(path)) as kiln:
            scheduler = kiln.engine().scheduler(follow_settings=True)
            scheduler.listening = lambda: kiln.listening
            kiln.schedulers.add(scheduler)
            running = asyncio.create_task(scheduler.run())
            try:
                await wait_until(lambda: kiln.listening, timeout=10)
                await wait_until(lambda: scheduler.limits.overall == 5, timeout=10)  # read
                await asyncio.to_thread(other.write, set_setting, CONCURRENCY, 7)
                await wait_until(lambda: scheduler.limits.overall == 7, timeout=10)
            finally:
                scheduler.stop()
                await running
    finally:
        other.close()


def test_appended_events_are_announced_by_their_own_insert(postgres_url: str) -> None:
    """The events' INSERT sends the EVENTS notification itself (one statement, not two);
    twice in one transaction still sends it, the ids still come back in order."""
    db = Database.open(postgres_url)
    spec = parse_batch({"name": "b", "tasks": [{"prompt": "a fox"}]})
    tasks = resolve_tasks(spec, default_backend="placeholder")
    batch_id = db.write(create_batch, NewBatch(name="b", source="cli", max_attempts=3, tasks=tasks))
    # listening only from now on: the batch's own news was sent before anyone listened
    heard: list[str] = []
    listener = Listener(postgres_url, heard.append, kinds=(EVENTS,))
    listener.start()
    try:
        asyncio.run(wait_until(lambda: heard == [EVENTS], timeout=10))  # the connect's
        heard.clear()

        def two(tx: Tx) -> list[Event]:
            first = append_events(tx, [(batch_id, None, EventType.INFO, {"message": "one"})])
            more: list[PendingEvent] = [
                (batch_id, None, EventType.INFO, {"message": m}) for m in ("two", "three")
            ]
            return first + append_events(tx, more)

        appended = db.write(two)
        assert [e.data["message"] for e in appended] == ["one", "two", "three"]
        assert [e.id for e in appended] == sorted(e.id for e in appended)
        asyncio.run(wait_until(lambda: heard == [EVENTS], timeout=10))
        stored = db.read(events_after, appended[0].id - 1, batch_id=batch_id)
        assert [e.data["message"] for e in stored] == ["one", "two", "three"]
    finally:
        listener.stop()
        db.close()
