"""A second user sees none of the first user's work: pages, images and event streams.

bob's pages load his own work (so they have finished loading) and show nothing of
alice's; alice's image, thumbnail, batch, task and event stream answer bob "not found".
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Browse, Server, settled

ALICE = "alice-secret-heron"
BOB = "bob-own-lantern"


def _batch(server: Server, user: str, prompt: str, n: int = 1, **defaults: Any) -> dict[str, Any]:
    spec = {
        "name": f"{prompt} batch",
        "defaults": {"width": 64, "height": 64, **defaults},
        "tasks": [{"prompt": prompt, "key": f"k{i}"} for i in range(n)],
    }
    with server.api(user) as api:
        made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
    return made.json()


@pytest.fixture(scope="module")
def work(server: Server) -> dict[str, Any]:
    """A finished batch each, and a waiting one each (paused: it stays in the queue)."""
    alice, bob = _batch(server, "alice", ALICE), _batch(server, "bob", BOB)
    done = {name: server.wait_batch(name, b["id"]) for name, b in (("alice", alice), ("bob", bob))}
    waiting = {}
    for name, prompt in (("alice", ALICE), ("bob", BOB)):
        # many tasks: the few already running when it pauses end, the rest wait
        queued = _batch(server, name, f"{prompt} later", n=20, backend="slowpoke")
        with server.api(name) as api:
            assert api.post(f"/batches/{queued['id']}/pause").status_code == 200
        waiting[name] = queued
    with server.api("alice") as api:
        task = api.get(f"/batches/{alice['id']}").json()["tasks"][0]
    return {"done": done, "waiting": waiting, "alice_task": task}


def test_bobs_pages_show_none_of_alices_work(browse: Browse, work: dict[str, Any]) -> None:
    page, watch = browse("bob")
    watch.allow(r"status of 404")  # alice's batch, task and image: not found for bob

    page.goto("/records")
    expect(page.get_by_role("button", name="Open image").first).to_be_visible()
    expect(page.get_by_text(BOB).first).to_be_attached()
    expect(page.get_by_text(ALICE)).to_have_count(0)
    assert ALICE not in page.content()

    page.goto(f"/records?q={ALICE}")
    settled(page)
    expect(page.get_by_role("button", name="Open image")).to_have_count(0)

    page.goto("/queue")
    settled(page)
    expect(page.get_by_text(f"{BOB} later batch").first).to_be_visible()
    assert ALICE not in page.content()

    alice_done = work["done"]["alice"]["id"]
    page.goto(f"/batches/{alice_done}")
    expect(page.get_by_text("Batch not found")).to_be_visible()
    assert ALICE not in page.content()

    page.goto(f"/?from_task={work['alice_task']['id']}")
    expect(page.get_by_text("was not found")).to_be_visible()
    assert ALICE not in page.content()

    page.goto(f"/img2img?batch={alice_done}")
    settled(page)
    assert ALICE not in page.content()


def test_alices_images_and_events_are_not_found_for_bob(
    browse: Browse, server: Server, work: dict[str, Any]
) -> None:
    with server.api("alice") as api:
        image = api.get("/images", params={"q": ALICE}).json()["items"][0]
    batch_id = work["done"]["alice"]["id"]
    page, watch = browse("bob")
    watch.allow(r"status of 404")
    page.goto("/records")
    settled(page)
    answers = page.evaluate(
        """async ([image, batch]) => {
            const status = async (url) => (await fetch(url)).status;
            return [
                await status(`/api/v1/images/${image}/file`),
                await status(`/api/v1/images/${image}/thumbnail?size=256`),
                await status(`/api/v1/images/${image}`),
                await status(`/api/v1/batches/${batch}`),
                await status(`/api/v1/batches/${batch}/images.zip`),
                await status(`/api/v1/batches/${batch}/events`),
            ];
        }""",
        [image["id"], batch_id],
    )
    assert answers == [404] * 6
    # an EventSource on alice's batch fails (it never opens) and hears nothing of hers
    heard = page.evaluate(
        """(batch) => new Promise((resolve) => {
            const source = new EventSource(`/api/v1/batches/${batch}/events`);
            const got = [];
            source.onmessage = (e) => got.push(e.data);
            source.addEventListener('batch_update', (e) => got.push(e.data));
            source.onerror = () => { source.close(); resolve({state: source.readyState, got}); };
        })""",
        batch_id,
    )
    assert heard == {"state": 2, "got": []}
    # bob's own stream of all his events carries nothing of alice's
    mine = page.evaluate(
        """() => new Promise((resolve) => {
            const source = new EventSource('/api/v1/events?after=0');
            const got = [];
            for (const type of ['batch_update', 'progress', 'image_generated', 'done', 'info'])
                source.addEventListener(type, (e) => got.push(e.data));
            setTimeout(() => { source.close(); resolve(got); }, 1500);
        })"""
    )
    assert mine and any(BOB in m for m in mine)
    assert not any(ALICE in m for m in mine)
