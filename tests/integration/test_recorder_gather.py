"""Outcomes of tasks that finish within milliseconds of each other are written together.

The recorder waits up to ``RECORD_GATHER`` for the outcomes of tasks still generating
(engine.recorder, engine.dispatch.outcomes_wait): tasks started together on a slow
generator finish together, and one write for them costs the writer far less than one
each. The last task running is recorded at once. Each record write stamps its tasks
with its own time, so tasks recorded in one write share one ``finished_at``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pixelkiln.app import Kiln
from pixelkiln.backends.base import GeneratedImage, GenerationRequest
from pixelkiln.backends.placeholder import draw
from pixelkiln.config import BackendSettings
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine import dispatch
from pixelkiln.models import TaskStatus
from pixelkiln.specs import parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


class Staggered:
    """A generator whose request for prompt ``p<i>`` takes ``0.2 + i * step`` seconds."""

    def __init__(self, step: float) -> None:
        self.settings = BackendSettings(name="staggered", type="staggered", concurrency=4)
        self.step = step

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        await asyncio.sleep(0.2 + int(request.prompt.removeprefix("p")) * self.step)
        return [GeneratedImage(draw(request.prompt, request.seed, 64, 64), request.seed)]

    async def aclose(self) -> None:
        return None


async def _finished_at(tmp_path: Path, step: float, tasks: int) -> list[float]:
    settings = make_settings(tmp_path / "data", scheduler={"concurrency": 4})
    backend = Staggered(step)
    async with Kiln(settings, backends={"placeholder": backend}) as kiln:
        spec = parse_batch(
            {"name": "together", "tasks": [{"prompt": f"p{i}"} for i in range(tasks)]}
        )
        batch_id = await kiln.submit(spec)
        await kiln.run_until_done([batch_id])
        rows = kiln.db.read(list_tasks, batch_id)
    assert [t.status for t in rows] == [TaskStatus.SUCCEEDED] * tasks
    return [t.finished_at for t in rows if t.finished_at is not None]


async def test_tasks_finishing_together_are_recorded_in_one_write(tmp_path: Path) -> None:
    # four tasks, each 2 ms after the one before: well inside the 20 ms the first waits
    assert dispatch.RECORD_GATHER >= 0.02
    finished = await _finished_at(tmp_path, 0.002, 4)
    assert len(finished) == 4 and len(set(finished)) == 1


async def test_tasks_finishing_apart_are_recorded_each_in_its_own_write(tmp_path: Path) -> None:
    # 150 ms apart: the wait is short, not a delay that lumps every outcome together
    finished = await _finished_at(tmp_path, 0.15, 3)
    assert len(set(finished)) == 3
