"""``POST /api/v1/batches?dry_run=true``: every check of a real create, nothing stored or charged.

The batch table validates its rows this way before it starts: the answer must be the
one a real create would give (the same 422 naming each task's field, the same 402), and
a good batch answers what it would be: tasks, images and credits.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from apikit import SMALL, Api, png_bytes

pytestmark = pytest.mark.anyio


def counts(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's counts (it also answers time and money: docs/plans.md)."""
    return {k: plan[k] for k in ("tasks", "images", "credits")}


@pytest.fixture
def api(credits_db_api: Api) -> Api:
    return credits_db_api


def batch(*tasks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "table", "defaults": SMALL, "tasks": list(tasks), **top}


async def state(client: httpx.AsyncClient) -> tuple[int, int]:
    """How many batches the user has, and their balance."""
    batches = (await client.get("/api/v1/batches")).json()["total"]
    return batches, (await client.get("/api/v1/me/credits")).json()["balance"]


async def test_a_good_batch_answers_its_plan_and_nothing_changes(api: Api) -> None:
    _, alice = await api.add_user("alice", credits=100)
    spec = batch(
        {"prompt": "a fox", "n": 2, "key": "1"},
        {"prompt": "a hen", "backend": "slow", "key": "2"},
    )
    r = await alice.post(
        "/api/v1/batches", params={"dry_run": "true"}, json=spec, headers={"Idempotency-Key": "k"}
    )
    assert r.status_code == 200, r.text
    assert counts(r.json()) == {"tasks": 2, "images": 3, "credits": 5}
    assert "Location" not in r.headers
    assert await state(alice) == (0, 100)
    # the key of a dry run is not remembered: the real create with it makes the batch
    made = await alice.post("/api/v1/batches", json=spec, headers={"Idempotency-Key": "k"})
    assert made.status_code == 201, made.text
    assert await state(alice) == (1, 95)


async def test_every_problem_is_the_same_422_as_a_real_create(api: Api) -> None:
    _, alice = await api.add_user("alice", credits=100)
    _, bob = await api.add_user("bob")
    theirs = await bob.post(
        "/api/v1/assets", files=[("files", ("b.png", png_bytes(), "image/png"))]
    )
    spec = batch(
        {"prompt": "fine", "key": "1"},
        {"prompt": "too many", "n": 11, "key": "2"},
        {"prompt": "ratio", "aspect_ratio": "5:4", "key": "3"},
        {"prompt": "not mine", "reference_images": [theirs.json()[0]["ref"]], "key": "4"},
        {"prompt": "where", "backend": "nowhere", "key": "5"},
        priority=5,
    )
    dry = await alice.post("/api/v1/batches?dry_run=true", json=spec)
    real = await alice.post("/api/v1/batches", json=spec)
    assert dry.status_code == real.status_code == 422, dry.text
    assert dry.json() == real.json()
    problems = {(p["where"], p["field"]) for p in dry.json()["error"]["problems"]}
    assert ("task 2", "tasks[1].n") in problems
    assert ("task 3", "tasks[2].aspect_ratio") in problems
    assert {w for w, _ in problems} >= {"task 4", "task 5"}  # the upload, the backend
    assert any(f == "priority" for _, f in problems)
    assert await state(alice) == (0, 100)


async def test_a_batch_the_balance_does_not_cover_is_402_like_a_real_create(api: Api) -> None:
    _, alice = await api.add_user("alice", credits=2)
    spec = batch({"prompt": "three foxes", "n": 3})
    dry = await alice.post("/api/v1/batches?dry_run=true", json=spec)
    real = await alice.post("/api/v1/batches", json=spec)
    assert dry.status_code == real.status_code == 402, dry.text
    assert dry.json()["error"]["code"] == real.json()["error"]["code"] == "insufficient_credits"
    assert await state(alice) == (0, 2)
    fits = await alice.post("/api/v1/batches?dry_run=true", json=batch({"prompt": "a", "n": 2}))
    assert counts(fits.json()) == {"tasks": 1, "images": 2, "credits": 2}


async def test_not_a_batch_at_all_is_422(api: Api) -> None:
    _, alice = await api.add_user("alice", credits=10)
    for body in ([1], {"name": "x"}, {"name": "x", "tasks": [], "extra": 1}):
        r = await alice.post("/api/v1/batches?dry_run=true", json=body)
        assert r.status_code == 422, r.text
    r = await alice.post("/api/v1/batches?dry_run=maybe", json=batch({"prompt": "a"}))
    assert r.status_code == 422
