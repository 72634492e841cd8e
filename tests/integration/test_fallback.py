"""Backends that go away: fallback chains, the down deadline, accounts out of credits.

Real fake WebUI and OpenRouter servers on loopback, the real scheduler, SQLite
and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.batches import get_batch, retry_batch
from pixelkiln.db.credits import set_own_key
from pixelkiln.db.events import events_after
from pixelkiln.db.routing import FALLBACK_FROM
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.db.users import add_user, set_provider_key
from pixelkiln.models import BatchStatus, EventType, TaskStatus
from pixelkiln.reports import build_report, render_text
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeOpenRouter, FakeSDWebUI
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio
TXT2IMG = "/sdapi/v1/txt2img"
MODEL = "google/gemini-2.5-flash-image"
#: quick health probes, so a server that comes back is noticed soon
POOL_OPTIONS = {"open_seconds": 0.2, "max_open_seconds": 0.5}


@pytest.fixture
def webuis() -> Iterator[Callable[..., list[FakeSDWebUI]]]:
    with ExitStack() as stack:

        def start(count: int, **kwargs: Any) -> list[FakeSDWebUI]:
            return [stack.enter_context(FakeSDWebUI(**kwargs)) for _ in range(count)]

        yield start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_with(
    tmp_path: Path, database_url: str, backends: list[dict[str, Any]], **scheduler: Any
) -> Settings:
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=backends,
        scheduler=scheduler,
    )


def sd(urls: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": "sd", "type": "sdwebui", "urls": urls, "options": POOL_OPTIONS, **extra}


PLACEHOLDER = {"name": "placeholder", "type": "placeholder", "concurrency": 2}


def spec(count: int, **defaults: Any) -> Any:
    return parse_batch(
        {
            "name": "night",
            "defaults": {"width": 64, "height": 64, **defaults},
            "tasks": [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(count)],
        }
    )


async def test_every_server_down_moves_the_rest_to_the_fallback(
    tmp_path: Path, database_url: str, webuis: Callable[..., list[FakeSDWebUI]]
) -> None:
    servers = webuis(2, latency=0.05)
    backends = [sd([s.url for s in servers], fallback=["placeholder"]), PLACEHOLDER]
    async with Kiln(settings_with(tmp_path, database_url, backends)) as kiln:
        batch_id = await kiln.submit(spec(30))
        runner = asyncio.create_task(kiln.run_until_done([batch_id]))
        while kiln.db.read(get_batch, batch_id).counts.succeeded < 4:
            await asyncio.sleep(0.02)
        for server in servers:
            await asyncio.to_thread(server.down)
        await asyncio.wait_for(runner, 120)
        batch = kiln.db.read(get_batch, batch_id)
        tasks = kiln.db.read(list_tasks, batch_id)
        images = kiln.db.read(list_images, batch_id)
        events = kiln.db.read(events_after, 0, batch_id=batch_id, limit=10_000)
        report = kiln.db.read(build_report, batch_id)
    assert batch.status == BatchStatus.COMPLETED
    assert all(t.status == TaskStatus.SUCCEEDED for t in tasks)
    assert len(images) == 30 and len({i.task_id for i in images}) == 30
    made = [e for e in events if e.type == EventType.IMAGE_GENERATED]
    assert sorted(e.task_id or 0 for e in made) == sorted(t.id for t in tasks)  # once each
    moved = {e.task_id for e in events if e.type == EventType.INFO and FALLBACK_FROM in e.data}
    on_sd = [t for t in tasks if t.backend == "sd"]
    assert moved and all(t.backend == "placeholder" for t in tasks if t.id in moved)
    assert {t.id for t in tasks if t.backend == "placeholder"} == moved
    answered = sum(1 for s in servers for r in s.received(TXT2IMG) if r.outcome == "ok")
    assert 4 <= len(on_sd) <= answered  # what stayed on sd was made by sd
    assert report["totals"]["fell_back"] == len(moved)
    assert "moved to a fallback backend" in render_text(report)


async def test_a_task_chain_is_followed_and_tasks_without_one_fail_at_the_deadline(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()  # nothing listens there yet: the WebUI is down from the start
    backends = [sd([f"http://127.0.0.1:{port}"]), PLACEHOLDER]
    settings = settings_with(tmp_path, database_url, backends, down_timeout=0.5)
    chained = {"prompt": "chained", "key": "c", "backend": ["sd", "placeholder"]}
    batch = parse_batch(
        {
            "name": "mixed",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"plain {i}", "key": f"p{i}"} for i in range(3)]
            + [{**chained, "key": f"c{i}"} for i in range(3)],
        }
    )
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(batch)
        await asyncio.wait_for(kiln.run_until_done([batch_id]), 60)
        tasks = {t.key: t for t in kiln.db.read(list_tasks, batch_id)}
        status = kiln.db.read(get_batch, batch_id).status
        summary = render_text(kiln.db.read(build_report, batch_id))
    assert status == BatchStatus.PARTIAL
    # the console summary gives the night's one reason once, with its count
    assert "    3 × backend 'sd': every server down for 0.5 s" in summary.splitlines()
    for i in range(3):
        done, waited = tasks[f"c{i}"], tasks[f"p{i}"]
        assert (done.status, done.backend) == (TaskStatus.SUCCEEDED, "placeholder")
        assert done.params["backends"] == ["sd", "placeholder"]
        assert (waited.status, waited.backend, waited.attempts) == (TaskStatus.FAILED, "sd", 0)
        assert waited.last_error == "backend 'sd': every server down for 0.5 s"

    with FakeSDWebUI(port=port):  # the server is back: a retry completes the batch
        async with Kiln(settings) as kiln:
            assert kiln.db.write(retry_batch, batch_id) == 3
            await asyncio.wait_for(kiln.run_until_done([batch_id]), 60)
            after = kiln.db.read(get_batch, batch_id)
            backends = {t.key: t.backend for t in kiln.db.read(list_tasks, batch_id)}
    assert after.status == BatchStatus.COMPLETED and after.counts.succeeded == 6
    assert {backends[f"p{i}"] for i in range(3)} == {"sd"}


async def test_a_backend_that_comes_back_takes_its_waiting_tasks_again(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    backends = [sd([f"http://127.0.0.1:{port}"]), PLACEHOLDER]
    settings = settings_with(tmp_path, database_url, backends, down_timeout=0)  # wait for ever
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(spec(4))
        runner = asyncio.create_task(kiln.run_until_done([batch_id]))
        while not (kiln.scheduler and kiln.scheduler.status().backends_down):
            await asyncio.sleep(0.02)
        with FakeSDWebUI(port=port) as server:
            await asyncio.wait_for(runner, 60)
        tasks = kiln.db.read(list_tasks, batch_id)
        events = kiln.db.read(events_after, 0, batch_id=batch_id)
    assert all(t.status == TaskStatus.SUCCEEDED and t.backend == "sd" for t in tasks)
    assert len(server.received(TXT2IMG)) == 4
    messages = [e.data.get("message", "") for e in events]
    assert any("every server is down; its tasks wait" in m for m in messages)
    assert any("backend 'sd' is back" in m for m in messages)


async def test_an_account_out_of_credits_hands_its_tasks_to_the_fallback(
    tmp_path: Path, database_url: str
) -> None:
    with FakeOpenRouter(credits=2, image_scale=0.05) as router:
        backends = [
            {"name": "router", "type": "openrouter", "urls": [router.url], "model": MODEL,
             "fallback": ["placeholder"]},
            PLACEHOLDER,
        ]  # fmt: skip
        async with Kiln(settings_with(tmp_path, database_url, backends)) as kiln:
            batch_id = await kiln.submit(spec(6))
            await asyncio.wait_for(kiln.run_until_done([batch_id]), 60)
            tasks = kiln.db.read(list_tasks, batch_id)
            report = kiln.db.read(build_report, batch_id)
    assert all(t.status == TaskStatus.SUCCEEDED for t in tasks)
    assert sorted(t.backend for t in tasks) == ["placeholder"] * 4 + ["router"] * 2
    assert report["totals"]["fell_back"] == 4
    assert all(t.attempts <= 1 for t in tasks)  # moving spent no attempt


async def test_without_a_fallback_an_empty_account_fails_its_tasks_at_once(
    tmp_path: Path, database_url: str
) -> None:
    with FakeOpenRouter(credits=1, image_scale=0.05) as router:
        backends = [{"name": "router", "type": "openrouter", "urls": [router.url], "model": MODEL}]
        settings = settings_with(tmp_path, database_url, backends)
        async with Kiln(settings) as kiln:
            batch_id = await kiln.submit(spec(3))
            await asyncio.wait_for(kiln.run_until_done([batch_id]), 60)
            tasks = kiln.db.read(list_tasks, batch_id)
        requests = len(router.received("/api/v1/chat/completions"))
    failed = [t for t in tasks if t.status == TaskStatus.FAILED]
    assert len(failed) == 2 and all("out of credits" in (t.last_error or "") for t in failed)
    assert requests <= 3  # no retries on an empty account


async def test_a_task_on_its_owners_own_key_never_moves_to_the_systems_fallback(
    tmp_path: Path, database_url: str
) -> None:
    with FakeOpenRouter(credits=0, image_scale=0.05) as router:  # every request: 402
        backends = [
            {"name": "router", "type": "openrouter", "urls": [router.url], "model": MODEL,
             "api_key": "sk-system", "fallback": ["placeholder"]},
            PLACEHOLDER,
        ]  # fmt: skip
        async with Kiln(settings_with(tmp_path, database_url, backends)) as kiln:
            user, _ = kiln.db.write(add_user, "ivy")
            batch_id = await kiln.submit(spec(2), owner_id=user.id)  # no key yet: system's
            secret = kiln.keys.encrypt("sk-ivy-own")
            kiln.db.write(set_provider_key, user.id, "router", secret)
            own, system = kiln.db.read(list_tasks, batch_id)
            kiln.db.write(set_own_key, batch_id, ["router"], [own.id])  # as a retry would
            await asyncio.wait_for(kiln.run_until_done([batch_id]), 60)
            tasks = {t.id: t for t in kiln.db.read(list_tasks, batch_id)}
    assert (tasks[own.id].status, tasks[own.id].backend) == (TaskStatus.FAILED, "router")
    assert "out of credits" in (tasks[own.id].last_error or "")
    assert (tasks[system.id].status, tasks[system.id].backend) == (
        TaskStatus.SUCCEEDED,
        "placeholder",
    )
