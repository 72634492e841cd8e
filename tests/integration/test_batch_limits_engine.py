"""Per-batch limits through the scheduler, against a fake WebUI that logs what runs at once."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch
from pixelkiln.db.slots import Bucket
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.shared_limits import SlotExchange
from pixelkiln.engine.starts import StartMarks, TryStart
from pixelkiln.models import BatchStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeSDWebUI
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

TXT2IMG = "/sdapi/v1/txt2img"


class CountingWebUI(FakeSDWebUI):
    """The fake WebUI, logging the requests in flight: per batch (the prompt's first
    word) and in all ("all").
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.by_label: Counter[str] = Counter()  # requests in flight per label
        self.moments: list[Counter[str]] = []  #: what was in flight as each request arrived

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != TXT2IMG:
            await super().__call__(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        label = json.loads(body)["prompt"].split()[0]
        self.by_label.update((label, "all"))
        self.moments.append(Counter(self.by_label))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await super().__call__(scope, replay, send)
        finally:
            self.by_label[label] -= 1
            self.by_label["all"] -= 1

    def peak(self, label: str) -> int:
        return max(moment[label] for moment in self.moments)

    def starts(self, label: str) -> list[float]:
        """When each generation request of a batch arrived (monotonic seconds)."""
        return [r.at for r in self.received(TXT2IMG) if r.json()["prompt"].startswith(label)]


def _spec(label: str, count: int, **top: Any) -> Any:
    return parse_batch(
        {
            "name": label,
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"{label} {i}"} for i in range(count)],
            **top,
        }
    )


def _settings(tmp_path: Path, url: str, database_url: str, **scheduler: Any) -> Any:
    webui = {"name": "webui", "type": "sdwebui", "urls": [url], "concurrency": 8}
    return make_settings(
        tmp_path,
        backends=[webui],
        storage={"database_url": database_url},
        scheduler={"concurrency": 8, **scheduler},
    )


async def test_max_workers_caps_a_batch_while_another_runs_in_parallel(
    tmp_path: Path, database_url: str
) -> None:
    with CountingWebUI(latency=0.05) as webui:
        async with Kiln(_settings(tmp_path, webui.url, database_url)) as kiln:
            capped = await kiln.submit(_spec("capped", 15, max_workers=3))
            free = await kiln.submit(_spec("free", 15))
            await asyncio.wait_for(kiln.run_until_done([capped, free]), 60)
            done = [kiln.db.read(get_batch, b) for b in (capped, free)]
    assert [b.status for b in done] == [BatchStatus.COMPLETED] * 2
    assert done[0].max_workers == 3
    assert webui.peak("capped") == 3  # reached, never passed
    assert webui.peak("free") > 3  # the other batch took the rest of the slots
    assert webui.peak("all") <= 8
    assert any(m["capped"] == 3 and m["free"] >= 3 for m in webui.moments)  # side by side


async def test_delay_spaces_a_batch_s_starts_and_the_scheduler_wakes_for_them(
    tmp_path: Path, database_url: str
) -> None:
    # The delay runs from each start: the moment a task's attempt is marked, just before its
    # request goes out (tasks.started_at). pixelkiln keeps those apart exactly; the
    # generator sees them apart less the time from a mark to its request, which is small
    # once the backend's connection is open (the first request of a run may also wait for
    # the server pool's first look at its servers, so a warm-up batch runs first).
    # The generator's side is checked loosely (a loaded machine may hold one request back
    # more than the next): without pacing its gaps would be about 0.
    delay, tolerance = 0.5, 0.25
    # a poll interval far beyond the test's timeout: only the delay's own timer wakes it
    with CountingWebUI(latency=0.0) as webui:
        settings = _settings(tmp_path, webui.url, database_url, poll_interval=300.0)
        async with Kiln(settings) as kiln:
            await asyncio.wait_for(kiln.run_until_done([await kiln.submit(_spec("warm", 1))]), 30)
            paced = await kiln.submit(_spec("paced", 4, delay=delay))
            other = await kiln.submit(_spec("other", 6))
            await asyncio.wait_for(kiln.run_until_done([paced, other]), 30)
            batch = kiln.db.read(get_batch, paced)
            marked = sorted(t.started_at or 0.0 for t in kiln.db.read(list_tasks, paced))
    assert batch.status == BatchStatus.COMPLETED and batch.delay == delay
    assert all(b - a >= delay - 1e-3 for a, b in itertools.pairwise(marked)), marked
    starts = webui.starts("paced")
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= delay - tolerance for gap in gaps), gaps
    assert len(webui.starts("other")) == 6  # not held back by the paced batch


async def test_each_start_of_a_paced_batch_moves_its_wait(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task of a batch with a ``delay`` is marked paced when it starts (so its wait
    runs from that start), whatever its id; tasks of other batches are not."""
    seen: dict[int, bool] = {}
    mark = StartMarks.mark

    async def spied(self: StartMarks, task_id: int, *, paced: bool = False) -> None:
        seen[task_id] = paced
        await mark(self, task_id, paced=paced)

    take = SlotExchange.take

    async def spied_take(
        self: SlotExchange,
        key: str,
        limit: int,
        bucket: Bucket | None = None,
        start: TryStart | None = None,
    ) -> float | None:
        if start is not None:  # marked with the slot when granted at once (engine.sending)
            seen[start.task_id] = start.paced
        return await take(self, key, limit, bucket, start)

    monkeypatch.setattr(StartMarks, "mark", spied)
    monkeypatch.setattr(SlotExchange, "take", spied_take)
    with CountingWebUI(latency=0.0) as webui:
        settings = _settings(tmp_path, webui.url, database_url)
        async with Kiln(settings) as kiln:
            warm = await kiln.submit(_spec("warm", 3))  # task ids no longer match batch ids
            paced = await kiln.submit(_spec("paced", 3, delay=0.05))
            await asyncio.wait_for(kiln.run_until_done([warm, paced]), 30)
            owner = {t.id: b for b in (warm, paced) for t in kiln.db.read(list_tasks, b)}
    assert sorted(seen) == sorted(owner)
    assert all(seen[task_id] == (batch == paced) for task_id, batch in owner.items()), seen
