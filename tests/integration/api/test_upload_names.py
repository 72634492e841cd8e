"""Uploads keep their names and shapes: keys, stored files, ZIP entries, exports, listing."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, api_settings, png_bytes, running_api

from pixelkiln.export import export_batch

pytestmark = pytest.mark.anyio

#: input shapes: portrait, landscape, square and the table's other ratios
SHAPES = [(96, 128), (160, 90), (100, 100), (80, 120), (120, 80), (90, 160)]


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The real app on SQLite and on PostgreSQL."""
    data = tmp_path / "data"
    settings = api_settings(data, storage={"data_dir": str(data), "database_url": database_url})
    async with running_api(settings) as running:
        yield running


def _files(names: list[str], shapes: list[tuple[int, int]]) -> list[tuple[str, Any]]:
    return [
        ("files", (name, png_bytes(*shape), "image/png"))
        for name, shape in zip(names, shapes, strict=True)
    ]


def _stored(api: Api, batch_id: int) -> list[str]:
    folder = api.ctx.storage.root / "images" / str(batch_id)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


async def _zip_names(client: httpx.AsyncClient, batch_id: int) -> list[str]:
    r = await client.get(f"/api/v1/batches/{batch_id}/images.zip")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        return sorted(archive.namelist())


async def test_twelve_uploads_keep_their_names_and_shapes(api: Api, tmp_path: Path) -> None:
    names = [f"photo_{i:02d}.png" for i in range(12)]
    shapes = [SHAPES[i % len(SHAPES)] for i in range(12)]
    r = await api.client.post(
        "/api/v1/batches/upload?wait=true",
        files=_files(names, shapes),
        data={"prompt": "as a watercolour", "denoise": "0.5"},
    )
    assert r.status_code == 201, r.text
    batch = r.json()
    assert batch["status"] == "completed", batch
    assert [t["key"] for t in batch["tasks"]] == names
    outputs = [f"photo_{i:02d}_0.png" for i in range(12)]
    for task, (in_w, in_h) in zip(batch["tasks"], shapes, strict=True):
        image = task["images"][0]
        out_w, out_h = image["width"], image["height"]
        assert (task["params"]["width"], task["params"]["height"]) == (out_w, out_h)
        assert (out_w > out_h) == (in_w > in_h) and (out_w == out_h) == (in_w == in_h)
        # the table's sizes are within 3% of their ratio, and each input here has one of them
        assert abs(out_w / out_h - in_w / in_h) / (in_w / in_h) < 0.03, (task["key"], image)
        assert max(out_w, out_h) <= 1344  # at the default resolution, 1k
        file = await api.client.get(image["url"])
        assert f"{task['key'].removesuffix('.png')}_0.png" in file.headers["content-disposition"]
    assert _stored(api, batch["id"]) == outputs
    assert await _zip_names(api.client, batch["id"]) == outputs
    out = tmp_path / "export.zip"
    assert export_batch(api.ctx.db, api.ctx.storage.root, batch["id"], out) == 12
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert sorted(archive.namelist()) == sorted([*outputs, "manifest.json"])
    assert [(m["key"], m["file"]) for m in manifest] == list(zip(names, outputs, strict=True))


async def test_duplicate_and_hostile_names_are_made_safe_and_unique(
    api: Api, tmp_path: Path
) -> None:
    stem = "a" * 76  # 80 bytes with ".png"
    given = {
        "photo.png": "photo.png",
        "photo.png ": "photo-2.png",  # the same name again (a trailing space is dropped)
        "PHOTO.png": "PHOTO-3.png",  # folders on Windows and macOS ignore case
        "../../etc/passwd.png": "passwd.png",
        "CON.png": "CON_.png",
        "a" * 300 + ".png": f"{stem}.png",
        "照片.png": "照片.png",
        "..\\..\\win.jpg": "win.jpg",
        "nul": "nul_.png",  # a device name, and no extension: its type's added
        "...": "upload.png",
    }
    shapes = [(64 + 8 * i, 64) for i in range(len(given))]  # different bytes: ten assets
    r = await api.client.post(
        "/api/v1/batches/upload?wait=true",
        files=_files(list(given), shapes),
        data={"prompt": "p", "width": "64", "height": "64"},  # a given size wins
    )
    assert r.status_code == 201, r.text
    batch = r.json()
    assert batch["status"] == "completed", batch
    assert [t["key"] for t in batch["tasks"]] == list(given.values())
    assert all(t["images"][0]["width"] == 64 for t in batch["tasks"])
    outputs = sorted(
        f"{key.rsplit('.', 1)[0]}_0.png" for key in given.values()
    )  # "CON_.png" → "CON__0.png", never a device name
    assert _stored(api, batch["id"]) == outputs
    assert await _zip_names(api.client, batch["id"]) == outputs
    inside = api.ctx.storage.root
    assert all(inside in p.parents for p in tmp_path.rglob("*.png") if "passwd" in p.name)
    assert not (tmp_path / "etc").exists()


