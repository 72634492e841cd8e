"""``POST /api/v1/assets/from-image``: a past result becomes the caller's upload, to be used
as a reference (``asset:<id>``); only one's own images, never a copy twice."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from apikit import Api, spec

pytestmark = pytest.mark.anyio


@pytest.fixture
def api(auth_db_api: Api) -> Api:
    return auth_db_api


async def an_image(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/api/v1/batches?wait=true", json=spec("a red fox"))
    assert r.status_code == 201, r.text
    image: dict[str, Any] = r.json()["tasks"][0]["images"][0]
    return image


async def test_my_image_becomes_my_upload_once_and_feeds_a_batch(api: Api) -> None:
    _, alice = await api.add_user("alice")
    image = await an_image(alice)
    r = await alice.post("/api/v1/assets/from-image", json={"image_id": image["id"]})
    assert r.status_code == 200, r.text
    asset = r.json()
    assert asset["ref"] == f"asset:{asset['id']}"
    assert (asset["width"], asset["height"]) == (image["width"], image["height"])
    assert asset["name"].endswith(".png")
    original = (await alice.get(image["url"])).content
    assert (await alice.get(asset["url"])).content == original

    again = await alice.post("/api/v1/assets/from-image", json={"image_id": image["id"]})
    assert again.json()["id"] == asset["id"]  # no second copy
    uploaded = await alice.post(
        "/api/v1/assets", files=[("files", ("same.png", original, "image/png"))]
    )
    assert uploaded.json()[0]["id"] == asset["id"]  # the same bytes are the same asset
    listed = (await alice.get("/api/v1/assets")).json()
    assert [a["id"] for a in listed["items"]] == [asset["id"]]

    task = {"prompt": "like this", "key": "ref", "reference_images": [asset["ref"]]}
    r = await alice.post(
        "/api/v1/batches?wait=true", json={**spec("x"), "tasks": [task], "name": "refs"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "completed"


async def test_another_users_image_is_not_found_and_nothing_is_stored(api: Api) -> None:
    _, alice = await api.add_user("alice")
    _, bob = await api.add_user("bob")
    _, root = await api.add_user("root", admin=True)
    image = await an_image(alice)
    for client in (bob, root):  # an admin, too: a reference is one's own picture
        r = await client.post("/api/v1/assets/from-image", json={"image_id": image["id"]})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        assert (await client.get("/api/v1/assets")).json()["items"] == []
    missing = await alice.post("/api/v1/assets/from-image", json={"image_id": 10**9})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "body", [{}, {"image_id": 0}, {"image_id": "x"}, {"image_id": 1, "more": 1}, [1]]
)
async def test_bad_bodies_are_422(api: Api, body: Any) -> None:
    _, alice = await api.add_user("alice")
    r = await alice.post("/api/v1/assets/from-image", json=body)
    assert r.status_code == 422, r.text
