"""`kiln worker`'s core in-process: the drain, the second stop, --backends, the health port.

The worker runs on the test's loop against a real database (SQLite and
PostgreSQL) and a fake WebUI that holds generations until the test lets them
go, so "running", "claimed ahead" and "finished inside the window" are states
the test waits for, not moments it guesses. Signals are the CLI's business
(tests/acceptance/test_worker*.py send real ones); here :meth:`Worker.stop`
is called as the signal handler would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.worker import Worker
from pixelkiln.exceptions import ConfigError
from pixelkiln.models import Task, TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI, wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _settings(tmp_path: Path, database_url: str, webui: FakeSDWebUI, **scheduler: Any) -> Settings:
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[
            {"name": "sd", "type": "sdwebui", "urls": [webui.url], "concurrency": 2},
            {"name": "spare", "type": "placeholder", "concurrency": 2},
        ],
        scheduler={"concurrency": 2, **scheduler},
    )


async def _submit(settings: Settings, count: int, backend: str = "sd") -> int:
    spec = parse_batch(
        {
            "name": "drain",
            "defaults": {"width": 64, "height": 64, "backend": backend},
            "tasks": [{"prompt": f"p{i}", "key": f"k{i}"} for i in range(count)],
        }
    )
    async with Kiln(settings, engine=False) as kiln:
        return await kiln.submit(spec)


async def _tasks(settings: Settings, batch_id: int) -> list[Task]:
    async with Kiln(settings, engine=False) as kiln:
        return await kiln.db.aread(list_tasks, batch_id)


def _by_status(tasks: list[Task]) -> dict[TaskStatus, int]:
    counts: dict[TaskStatus, int] = {}
    for task in tasks:
        counts[task.status] = counts.get(task.status, 0) + 1
    return counts


@pytest.fixture
async def webui() -> AsyncIterator[FakeSDWebUI]:
    with FakeSDWebUI(latency=0.01) as fake:
        fake.hold()
        yield fake


async def _started(worker: Worker) -> asyncio.Task[None]:
    runner = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.ready.is_set() or runner.done())
    return runner


async def test_drain_gives_back_what_waits_and_lets_running_tasks_finish(
    tmp_path: Path, database_url: str, webui: FakeSDWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui, shutdown_seconds=60)
    batch_id = await _submit(settings, 8)
    worker = Worker(settings, backends=["sd"], health=("127.0.0.1", 0))
    runner = await _started(worker)
    await wait_until(lambda: webui.held == 2)  # both slots generating, more claimed ahead
    ahead = [t for t in await _tasks(settings, batch_id) if t.status == TaskStatus.RUNNING]
    assert len(ahead) > 2

    worker.stop("SIGTERM")
    assert worker.port is not None
    host, port = worker.port.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:

        async def only_the_running_held() -> bool:
            tasks = await _tasks(settings, batch_id)
            return _by_status(tasks).get(TaskStatus.RUNNING) == 2

        await wait_until(only_the_running_held)  # what waited went back at once
        health = (await http.get("/healthz")).json()
        metrics = (await http.get("/metrics")).text
    assert health["status"] == "ok" and health["worker"]["draining"] is True
    assert health["worker"]["generating"] == {"sd": 2}
    assert 'kiln_worker_generating{backend="sd"} 2' in metrics
    assert "kiln_worker_draining 1" in metrics
    assert f"kiln_worker_given_back_total {len(ahead) - 2}" in metrics

    webui.release()  # the two running ones finish inside the window and are recorded
    await asyncio.wait_for(runner, 30)
    tasks = await _tasks(settings, batch_id)
    assert _by_status(tasks) == {TaskStatus.SUCCEEDED: 2, TaskStatus.PENDING: 6}
    assert all(t.attempts == 0 for t in tasks if t.status == TaskStatus.PENDING)
    assert len(webui.received("/sdapi/v1/txt2img")) == 2


async def test_what_still_runs_at_the_bound_goes_back_untried(
    tmp_path: Path, database_url: str, webui: FakeSDWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui, shutdown_seconds=0.3)
    batch_id = await _submit(settings, 4)
    worker = Worker(settings)
    runner = await _started(worker)
    await wait_until(lambda: webui.held == 2)
    worker.stop("SIGTERM")
    await asyncio.wait_for(runner, 30)  # never released: the bound ends it
    tasks = await _tasks(settings, batch_id)
    assert {t.status for t in tasks} == {TaskStatus.PENDING}
    assert all(t.attempts == 0 for t in tasks), tasks
    assert worker.scheduler is not None and worker.scheduler.tally.given_back == 4


async def test_a_second_stop_gives_back_at_once(
    tmp_path: Path, database_url: str, webui: FakeSDWebUI
) -> None:
    settings = _settings(tmp_path, database_url, webui, shutdown_seconds=3600)
    batch_id = await _submit(settings, 3)
    worker = Worker(settings)
    runner = await _started(worker)
    await wait_until(lambda: webui.held == 2)
    worker.stop("SIGTERM")
    worker.stop("SIGTERM")  # not an hour: now
    await asyncio.wait_for(runner, 30)
    tasks = await _tasks(settings, batch_id)
    assert {t.status for t in tasks} == {TaskStatus.PENDING}
    assert all(t.attempts == 0 for t in tasks)


async def test_backends_limits_what_it_claims(tmp_path: Path, webui: FakeSDWebUI) -> None:
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'kiln.db'}", webui)
    on_sd = await _submit(settings, 2, backend="sd")
    on_spare = await _submit(settings, 3, backend="spare")
    worker = Worker(settings, backends=["spare"], concurrency=1)
    runner = await _started(worker)
    assert worker.scheduler is not None
    assert list(worker.scheduler.backends) == ["spare"] and worker.scheduler.concurrency == 1

    async def spare_done() -> bool:
        tasks = await _tasks(settings, on_spare)
        return all(t.status == TaskStatus.SUCCEEDED for t in tasks)

    await wait_until(spare_done)
    worker.stop()
    await asyncio.wait_for(runner, 30)
    assert {t.status for t in await _tasks(settings, on_sd)} == {TaskStatus.PENDING}
    assert webui.received("/sdapi/v1/txt2img") == []


async def test_an_unknown_backend_or_a_taken_port_is_a_config_error(
    tmp_path: Path, webui: FakeSDWebUI
) -> None:
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'kiln.db'}", webui)
    with pytest.raises(ConfigError, match=r"unknown backend\(s\) 'nope'; configured: sd, spare"):
        await Worker(settings, backends=["nope"]).run()
    host, port = webui.host, webui.port  # taken by the fake
    with pytest.raises(ConfigError, match="health port cannot listen"):
        await Worker(settings, health=(host, port)).run()


async def test_the_health_port_answers_only_its_two_routes(
    tmp_path: Path, webui: FakeSDWebUI
) -> None:
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'kiln.db'}", webui)
    worker = Worker(settings, health=("127.0.0.1", 0))
    runner = await _started(worker)
    assert worker.port is not None
    host, port = worker.port.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
        await wait_until(lambda: worker.scheduler is not None and worker.scheduler.status().health)
        assert (await http.get("/nothing")).status_code == 404
        assert (await http.post("/healthz")).status_code == 405
        ok = await http.get("/healthz?verbose=1")
        assert ok.status_code == 200 and ok.json()["scheduler"]["state"] in ("starting", "running")
        assert ok.headers["content-type"] == "application/json"
        # a client that connects and says nothing is dropped, not a crash
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        assert (await http.get("/metrics")).status_code == 200
    worker.stop()
    await asyncio.wait_for(runner, 30)