async def test_a_given_ratio_or_resolution_decides_the_size(api: Api) -> None:
    files = _files(["wide.png", "tall.png"], [(160, 90), (90, 160)])
    ratio = await api.client.post(
        "/api/v1/batches/upload", files=files, data={"prompt": "p", "aspect_ratio": "1:1"}
    )
    assert [(t["params"]["width"], t["params"]["height"]) for t in ratio.json()["tasks"]] == [
        (1024, 1024)
    ] * 2
    resolution = await api.client.post(
        "/api/v1/batches/upload", files=files, data={"prompt": "p", "resolution": "2k"}
    )
    sizes = [(t["params"]["width"], t["params"]["height"]) for t in resolution.json()["tasks"]]
    assert sizes == [(2688, 1536), (1536, 2688)]  # the input's shape at 2k
    for made in (ratio, resolution):
        await api.client.post(f"/api/v1/batches/{made.json()['id']}/cancel")


async def test_uploads_are_listed_newest_first_with_names_and_thumbnails(api: Api) -> None:
    first = _files(["cat.png", "dog.png"], [(64, 64), (72, 64)])
    assert (await api.client.post("/api/v1/assets", files=first)).status_code == 201
    again = _files(["renamed.png", "照片.webp"], [(64, 64), (80, 64)])
    made = (await api.client.post("/api/v1/assets", files=again)).json()
    assert [(a["filename"], a["name"]) for a in made] == [
        ("renamed.png", "cat.png"),  # the same bytes: the same asset, its first name
        ("照片.webp", "照片.webp"),
    ]
    page = (await api.client.get("/api/v1/assets?limit=2")).json()
    assert page["total"] == 3 and page["next_offset"] == 2
    assert [a["name"] for a in page["items"]] == ["照片.webp", "dog.png"]
    rest = (await api.client.get("/api/v1/assets?limit=2&offset=2")).json()
    assert [a["name"] for a in rest["items"]] == ["cat.png"] and rest["next_offset"] is None
    one = page["items"][1]
    assert (one["width"], one["height"], one["mime"]) == (72, 64, "image/png")
    thumb = await api.client.get(one["thumbnail_url"], params={"size": 128})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    again_thumb = await api.client.get(one["thumbnail_url"], params={"size": 128})
    assert again_thumb.content == thumb.content  # cached
    bad = await api.client.get(one["thumbnail_url"], params={"size": 100})
    assert bad.status_code == 422
    assert (await api.client.get(f"/api/v1/assets/{one['id']}")).json()["name"] == "dog.png"
    assert (await api.client.get("/api/v1/assets/999999")).status_code == 404


async def test_each_user_lists_only_their_own_uploads(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = api_settings(
        data,
        storage={"data_dir": str(data), "database_url": database_url},
        auth={"enabled": True},
    )
    async with running_api(settings) as api:
        _, alice = await api.add_user("alice")
        _, bob = await api.add_user("bob")
        made = await alice.post("/api/v1/assets", files=_files(["mine.png"], [(64, 64)]))
        asset = made.json()[0]
        assert (await bob.get("/api/v1/assets")).json()["total"] == 0
        assert (await bob.get(asset["thumbnail_url"])).status_code == 404
        listed = (await alice.get("/api/v1/assets")).json()
        assert [a["name"] for a in listed["items"]] == ["mine.png"]
