"""``POST /api/v1/batches?dry_run=true`` answers a plan: time from measured speeds, money
from prices, per backend; over ``[limits]`` it answers the create's 422 and nothing is made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apikit import SMALL, Api, api_settings, running_api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = api_settings(
        tmp_path / "data",
        limits={"max_tasks_per_batch": 5},
        backends=[
            {"name": "placeholder", "type": "placeholder", "concurrency": 2, "latency": 0.02},
            {
                "name": "paid",
                "type": "placeholder",
                "price_per_image": 0.04,
                "price_per_megapixel": 0.5,
            },
        ],
    )
    async with running_api(settings) as running:
        yield running


def batch(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"name": "plan", "defaults": SMALL, "tasks": list(tasks)}


async def _finished(api: Api, batch_id: int) -> None:
    for _ in range(500):
        body = (await api.client.get(f"/api/v1/batches/{batch_id}")).json()
        if body["finished"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the batch did not finish")


async def test_the_plan_answers_time_after_a_batch_and_money_where_priced(api: Api) -> None:
    spec = batch({"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": "d", "n": 2})
    first = (await api.client.post("/api/v1/batches?dry_run=true", json=spec)).json()
    assert (first["tasks"], first["images"], first["credits"]) == (4, 5, 0)
    assert (first["seconds"], first["unknown"], first["money"]) == (None, ["placeholder"], None)
    assert first["backends"][0]["basis"] == "unknown"

    made = await api.client.post("/api/v1/batches", json=spec)
    assert made.status_code == 201, made.text
    await _finished(api, made.json()["id"])

    again = (await api.client.post("/api/v1/batches?dry_run=true", json=spec)).json()
    [backend] = again["backends"]
    assert backend["name"] == "placeholder" and backend["basis"] == "measured"
    assert backend["slots"] == 2 and again["unknown"] == []
    assert again["seconds"] == pytest.approx(2 * backend["seconds_per_image"] * 5 / 4)

    paid = batch({"prompt": "x", "backend": "paid", "n": 2, "width": 1000, "height": 1000})
    priced = (await api.client.post("/api/v1/batches?dry_run=true", json=paid)).json()
    assert priced["money"] == pytest.approx(0.04 * 2 + 0.5 * 2.0)
    assert priced["backends"][0]["megapixels"] == pytest.approx(2.0)


async def test_over_the_task_limit_the_dry_run_and_the_create_answer_the_same_422(
    api: Api,
) -> None:
    spec = batch(*({"prompt": str(i)} for i in range(6)))
    dry = await api.client.post("/api/v1/batches?dry_run=true", json=spec)
    real = await api.client.post("/api/v1/batches", json=spec)
    assert dry.status_code == real.status_code == 422, dry.text
    assert dry.json() == real.json()
    [problem] = real.json()["error"]["problems"]
    assert problem["field"] == "tasks"
    assert "6 tasks; at most 5 in one batch" in problem["message"]
    assert (await api.client.get("/api/v1/batches")).json()["total"] == 0


async def test_a_sweep_is_counted_after_expansion_against_the_task_limit(api: Api) -> None:
    """Two tasks × a 3-value axis make 6 tasks, over the limit of 5: refused, nothing made."""
    spec = batch({"prompt": "a"}, {"prompt": "b"})
    spec["sweep"] = {"x": {"cfg_scale": [5, 7, 9]}}
    real = await api.client.post("/api/v1/batches", json=spec)
    assert real.status_code == 422, real.text
    [problem] = real.json()["error"]["problems"]
    assert "6 tasks" in problem["message"] and "max_tasks_per_batch" in problem["message"]
    assert (await api.client.get("/api/v1/batches")).json()["items"] == []
    spec["sweep"] = {"x": {"cfg_scale": [5, 7]}}  # 4 tasks: within the limit
    ok = await api.client.post("/api/v1/batches?dry_run=true", json=spec)
    assert ok.status_code == 200 and ok.json()["tasks"] == 4, ok.text
