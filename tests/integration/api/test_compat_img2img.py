"""The img2img service's API: its envelope for every bad input, its switch, its shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from apikit import Api, api_settings, png_bytes, running_api

from pixelkiln.db.presets import PresetFields, create_preset

pytestmark = pytest.mark.anyio


@pytest.fixture
async def compat_api(tmp_path: Path) -> AsyncIterator[Api]:
    """Auth and credits on, the img2img service's API switched on."""
    settings = api_settings(
        tmp_path / "data",
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1},
        compat={"img2img_service": True},
    )
    async with running_api(settings) as running:
        yield running


def _images(*names: str, data: bytes | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (n, data if data is not None else png_bytes(), "image/png")) for n in names]


def _refused(response: httpx.Response, status: int) -> dict[str, object]:
    """A 4xx in the service's envelope: ``success: false`` and a message to show."""
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["success"] is False and body["error"] and body["error"] == body["message"]
    return body


async def test_switched_off_the_paths_are_not_there(api: Api) -> None:
    for path in ("/api/batch/queues", "/api/batch/presets", "/api/admin/batch/stats"):
        assert (await api.client.get(path)).status_code == 404


async def test_bad_creates_answer_in_the_envelope(compat_api: Api) -> None:
    _, alice = await compat_api.add_user("alice", credits=1)
    post = alice.post
    no_prompt = await post(
        "/api/batch/create", data={"model": "placeholder"}, files=_images("a.png")
    )
    assert _refused(no_prompt, 422)["field"] == "prompt"
    no_files = await post("/api/batch/create", data={"prompt": "x"})
    assert _refused(no_files, 422)["field"] == "images"
    not_an_image = await post(
        "/api/batch/create", data={"prompt": "x"}, files=_images("a.png", data=b"text")
    )
    assert "a.png" in str(_refused(not_an_image, 422)["problems"])
    many = await post("/api/batch/create", data={"prompt": "x"}, files=_images(*["a.png"] * 51))
    assert _refused(many, 422)["field"] == "images"  # its own field name
    bad_preset = await post(
        "/api/batch/create", data={"prompt": "x", "presetId": "abc"}, files=_images("a.png")
    )
    _refused(bad_preset, 422)
    missing_preset = await post(
        "/api/batch/create", data={"presetId": "999"}, files=_images("a.png")
    )
    _refused(missing_preset, 404)
    poor = await post("/api/batch/create", data={"prompt": "x"}, files=_images("a.png", "b.png"))
    assert _refused(poor, 402)["code"] == "insufficient_credits"
    json_body = await post("/api/batch/create", json={"prompt": "x"})
    _refused(json_body, 422)  # not a form: no field at all


async def test_reads_of_what_is_not_there_or_not_yours(compat_api: Api) -> None:
    _, alice = await compat_api.add_user("alice", credits=5)
    _, bob = await compat_api.add_user("bob")
    created = await alice.post(
        "/api/batch/create",
        data={"prompt": "x", "model": "placeholder"},
        files=_images("cat.png", "cat.png"),
    )
    queue_id = created.json()["queueId"]
    _refused(await bob.get(f"/api/batch/queue/{queue_id}"), 404)
    _refused(await alice.get("/api/batch/queue/abc"), 422)
    _refused(await alice.get("/api/batch/queue/99999999999999999999999"), 422)
    _refused(await alice.get("/api/batch/queues", params={"limit": "many"}), 422)
    _refused(await bob.post(f"/api/batch/queue/{queue_id}/cancel"), 404)
    _refused(await alice.post("/api/batch/task/123456/retry"), 404)
    _refused(await alice.post("/api/admin/config/concurrency", json={"concurrency": 3}), 403)
    body = await compat_api.wait_finished(queue_id, alice)
    assert [t["key"] for t in body["tasks"]] == ["cat.png", "cat-2.png"]
    _refused(await alice.post(f"/api/batch/queue/{queue_id}/cancel"), 409)


async def test_admin_bodies_are_checked(compat_api: Api) -> None:
    _, root = await compat_api.add_user("root", admin=True)
    _refused(await root.post("/api/admin/config/concurrency", json={"concurrency": 0}), 422)
    _refused(await root.post("/api/admin/config/concurrency", content=b"{not json"), 422)
    _refused(await root.post("/api/admin/presets", json={"title": "no content"}), 422)
    _refused(await root.put("/api/admin/presets/77", json={"title": "t"}), 404)
    _refused(await root.delete("/api/admin/presets/77"), 404)
    preset = await compat_api.ctx.write(create_preset, PresetFields(title="A", content="a"))
    renamed = await root.put(
        f"/api/admin/presets/{preset.id}", json={"title": "B", "sortOrder": 4, "isActive": False}
    )
    row = renamed.json()["data"]
    assert (row["title"], row["content"], row["sort_order"], row["is_active"]) == ("B", "a", 4, 0)
    _, alice = await compat_api.add_user("alice")
    assert (await alice.get("/api/batch/presets")).json()["data"] == []  # inactive: hidden


async def test_a_preset_frames_the_prompt_and_usedUserKey_is_false_on_the_system_key(
    compat_api: Api,
) -> None:
    preset = await compat_api.ctx.write(
        create_preset, PresetFields(title="Ink", content="ink drawing of {prompt}")
    )
    _, alice = await compat_api.add_user("alice", credits=5)
    created = await alice.post(
        "/api/batch/create",
        data={"prompt": "a fox", "presetId": str(preset.id), "batchName": "foxes"},
        files=_images("fox.png"),
    )
    body = created.json()
    assert body["success"] is True and body["data"]["queueId"] == body["queueId"]
    assert body["usedUserKey"] is False
    queue = (await alice.get(f"/api/batch/queue/{body['queueId']}")).json()["data"]
    assert queue["tasks"][0]["prompt"] == "ink drawing of a fox"
    assert queue["queue"]["batch_name"] == "foxes"


async def test_the_service_s_lists_show_only_its_own_queues(compat_api: Api) -> None:
    """A user's other batches (made through /api/v1, a slide deck…) are not the service's
    queues: its front end lists, and its admin counts, only what it made."""
    _, alice = await compat_api.add_user("alice", credits=10)
    _, root = await compat_api.add_user("root", admin=True)
    made = await alice.post("/api/batch/create", data={"prompt": "a fox"}, files=_images("a.png"))
    queue_id = made.json()["queueId"]
    other = await alice.post("/api/v1/batches", json={"name": "v1", "tasks": [{"prompt": "x"}]})
    assert other.status_code == 201
    mine = (await alice.get("/api/batch/queues")).json()["data"]
    assert [q["id"] for q in mine] == [queue_id]
    everyone = (await root.get("/api/admin/batch/queues")).json()["data"]
    assert [q["id"] for q in everyone] == [queue_id]
    assert (await root.get("/api/admin/batch/stats")).json()["data"]["total_queues"] == 1
    listed = (await alice.get("/api/v1/batches")).json()["items"]
    assert {b["source"] for b in listed} == {"img2img", "api"}  # ordinary batches all the same
