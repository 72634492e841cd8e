"""SSE on PostgreSQL: another process's events reach a stream through LISTEN/NOTIFY.

The API (process A) looks at the events table only every ``LONG`` seconds here;
the events a worker (process B: a second :class:`Kiln`, with its own writer,
bus and listening connection) commits reach A's stream in time only because
they are announced. Nothing here measures how fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import api_settings, serving
from test_events import sse_events

import pixelkiln.api.sse
from pixelkiln.app import Kiln

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

#: longer than any deadline below: a poll cannot be what made the test pass
LONG = 120.0


async def test_sse_streams_events_another_process_writes(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pixelkiln.api.sse, "FOLLOW_INTERVAL", LONG)
    settings = api_settings(
        tmp_path / "data",
        storage={"database_url": postgres_url},
        scheduler={"poll_interval": LONG},
    )
    async with (
        serving(settings, run_scheduler=False) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as http,
    ):
        spec = {
            "name": "b",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"p{i}", "key": f"k{i}"} for i in range(3)],
        }
        batch = (await http.post("/api/v1/batches", json=spec)).json()
        events: list[dict[str, Any]] = []
        started = asyncio.Event()

        async def collect() -> None:
            async with http.stream("GET", f"/api/v1/batches/{batch['id']}/events") as r:
                async for event in sse_events(r):
                    started.set()  # the first frame after the replay
                    if "id" in event:
                        events.append(event)

        reader = asyncio.create_task(collect())
        await asyncio.wait_for(started.wait(), 10)
        async with Kiln(settings) as worker:
            await worker.run_until_done([batch["id"]])
        await asyncio.wait_for(reader, 30)  # the stream ends after the worker's "done"
        log = (await http.get(f"/api/v1/batches/{batch['id']}/log")).json()["items"]
    assert [e["id"] for e in events] == [e["id"] for e in log]
    kinds = [e["event"] for e in events]
    assert kinds.count("image_generated") == 3 and kinds[-1] == "done"
