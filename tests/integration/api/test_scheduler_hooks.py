"""The service reaches the API's scheduler thread: a create wakes it; a cancel ends its task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, api_settings, running_api, spec

pytestmark = pytest.mark.anyio

#: far longer than any test waits: only the service's word to the scheduler moves things
LONG = 600.0


def _settings(tmp_path: Path) -> Any:
    return api_settings(
        tmp_path / "data",
        scheduler={"poll_interval": LONG, "lease_seconds": 2 * LONG},
        backends=[
            {"name": "placeholder", "type": "placeholder", "concurrency": 2},
            {"name": "slow", "type": "placeholder", "concurrency": 1, "latency": LONG},
        ],
    )


async def _until(probe: Callable[[], Awaitable[Any]], wanted: Any) -> None:
    async with asyncio.timeout(20):  # a deadline, not a timing assertion
        while await probe() != wanted:
            await asyncio.sleep(0.02)


async def _generating(api: Api) -> int:
    assert api.ctx.runner is not None
    status = await api.ctx.runner.status()
    return sum(status.generating.values()) if status else -1


async def test_a_create_wakes_the_idle_scheduler_thread(tmp_path: Path) -> None:
    async with running_api(_settings(tmp_path)) as api:
        assert len(api.ctx.kiln.schedulers) == 1  # the thread, registered by the lifespan
        made = (await api.client.post("/api/v1/batches", json=spec("a"))).json()

        async def finished() -> bool:
            body = (await api.client.get(f"/api/v1/batches/{made['id']}")).json()
            return bool(body["finished"])

        await _until(finished, True)


async def test_a_cancel_stops_the_running_task_of_the_scheduler_thread(tmp_path: Path) -> None:
    async with running_api(_settings(tmp_path)) as api:
        made = (await api.client.post("/api/v1/batches", json=spec("a", backend="slow"))).json()
        await _until(lambda: _generating(api), 1)
        cancelled = await api.client.post(f"/api/v1/batches/{made['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        await _until(lambda: _generating(api), 0)


async def test_without_a_scheduler_thread_nothing_is_registered(tmp_path: Path) -> None:
    async with running_api(_settings(tmp_path), run_scheduler=False) as api:
        assert api.ctx.runner is None and len(api.ctx.kiln.schedulers) == 0
        made = await api.client.post("/api/v1/batches", json=spec("a"))
        assert made.status_code == 201 and made.json()["status"] == "queued"
