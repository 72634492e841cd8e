"""Slots freed by a round of slow tasks are refilled by one claim and one start.

Tasks started together on a slow generator end together, a few milliseconds
apart. The next round is claimed for their slots a moment before they are due
to end (engine.dispatch.CLAIM_LEAD; with nothing measured yet, a claim for the
first freed slot waits for the rest of its round, CLAIM_GATHER), and the start
of a task for the first freed slot waits, at most 3 % of a task, for the rest of
its round: the next round is claimed in one write and marked started in one
write, not one of each per task. (The second round is claimed ahead with the
first, before any task was measured.) Tasks marked started in one write share
its ``started_at``.
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

SECONDS = 0.6  #: a task: slow enough to be claimed only into a free slot (PREFETCH_SECONDS)


class Rounds:
    """A generator whose request for prompt ``p<i>`` takes ``SECONDS + (i % 4) * step``."""

    def __init__(self, step: float) -> None:
        self.settings = BackendSettings(name="rounds", type="rounds", concurrency=4)
        self.step = step

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        await asyncio.sleep(SECONDS + int(request.prompt.removeprefix("p")) % 4 * self.step)
        return [GeneratedImage(draw(request.prompt, request.seed, 64, 64), request.seed)]

    async def aclose(self) -> None:
        return None


async def _started_at(tmp_path: Path, step: float) -> list[float]:
    settings = make_settings(tmp_path / "data", scheduler={"concurrency": 4})
    async with Kiln(settings, backends={"placeholder": Rounds(step)}) as kiln:
        tasks = [{"prompt": f"p{i}"} for i in range(12)]
        spec = parse_batch({"name": "rounds", "tasks": tasks})
        batch_id = await kiln.submit(spec)
        await kiln.run_until_done([batch_id])
        rows = kiln.db.read(list_tasks, batch_id)
    assert [t.status for t in rows] == [TaskStatus.SUCCEEDED] * 12
    return [t.started_at for t in rows if t.started_at is not None]


async def test_a_round_of_slow_tasks_is_refilled_by_one_claim_and_one_start(
    tmp_path: Path,
) -> None:
    # the round's four tasks end within 4.5 ms: inside the 6 ms its first freed slot waits
    assert min(dispatch.CLAIM_GATHER, dispatch.CLAIM_GATHER_SHARE * SECONDS) >= 0.006
    started = await _started_at(tmp_path, 0.0015)
    assert len(set(started[:4])) == 1  # the first round: every slot free
    # (the second was claimed ahead with the first: nothing was measured yet)
    assert len(set(started[8:])) == 1  # the third: claimed and started together


async def test_tasks_ending_apart_are_not_held_back(tmp_path: Path) -> None:
    # 100 ms apart: each freed slot is refilled at once, not after the others
    started = await _started_at(tmp_path, 0.1)
    assert len(set(started[8:])) == 4
