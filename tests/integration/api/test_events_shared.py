"""Events that other processes commit reach SSE streams: the bus follows the events table.

An API started with ``run_scheduler=False`` runs no task itself; a separate
scheduler (here a second :class:`Kiln` on the same database, as ``kiln
worker`` or ``kiln run`` would be) writes the progress. Without following,
the API's streams would carry only heartbeats.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import api_settings, serving, spec
from test_events import sse_events

from pixelkiln.app import Kiln
from pixelkiln.engine.bus import EventBus
from pixelkiln.models import Event, EventType
from pixelkiln.testing import wait_until

pytestmark = pytest.mark.anyio


async def collect(
    http: httpx.AsyncClient, path: str, into: list[dict[str, Any]], started: asyncio.Event
) -> None:
    """Events of a stream into ``into`` until it ends; ``started`` once it is live."""
    async with http.stream("GET", path) as r:
        async for event in sse_events(r):
            started.set()  # the first frame after the replay: a heartbeat or an event
            if "id" in event:
                into.append(event)


async def test_a_batch_run_by_another_scheduler_streams_live(
    tmp_path: Path, database_url: str
) -> None:
    settings = api_settings(tmp_path / "data", storage={"database_url": database_url})
    async with (
        serving(settings, run_scheduler=False) as live,
        httpx.AsyncClient(base_url=live.url, timeout=20) as http,
    ):
        batch = (await http.post("/api/v1/batches", json=spec("a", "b", "REJECT c"))).json()
        path = f"/api/v1/batches/{batch['id']}/events"
        events: list[dict[str, Any]] = []
        started = asyncio.Event()
        reader = asyncio.create_task(collect(http, path, events, started))
        await asyncio.wait_for(started.wait(), 5)
        async with Kiln(settings) as worker:  # another process, as far as the API can tell
            await worker.run_until_done([batch["id"]])
        await asyncio.wait_for(reader, 10)  # the stream ends after the worker's "done"
        log = (await http.get(f"/api/v1/batches/{batch['id']}/log")).json()["items"]
    assert [e["id"] for e in events] == [e["id"] for e in log]
    kinds = [e["event"] for e in events]
    assert kinds.count("progress") == 3 and kinds.count("image_generated") == 2
    assert kinds[-1] == "done" and events[-1]["data"]["data"]["summary"]["status"] == "partial"


async def test_events_from_here_and_elsewhere_interleave_in_id_order(
    tmp_path: Path, database_url: str
) -> None:
    """The API writes (new batches) while the worker writes: one stream, every id, in order."""
    settings = api_settings(tmp_path / "data", storage={"database_url": database_url})
    async with (
        serving(settings, run_scheduler=False) as live,
        httpx.AsyncClient(base_url=live.url, timeout=20) as http,
    ):
        run = (await http.post("/api/v1/batches", json=spec(*"abcd", backend="slow"))).json()
        events: list[dict[str, Any]] = []
        started = asyncio.Event()
        reader = asyncio.create_task(collect(http, "/api/v1/events?after=0", events, started))
        await asyncio.wait_for(started.wait(), 5)
        queued = []
        async with Kiln(settings) as worker:
            running = asyncio.create_task(worker.run_until_done([run["id"]]))
            for i in range(6):  # committed here, between the worker's commits
                await asyncio.sleep(0.1)
                body = spec(f"later {i}", name=f"queued {i}")
                queued.append((await http.post("/api/v1/batches", json=body)).json()["id"])
            await running
        log: list[int] = []
        for batch_id in [run["id"], *queued]:
            items = (await http.get(f"/api/v1/batches/{batch_id}/log")).json()["items"]
            log.extend(e["id"] for e in items)
        await wait_until(lambda: len(events) >= len(log), interval=0.05)
        reader.cancel()
    assert [e["id"] for e in events] == sorted(log)
    assert {e["event"] for e in events} >= {"progress", "image_generated", "done"}


class FakeEvents:
    """An events table whose rows become visible when a test says they committed."""

    def __init__(self) -> None:
        self.committed: dict[int, Event] = {}
        self.reads = 0

    def commit(self, *ids: int) -> list[Event]:
        events = [Event(i, 1, None, EventType.INFO, {}, 0.0) for i in ids]
        self.committed.update((e.id, e) for e in events)
        return events

    async def latest_id(self) -> int:
        return max(self.committed, default=0)

    async def events_after(self, after_id: int, limit: int) -> list[Event]:
        self.reads += 1
        return [self.committed[i] for i in sorted(self.committed) if i > after_id][:limit]


async def test_the_bus_follows_in_id_order_and_waits_briefly_for_open_transactions() -> None:
    table = FakeEvents()
    bus = EventBus(asyncio.get_running_loop())
    sub = bus.subscribe()
    bus.follow(table, interval=0.05, gap_grace=0.3)
    await bus.synced()
    try:
        bus.publish(table.commit(1, 2))  # this process, next ids: out at once, no query
        assert [e.id for e in [await sub.get(1), await sub.get(1)] if e] == [1, 2]
        table.commit(4)  # elsewhere; 3 is still an open transaction (PostgreSQL)
        assert await sub.get(0.2) is None
        table.commit(3)
        assert [e.id for e in [await sub.get(1), await sub.get(1)] if e] == [3, 4]
        table.commit(6)  # 5 never commits: rolled back
        assert await sub.get(0.1) is None
        event = await sub.get(1)
        assert event is not None and event.id == 6
        table.commit(7)  # elsewhere, then this process: 8 waits for 7, in order
        bus.publish(table.commit(8))
        assert [e.id for e in [await sub.get(1), await sub.get(1)] if e] == [7, 8]
        reads = table.reads
        for i in range(9, 30):  # a busy bus of this process's events reads nothing
            bus.publish(table.commit(i))
            await asyncio.sleep(0.01)
        assert [e.id for e in sub.drain()] == list(range(9, 30)) and table.reads == reads
    finally:
        sub.close()
