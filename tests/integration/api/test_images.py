"""Records: search generated images, metadata, files, thumbnails, edit and delete."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from apikit import Api, spec
from PIL import Image

pytestmark = pytest.mark.anyio


async def made(api: Api, *prompts: str, **defaults: object) -> dict[str, object]:
    r = await api.client.post("/api/v1/batches?wait=true", json=spec(*prompts, **defaults))
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def test_search_by_prompt_batch_status_and_date_with_both_paginations(api: Api) -> None:
    first = await made(api, "a red fox", "a red barn", name="red")
    await made(api, "a blue lake", "REJECT me", name="blue")
    every = (await api.client.get("/api/v1/images")).json()
    assert every["total"] == 3
    ids = [i["id"] for i in every["items"]]
    assert ids == sorted(ids, reverse=True)
    red = (await api.client.get("/api/v1/images", params={"q": "red"})).json()
    assert {i["prompt"] for i in red["items"]} == {"a red fox", "a red barn"}
    one = (await api.client.get("/api/v1/images", params={"batch_id": first["id"]})).json()
    assert one["total"] == 2 and {i["batch_name"] for i in one["items"]} == {"red"}
    partial = (await api.client.get("/api/v1/images?status=partial")).json()
    assert [i["prompt"] for i in partial["items"]] == ["a blue lake"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = await api.client.get("/api/v1/images", params={"since": tomorrow})
    assert later.json()["total"] == 0
    before = await api.client.get("/api/v1/images", params={"until": tomorrow})
    assert before.json()["total"] == 3
    page = (await api.client.get("/api/v1/images?limit=2")).json()
    assert page["next_offset"] == 2 and page["next_cursor"] == ids[1]
    rest = (
        await api.client.get(f"/api/v1/images?limit=2&before={page['next_cursor']}&count=false")
    ).json()
    assert [i["id"] for i in rest["items"]] == ids[2:] and rest["total"] is None
    assert rest["next_cursor"] is None


async def test_metadata_file_and_cached_thumbnail(api: Api) -> None:
    batch = await made(api, "a lighthouse", width=256, height=128, seed=42)
    image = batch["tasks"][0]["images"][0]  # type: ignore[index]
    meta = (await api.client.get(f"/api/v1/images/{image['id']}")).json()
    assert meta["prompt"] == "a lighthouse" and meta["seed"] == 42
    assert meta["params"]["width"] == 256 and meta["inputs"] == []
    png = await api.client.get(meta["url"])
    assert png.headers["content-type"] == "image/png"
    assert b"parameters" in png.content[:4096]  # WebUI-style PNG info
    thumb = await api.client.get(f"{meta['thumbnail_url']}?size=128")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(thumb.content)) as picture:
        assert picture.format == "WEBP" and picture.size == (128, 64)
    cached = api.ctx.storage.absolute(f"thumbs/{image['batch_id']}/{image['id']}_128.webp")
    assert cached.is_file()
    again = await api.client.get(f"{meta['thumbnail_url']}?size=128")
    assert again.content == thumb.content
    assert (await api.client.get(f"{meta['thumbnail_url']}?size=100")).status_code == 422
    assert (await api.client.get(f"/api/v1/images/{image['id']}/inputs/0")).status_code == 404


async def test_edit_makes_a_new_img2img_batch_and_keeps_the_original(api: Api) -> None:
    batch = await made(api, "a castle", width=128, height=96)
    original = batch["tasks"][0]["images"][0]  # type: ignore[index]
    r = await api.client.post(
        f"/api/v1/images/{original['id']}/edit",
        json={"prompt": "a castle at night", "denoise": 0.3},
    )
    assert r.status_code == 201, r.text
    edited = await api.wait_finished(r.json()["id"])
    assert edited["status"] == "completed" and edited["id"] != batch["id"]
    task = edited["tasks"][0]
    assert task["prompt"] == "a castle at night" and task["params"]["denoise"] == 0.3
    assert (task["params"]["width"], task["params"]["height"]) == (128, 96)
    new = (await api.client.get(f"/api/v1/images/{task['images'][0]['id']}")).json()
    init = await api.client.get(new["inputs"][0]["url"])
    assert init.content == (await api.client.get(original["url"])).content
    assert (await api.client.get(original["url"])).status_code == 200  # kept
    empty = await api.client.post(f"/api/v1/images/{original['id']}/edit", json={"prompt": ""})
    assert empty.status_code == 422


async def test_deleting_an_image_removes_its_file_and_count(api: Api) -> None:
    batch = await made(api, "one", "two")
    image = batch["tasks"][0]["images"][0]  # type: ignore[index]
    await api.client.get(image["thumbnail_url"])
    path = api.ctx.storage.absolute(f"images/{batch['id']}")
    files_before = len(list(path.iterdir()))
    assert (await api.client.delete(f"/api/v1/images/{image['id']}")).status_code == 204
    assert len(list(path.iterdir())) == files_before - 1
    assert (await api.client.get(image["url"])).status_code == 404
    after = (await api.client.get(f"/api/v1/batches/{batch['id']}")).json()
    assert after["counts"]["images"] == 1
    assert (await api.client.delete(f"/api/v1/images/{image['id']}")).status_code == 404
