"""Uploads: checked by content, size and pixels; stored by hash; usable as img2img inputs."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from apikit import Api, png_bytes, spec
from PIL import Image

pytestmark = pytest.mark.anyio


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` (its data is a stub)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def one_bit_png(width: int, height: int, tmp: Path) -> bytes:
    """A real, fully decodable image with many pixels and few bytes."""
    path = tmp / "big.png"
    Image.new("1", (width, height)).save(path)
    return path.read_bytes()


async def test_images_of_every_accepted_type_upload_and_feed_img2img(api: Api) -> None:
    files = [
        ("files", ("a.png", png_bytes(), "image/png")),
        ("files", ("b.jpg", png_bytes(fmt="JPEG"), "image/jpeg")),
        ("files", ("c.gif", png_bytes(fmt="GIF"), "image/gif")),
        ("files", ("d.webp", png_bytes(fmt="WEBP"), "application/octet-stream")),
    ]
    r = await api.client.post("/api/v1/assets", files=files)
    assert r.status_code == 201, r.text
    assets = r.json()
    assert [a["mime"] for a in assets] == ["image/png", "image/jpeg", "image/gif", "image/webp"]
    assert all(a["ref"] == f"asset:{a['id']}" for a in assets)
    fetched = await api.client.get(assets[1]["url"])
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    body = spec("repaint it", denoise=0.5)
    body["tasks"][0]["init_image"] = assets[0]["ref"]
    body["tasks"][0]["reference_images"] = [assets[2]["ref"], assets[3]["ref"]]
    batch = (await api.client.post("/api/v1/batches?wait=true", json=body)).json()
    assert batch["status"] == "completed", batch
    image = (await api.client.get(f"/api/v1/images/{batch['tasks'][0]['images'][0]['id']}")).json()
    assert [i["role"] for i in image["inputs"]] == [
        "init_image",
        "reference_image",
        "reference_image",
    ]
    init = await api.client.get(image["inputs"][0]["url"])
    assert init.content == png_bytes()


async def test_the_same_upload_twice_is_one_asset(api: Api) -> None:
    first = (
        await api.client.post("/api/v1/assets", files={"files": ("x.png", png_bytes())})
    ).json()
    again = (
        await api.client.post("/api/v1/assets", files={"files": ("y.png", png_bytes())})
    ).json()
    assert first[0]["id"] == again[0]["id"] and again[0]["filename"] == "y.png"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"#!/bin/sh\necho not an image\n", "not a readable image"),
        (png_bytes()[:80], "truncated"),
        (b"GIF89a" + b"\x00" * 20, ""),
        (b"", ""),
    ],
)
async def test_files_that_are_not_whole_images_are_refused(
    api: Api, content: bytes, needle: str
) -> None:
    r = await api.client.post("/api/v1/assets", files={"files": ("photo.png", content)})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_image" and error["problems"][0]["where"] == "files[0]"
    assert needle in error["message"]


async def test_bmp_is_refused_although_pillow_reads_it(api: Api) -> None:
    r = await api.client.post("/api/v1/assets", files={"files": ("x.png", png_bytes(fmt="BMP"))})
    assert r.status_code == 422 and "unsupported image type" in r.json()["error"]["message"]


async def test_decompression_bombs_are_refused_before_decoding(api: Api, tmp_path: Path) -> None:
    huge = await api.client.post(
        "/api/v1/assets", files={"files": ("b.png", bomb_png(60000, 60000))}
    )
    assert huge.status_code == 422, huge.text
    many = one_bit_png(7000, 7000, tmp_path)  # 49 M pixels in a few kilobytes
    assert len(many) < 100_000
    r = await api.client.post("/api/v1/assets", files={"files": ("m.png", many)})
    assert r.status_code == 422 and "pixels" in r.json()["error"]["message"]


async def test_oversized_files_are_413_and_nothing_is_stored(
    make_api: Callable[..., AbstractAsyncContextManager[Api]],
) -> None:
    async with make_api(server={"max_upload_bytes": 4096}) as api:
        noise = Image.effect_noise((128, 128), 100)
        path = api.ctx.storage.root.parent / "noise.png"
        noise.save(path)
        big = path.read_bytes()
        assert len(big) > 4096
        files = [("files", ("ok.png", png_bytes())), ("files", ("big.png", big))]
        r = await api.client.post("/api/v1/assets", files=files)
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "file_too_large" and error["problems"][0]["where"] == "files[1]"
        listed = await api.client.post("/api/v1/batches/upload", files=files, data={"prompt": "p"})
        assert listed.status_code == 413
        assert (await api.client.get("/api/v1/batches")).json()["total"] == 0


async def test_fifty_one_files_are_too_many(api: Api) -> None:
    files = [("files", (f"{i}.png", png_bytes())) for i in range(51)]
    r = await api.client.post("/api/v1/batches/upload", files=files, data={"prompt": "p"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_files"
    assets = await api.client.post("/api/v1/assets", files=files)
    assert assets.status_code == 422 and assets.json()["error"]["code"] == "too_many_files"


async def test_path_like_filenames_never_reach_the_filesystem(api: Api, tmp_path: Path) -> None:
    names = ["../../escape.png", "..\\..\\win.png", "/etc/cron.d/job.png", "a/../../b.png", "..."]
    files = [("files", (name, png_bytes(64 + 8 * i))) for i, name in enumerate(names)]
    r = await api.client.post("/api/v1/assets", files=files)
    assert r.status_code == 201, r.text
    assert [a["filename"] for a in r.json()] == [
        "escape.png",
        "win.png",
        "job.png",
        "b.png",
        "upload",
    ]
    stored = sorted(
        p.relative_to(api.ctx.storage.root).parts[0] for p in api.ctx.storage.root.rglob("*.png")
    )
    assert stored == ["assets"] * 5
    assert not list(tmp_path.rglob("escape.png")) and not list(tmp_path.rglob("win.png"))


async def test_upload_batch_makes_one_img2img_task_per_image(api: Api) -> None:
    files = [("files", (f"{i}.png", png_bytes(64 + 8 * i))) for i in range(3)]
    r = await api.client.post(
        "/api/v1/batches/upload?wait=true",
        files=files,
        data={
            "prompt": "as a watercolour",
            "name": "album",
            "width": "64",
            "height": "64",
            "denoise": "0.4",
        },
    )
    assert r.status_code == 201, r.text
    batch = r.json()
    assert batch["name"] == "album" and batch["status"] == "completed"
    assert [t["prompt"] for t in batch["tasks"]] == ["as a watercolour"] * 3
    assert all(t["params"]["denoise"] == 0.4 for t in batch["tasks"])
    image = (await api.client.get(f"/api/v1/images/{batch['tasks'][2]['images'][0]['id']}")).json()
    assert image["inputs"][0]["role"] == "init_image"
    assert (await api.client.get(image["inputs"][0]["url"])).content == png_bytes(80)


async def test_upload_batch_with_a_preset_and_form_errors(api: Api) -> None:
    preset = await api.client.post(
        "/api/v1/presets",
        json={
            "title": "Ghibli",
            "content": "{prompt}, studio ghibli style",
            "negative_prompt": "photo",
            "params": {"steps": 12},
            "category": "style",
        },
    )
    assert preset.status_code == 201, preset.text
    files = {"files": ("a.png", png_bytes())}
    data = {
        "prompt": "a castle",
        "preset_id": str(preset.json()["id"]),
        "width": "64",
        "height": "64",
    }
    batch = (await api.client.post("/api/v1/batches/upload", files=files, data=data)).json()
    task = batch["tasks"][0]
    assert task["prompt"] == "a castle, studio ghibli style"
    assert task["negative_prompt"] == "photo" and task["params"]["steps"] == 12
    no_prompt = await api.client.post("/api/v1/batches/upload", files=files)
    assert no_prompt.status_code == 422 and no_prompt.json()["error"]["field"] == "prompt"
    bad = await api.client.post(
        "/api/v1/batches/upload", files=files, data={"prompt": "x", "denoise": "lots"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "denoise"
    none = await api.client.post("/api/v1/batches/upload", data={"prompt": "x"})
    assert none.status_code == 422 and none.json()["error"]["field"] == "files"
    no_preset = await api.client.post(
        "/api/v1/batches/upload", files=files, data={"prompt": "x", "preset_id": "999"}
    )
    assert no_preset.status_code == 404


async def test_someone_elses_upload_cannot_be_used(auth_api: Api) -> None:
    _, alice = await auth_api.add_user("alice", credits=10)
    _, bob = await auth_api.add_user("bob", credits=10)
    asset = (await alice.post("/api/v1/assets", files={"files": ("a.png", png_bytes())})).json()[0]
    body = spec("steal it")
    body["tasks"][0]["init_image"] = asset["ref"]
    r = await bob.post("/api/v1/batches", json=body)
    assert r.status_code == 422 and "no uploaded image" in r.json()["error"]["message"]
    assert (await bob.get(asset["url"])).status_code == 404
    assert (await alice.post("/api/v1/batches", json=body)).status_code == 201


async def test_a_refused_upload_leaves_no_file_behind(api: Api) -> None:
    """One bad file refuses the request, and the good files before it are not kept either."""
    files = [("files", ("ok.png", png_bytes(40, 30))), ("files", ("junk.png", b"not an image"))]
    r = await api.client.post("/api/v1/assets", files=files)
    assert r.status_code == 422
    assets_dir = api.ctx.storage.root / "assets"
    assert not assets_dir.exists() or not any(p.is_file() for p in assets_dir.rglob("*"))
    good = await api.client.post("/api/v1/assets", files=files[:1])
    assert good.status_code == 201
    stored = [p for p in assets_dir.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [png_bytes(40, 30)]
