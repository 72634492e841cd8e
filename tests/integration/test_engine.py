"""The scheduler end to end: real SQLite, real files, the placeholder and small fake generators."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelkiln.app import Kiln
from pixelkiln.backends.base import GeneratedImage, GenerationRequest
from pixelkiln.backends.placeholder import draw
from pixelkiln.config import BackendSettings, Settings
from pixelkiln.db.batches import get_batch
from pixelkiln.db.events import events_after
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.exceptions import NoServerAvailableError, SpecError
from pixelkiln.models import BatchStatus, EventType, TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI, wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _spec(count: int, **defaults: Any) -> Any:
    return parse_batch(
        {
            "name": "t",
            "defaults": {"width": 64, "height": 64, **defaults},
            "tasks": [{"prompt": f"prompt {i}", "key": f"k{i}"} for i in range(count)],
        }
    )


def _placeholder(**kw: Any) -> list[dict[str, Any]]:
    return [{"name": "placeholder", "type": "placeholder", "concurrency": 4, **kw}]


async def test_a_batch_runs_to_completion_with_files_rows_and_metadata(settings: Settings) -> None:
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(_spec(6, n=2, negative_prompt="blurry", steps=12))
        await kiln.run_until_done([batch_id])
        batch = kiln.db.read(get_batch, batch_id)
        images = kiln.db.read(list_images, batch_id)
    assert batch.status == BatchStatus.COMPLETED
    assert (batch.counts.succeeded, batch.counts.images) == (6, 12)
    assert len(images) == 12 and len({i.path for i in images}) == 12
    first = kiln.storage.absolute(images[0].path)
    assert first.name == "k0_0001_0.png"
    with Image.open(first) as png:
        assert png.size == (64, 64)
        text = png.info["parameters"]
    # the placeholder draws from prompt and seed alone: no negative prompt or steps claimed
    assert text == f"prompt 0\nSeed: {images[0].seed}, Size: 64x64, Backend: placeholder"
    assert images[1].seed == images[0].seed + 1


async def test_the_same_seed_gives_the_same_image_file(tmp_path: Path) -> None:
    digests = []
    for run in range(2):
        async with Kiln(make_settings(tmp_path / f"d{run}")) as kiln:
            batch_id = await kiln.submit(_spec(1, seed=1234))
            await kiln.run_until_done([batch_id])
            digests.append(kiln.db.read(list_images, batch_id)[0].sha256)
    assert digests[0] == digests[1]


async def test_failures_are_retried_and_recorded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backends=_placeholder(fail_rate=0.5))
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(_spec(40))
        await kiln.run_until_done([batch_id])
        batch = kiln.db.read(get_batch, batch_id)
        tasks = kiln.db.read(list_tasks, batch_id)
        events = kiln.db.read(events_after, 0, batch_id=batch_id, limit=10_000)
    assert batch.counts.done == 40 and batch.counts.succeeded > 0
    assert any(t.attempts > 1 and t.status == TaskStatus.SUCCEEDED for t in tasks)
    failed = [t for t in tasks if t.status == TaskStatus.FAILED]
    assert all(t.attempts == 3 and "simulated failure" in (t.last_error or "") for t in failed)
    assert any(e.type == EventType.WARNING and e.data.get("attempt") for e in events)
    assert batch.status == (BatchStatus.PARTIAL if failed else BatchStatus.COMPLETED)


async def test_an_error_that_cannot_succeed_fails_at_once(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, backends=_placeholder(options={"reject_if_prompt_contains": "forbidden"})
    )
    spec = parse_batch(
        {
            "name": "t",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": "fine"}, {"prompt": "a forbidden thing"}],
        }
    )
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(spec)
        await kiln.run_until_done([batch_id])
        tasks = kiln.db.read(list_tasks, batch_id)
        batch = kiln.db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.PARTIAL
    bad = tasks[1]
    assert (bad.status, bad.attempts) == (TaskStatus.FAILED, 1)
    assert "rejects prompts containing 'forbidden'" in (bad.last_error or "")


async def test_cancel_stops_pending_and_running_tasks(tmp_path: Path) -> None:
    with FakeSDWebUI() as webui:
        webui.hold()  # generations run until released: nothing ends while the test looks
        webui.release(2)
        generator = {"name": "webui", "type": "sdwebui", "urls": [webui.url], "concurrency": 2}
        settings = make_settings(tmp_path, backends=[generator])
        async with Kiln(settings) as kiln:
            batch_id = await kiln.submit(_spec(30))
            runner = asyncio.create_task(kiln.run_until_done([batch_id]))
            await wait_until(lambda: kiln.db.read(get_batch, batch_id).counts.succeeded == 2)
            await wait_until(lambda: webui.held == 2)  # two more running
            await kiln.cancel(batch_id)
            await asyncio.wait_for(runner, 30)
            batch = kiln.db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.CANCELLED
    assert batch.counts.cancelled >= 20
    assert batch.counts.pending == batch.counts.running == 0
    assert batch.counts.succeeded + batch.counts.cancelled == 30


async def test_a_task_that_takes_too_long_times_out_and_is_retried(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        backends=_placeholder(latency=1.0),
        scheduler={"task_timeout": 0.1, "max_attempts": 2},
    )
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(_spec(1))
        await kiln.run_until_done([batch_id])
        [task] = kiln.db.read(list_tasks, batch_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 2)
    assert "no result within 0.1 s" in (task.last_error or "")


async def test_stopping_gives_running_tasks_back_untried(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backends=_placeholder(latency=5.0, concurrency=3))
    async with Kiln(settings) as kiln:
        batch_id = await kiln.submit(_spec(5))
        scheduler = kiln.new_scheduler([batch_id])
        runner = asyncio.create_task(scheduler.run(until_done=True))
        while kiln.db.read(get_batch, batch_id).counts.running < 3:
            await asyncio.sleep(0.02)
        scheduler.stop()
        await asyncio.wait_for(runner, 5)
        batch = kiln.db.read(get_batch, batch_id)
        tasks = kiln.db.read(list_tasks, batch_id)
    assert (batch.counts.pending, batch.counts.running) == (5, 0)
    assert all(t.attempts == 0 for t in tasks)
    assert batch.status == BatchStatus.RUNNING  # unfinished: resumable


class FlakyServers:
    """A generator whose every server is down for the first ``down_for`` calls."""

    def __init__(self, down_for: int) -> None:
        self.settings = BackendSettings(name="flaky", type="flaky", concurrency=2)
        self.calls = 0
        self.down_for = down_for

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        self.calls += 1
        if self.calls <= self.down_for:
            raise NoServerAvailableError("every server of 'flaky' is down")
        data = draw(request.prompt, request.seed, request.width, request.height)
        return [GeneratedImage(data, request.seed)]

    async def aclose(self) -> None:
        return None


async def test_tasks_wait_for_a_down_backend_without_spending_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixelkiln.engine import outcomes

    monkeypatch.setattr(outcomes, "DOWN_WAIT", 0.05)
    settings = make_settings(tmp_path, scheduler={"max_attempts": 1})
    async with Kiln(settings, backends={"placeholder": FlakyServers(down_for=6)}) as kiln:
        batch_id = await kiln.submit(_spec(2))
        await kiln.run_until_done([batch_id])
        batch = kiln.db.read(get_batch, batch_id)
        events = kiln.db.read(events_after, 0, batch_id=batch_id)
    assert batch.status == BatchStatus.COMPLETED  # max_attempts=1 and still succeeded
    warnings = [e for e in events if e.type == EventType.WARNING]
    assert len(warnings) == 1 and "every server is down" in warnings[0].data["message"]
    assert any(e.type == EventType.INFO and "is back" in e.data["message"] for e in events)


async def test_unknown_backend_is_refused_before_anything_runs(settings: Settings) -> None:
    async with Kiln(settings) as kiln:
        with pytest.raises(SpecError) as caught:
            await kiln.submit(_spec(1, backend="nope"))
    assert caught.value.problems[0].field == "backend"


async def test_input_images_are_checked_and_stored_by_content(
    settings: Settings, tmp_path: Path
) -> None:
    good = tmp_path / "init.png"
    Image.new("RGB", (32, 32), "red").save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    async with Kiln(settings) as kiln:
        with pytest.raises(SpecError) as caught:
            await kiln.submit(
                parse_batch(
                    {
                        "name": "t",
                        "tasks": [
                            {"prompt": "a", "init_image": str(good)},
                            {"prompt": "b", "init_image": str(bad)},
                        ],
                    }
                )
            )
        assert "task 2" in str(caught.value) and "not a readable image" in str(caught.value)
        batch_id = await kiln.submit(
            parse_batch(
                {
                    "name": "t",
                    "defaults": {"width": 64, "height": 64},
                    "tasks": [{"prompt": "a", "init_image": str(good)}],
                }
            )
        )
        await kiln.run_until_done([batch_id])
        [task] = kiln.db.read(list_tasks, batch_id)
        stored = kiln.storage.read(task.inputs["init_image"])
    assert Image.open(io.BytesIO(stored)).size == (32, 32)
    assert task.status == TaskStatus.SUCCEEDED


async def test_live_events_reach_subscribers(settings: Settings) -> None:
    async with Kiln(settings) as kiln:
        subscription = kiln.bus.subscribe()
        batch_id = await kiln.submit(_spec(3))
        await kiln.run_until_done([batch_id])
        await asyncio.sleep(0.05)
        seen = subscription.drain()
    kinds = [e.type for e in seen if e.batch_id == batch_id]
    assert kinds[0] == EventType.BATCH_UPDATE and kinds[-1] == EventType.DONE
    assert kinds.count(EventType.PROGRESS) == 3
    assert [e.id for e in seen] == sorted(e.id for e in seen)
