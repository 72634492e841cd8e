"""A sweep through POST /api/v1/batches: tasks keyed and recorded by their axes."""

from __future__ import annotations

import pytest
from apikit import SMALL, Api

from pixelkiln.db.batches import get_batch
from pixelkiln.db.tasks import list_tasks

pytestmark = pytest.mark.anyio

SWEEP = {"x": {"steps": [10, 20, 30]}, "y": {"seed": [1, 2]}}


async def test_a_sweep_is_queued_with_its_axes(api: Api) -> None:
    body = {
        "name": "grid",
        "defaults": SMALL,
        "tasks": [{"key": "fox", "prompt": "a {red|blue} fox"}],
        "sweep": SWEEP,
    }
    plan = await api.client.post("/api/v1/batches?dry_run=true", json=body)
    assert plan.status_code == 200, plan.text
    assert plan.json()["tasks"] == 12
    r = await api.client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    batch = r.json()
    assert batch["status"] == "completed"
    assert [t["key"] for t in batch["tasks"]][:2] == [
        "fox#1|steps=10|seed=1",
        "fox#1|steps=20|seed=1",
    ]
    tasks = await api.ctx.read(list_tasks, batch["id"])
    assert tasks[1].axes == {"x": {"steps": 20}, "y": {"seed": 1}}
    assert tasks[-1].prompt == "a blue fox"
    assert tasks[-1].axes == {"x": {"steps": 30}, "y": {"seed": 2}}
    assert (await api.ctx.read(get_batch, batch["id"])).extra["sweep"] == SWEEP


async def test_sweep_and_wildcard_problems_are_one_422(api: Api) -> None:
    body = {
        "name": "grid",
        "tasks": [{"prompt": "a {0::fox|owl}, __styles__"}],  # no folder: "__styles__" is text
        "sweep": {"x": {"cfg_scale": [5, 500]}},
    }
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == 422, r.text
    text = r.text
    assert "sweep.x.cfg_scale[1]" in text
    assert "the weight at column 4 must be more than 0" in text and "__styles__" not in text
