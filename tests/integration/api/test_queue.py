"""``/api/v1/queue``: my unfinished batches in claim order, and reordering them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, api_settings, held_slow_backends, running_api, spec

from pixelkiln.testing import FakeSDWebUI

pytestmark = pytest.mark.anyio


@pytest.fixture
async def queue_api(tmp_path: Path) -> AsyncIterator[Api]:
    """Auth and credits on; the "slow" backend is a held fake WebUI, so batches on it stay
    unfinished (two running, the rest queued) for as long as the test looks."""
    with FakeSDWebUI() as webui:
        webui.hold()
        settings = api_settings(
            tmp_path / "data",
            auth={"enabled": True},
            credits={"enabled": True, "per_image": 1},
            backends=held_slow_backends(webui.url),
        )
        async with running_api(settings) as running:
            yield running


async def _waiting(client: httpx.AsyncClient, name: str) -> int:
    r = await client.post("/api/v1/batches", json=spec(f"{name} prompt", name=name, backend="slow"))
    assert r.status_code == 201, r.text
    batch_id: int = r.json()["id"]
    return batch_id


def _order(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [(b["position"], b["id"]) for b in body["items"]]


async def test_my_queue_in_claim_order_and_a_new_order(queue_api: Api) -> None:
    _, alice = await queue_api.add_user("alice", credits=100)
    _, bob = await queue_api.add_user("bob", credits=100)
    a1 = await _waiting(alice, "a1")
    b1 = await _waiting(bob, "b1")
    a2, a3 = await _waiting(alice, "a2"), await _waiting(alice, "a3")

    mine = (await alice.get("/api/v1/queue")).json()
    assert _order(mine) == [(1, a1), (2, a2), (3, a3)] and mine["total"] == 3
    assert mine["items"][0]["counts"]["total"] == 1 and "progress" in mine["items"][0]

    r = await alice.put("/api/v1/queue", json={"batch_ids": [a3, a1, a2]})
    assert r.status_code == 200, r.text
    assert _order(r.json()) == [(1, a3), (2, a1), (3, a2)]
    assert _order((await alice.get("/api/v1/queue")).json()) == [(1, a3), (2, a1), (3, a2)]
    assert _order((await bob.get("/api/v1/queue")).json()) == [(1, b1)]
    page = (await alice.get("/api/v1/queue?limit=2&offset=1")).json()
    assert _order(page) == [(2, a1), (3, a2)] and page["next_offset"] is None


async def test_refusals_name_the_batches_and_change_nothing(queue_api: Api) -> None:
    _, alice = await queue_api.add_user("alice", credits=100)
    _, bob = await queue_api.add_user("bob", credits=100)
    a1, a2 = await _waiting(alice, "a1"), await _waiting(alice, "a2")
    theirs = await _waiting(bob, "theirs")
    ended = await _waiting(alice, "ended")
    assert (await alice.post(f"/api/v1/batches/{ended}/cancel")).status_code == 200
    before = _order((await alice.get("/api/v1/queue")).json())
    assert before == [(1, a1), (2, a2)]

    r = await alice.put("/api/v1/queue", json={"batch_ids": [a2, theirs, a1]})
    assert r.status_code == 404 and str(theirs) in r.json()["error"]["message"]
    r = await alice.put("/api/v1/queue", json={"batch_ids": [a2, a1, a2]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "batch_ids"
    assert "listed more than once" in r.json()["error"]["message"]
    for bad in ({"batch_ids": []}, {"batch_ids": [0]}, {"batch_ids": ["x"]}, {}, {"ids": [a1]}):
        r = await alice.put("/api/v1/queue", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = await alice.put("/api/v1/queue", json={"batch_ids": [a1], "all_users": True})
    assert r.status_code == 403
    assert (await alice.get("/api/v1/queue?all_users=true")).status_code == 403
    assert (await queue_api.client.get("/api/v1/queue")).status_code == 401  # no token
    stray = await queue_api.client.put("/api/v1/queue", json={"batch_ids": [a1]})
    assert stray.status_code == 401
    assert _order((await alice.get("/api/v1/queue")).json()) == before


async def test_an_admin_sees_and_reorders_everyones_queue_when_asked(queue_api: Api) -> None:
    _, root = await queue_api.add_user("root", admin=True)
    _, alice = await queue_api.add_user("alice", credits=100)
    _, bob = await queue_api.add_user("bob", credits=100)
    a, b = await _waiting(alice, "a"), await _waiting(bob, "b")
    assert _order((await root.get("/api/v1/queue")).json()) == []  # root has none of their own
    everyone = (await root.get("/api/v1/queue?all_users=true")).json()
    assert _order(everyone) == [(1, a), (2, b)]
    r = await root.put("/api/v1/queue", json={"batch_ids": [b, a]})
    assert r.status_code == 404  # without all_users an admin moves only their own
    r = await root.put("/api/v1/queue", json={"batch_ids": [b, a], "all_users": True})
    assert _order(r.json()) == [(1, b), (2, a)]
