"""A whole installation on S3 storage (a moto server on loopback): batches run into the
bucket, the API serves the objects (bytes, validators, ranges, thumbnails, ZIP), uploads
and edits, exports, contact sheets and retention work on objects, and nothing of the
images lands in the local data folder."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from sqlalchemy import update

from pixelkiln import png, service
from pixelkiln.app import Kiln
from pixelkiln.db.database import Tx
from pixelkiln.db.records import batch_images, record_asset
from pixelkiln.db.tables import assets
from pixelkiln.db.tasks import images_by_task, list_tasks
from pixelkiln.engine.intake import asset_record
from pixelkiln.export import export_batch
from pixelkiln.service import LOCAL
from pixelkiln.service.retention import DAY, apply, plan
from pixelkiln.storage import Storage, read_input_image
from pixelkiln.storage.s3 import S3Storage
from tests.conftest import make_settings
from tests.integration.api.apikit import Api, api_settings, running_api, spec
from tests.integration.test_retention import _age
from tests.integration.test_sheet_service import _sweep
from tests.s3server import CREDENTIALS, S3Server, s3_storage_settings
from tests.sheet_sweeps import plain_spec

pytestmark = pytest.mark.anyio
PREFIX = "kiln"


def _keys(server: S3Server, bucket: str, under: str = "") -> list[str]:
    pages = server.client().get_paginator("list_objects_v2")
    found = [
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=f"{PREFIX}/{under}")
        for item in page.get("Contents", [])
    ]
    return sorted(found)


def _object(server: S3Server, bucket: str, relative: str) -> dict[str, Any]:
    answer: dict[str, Any] = server.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{relative}")
    answer["data"] = answer["Body"].read()
    return answer


def _picture(colour: str = "red", size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
async def s3_api(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> AsyncIterator[Api]:
    data = tmp_path / "data"
    storage = {"data_dir": str(data), **s3_storage_settings(s3_server, s3_bucket, PREFIX)}
    async with running_api(api_settings(data, storage=storage)) as running:
        yield running


@pytest.fixture
async def s3_kiln(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> AsyncIterator[Kiln]:
    settings = make_settings(
        tmp_path / "data",
        storage=s3_storage_settings(s3_server, s3_bucket, PREFIX),
        backends=[{"name": "placeholder", "type": "placeholder", "concurrency": 4}],
        retention={"images_days": 7, "events_days": 0, "uploads_days": 0},
    )
    async with Kiln(settings) as kiln:
        yield kiln


async def _made(api: Api, *prompts: str, **defaults: object) -> dict[str, Any]:
    r = await api.client.post("/api/v1/batches?wait=true", json=spec(*prompts, **defaults))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_images_go_to_the_bucket_and_the_api_serves_them(
    s3_api: Api, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    batch = await _made(s3_api, "a red fox", "a lighthouse", width=96, height=64, seed=3)
    images = [i for t in batch["tasks"] for i in t["images"]]
    assert len(images) == 2
    keys = _keys(s3_server, s3_bucket, f"images/{batch['id']}/")
    assert len(keys) == 2 and all(k.endswith(".png") for k in keys)
    assert not (tmp_path / "data" / "images").exists()  # nothing of them on this disk
    if s3_api.settings.storage.resolved_database_url().startswith("sqlite"):
        assert (tmp_path / "data" / "kiln.db").is_file()  # the database stays local

    image = images[0]
    meta = (await s3_api.client.get(f"/api/v1/images/{image['id']}")).json()
    paths = {i.image.id: i.image.path for i in await s3_api.ctx.read(batch_images, batch["id"])}
    stored = _object(s3_server, s3_bucket, paths[image["id"]])
    r = await s3_api.client.get(meta["url"])
    assert r.status_code == 200 and r.content == stored["data"]
    assert png.read_text(r.content)["parameters"].startswith("a red fox")
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-length"] == str(len(stored["data"]))
    assert r.headers["etag"] == stored["ETag"] and r.headers["accept-ranges"] == "bytes"
    assert r.headers["last-modified"].endswith("GMT")
    assert r.headers["content-disposition"].startswith('inline; filename="')

    part = await s3_api.client.get(meta["url"], headers={"Range": "bytes=8-23"})
    assert part.status_code == 206 and part.content == stored["data"][8:24]
    assert part.headers["content-range"] == f"bytes 8-23/{len(stored['data'])}"
    tail = await s3_api.client.get(meta["url"], headers={"Range": "bytes=-12"})
    assert tail.status_code == 206 and tail.content == stored["data"][-12:]
    stale = await s3_api.client.get(
        meta["url"], headers={"Range": "bytes=0-3", "If-Range": '"another-version"'}
    )
    assert stale.status_code == 200 and stale.content == stored["data"]
    beyond = await s3_api.client.get(meta["url"], headers={"Range": "bytes=999999-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(stored['data'])}"
    cached = await s3_api.client.get(meta["url"], headers={"If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""


async def test_large_objects_stream_in_blocks_and_ranges_cross_them(
    s3_api: Api, s3_server: S3Server, s3_bucket: str
) -> None:
    batch = await _made(s3_api, "a big one")
    image = batch["tasks"][0]["images"][0]
    [info] = await s3_api.ctx.read(batch_images, batch["id"])
    big = os.urandom(700 * 1024)  # several of the response's 256 KiB blocks
    s3_api.ctx.storage.write(info.image.path, big)
    r = await s3_api.client.get(f"/api/v1/images/{image['id']}/file")
    assert r.status_code == 200 and r.content == big
    start = 256 * 1024 - 5
    r = await s3_api.client.get(
        f"/api/v1/images/{image['id']}/file", headers={"Range": f"bytes={start}-{start + 9}"}
    )
    assert r.status_code == 206 and r.content == big[start : start + 10]


async def test_thumbnails_are_made_from_objects_and_cached_in_the_bucket(
    s3_api: Api, s3_server: S3Server, s3_bucket: str
) -> None:
    batch = await _made(s3_api, "a lighthouse", width=256, height=128)
    image = batch["tasks"][0]["images"][0]
    url = f"/api/v1/images/{image['id']}/thumbnail?size=128"
    thumb = await s3_api.client.get(url)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert thumb.headers["cache-control"] == "private, max-age=86400"
    with Image.open(io.BytesIO(thumb.content)) as picture:
        assert picture.format == "WEBP" and picture.size == (128, 64)
    key = f"thumbs/{batch['id']}/{image['id']}_128.webp"
    assert _object(s3_server, s3_bucket, key)["data"] == thumb.content
    again = await s3_api.client.get(url)
    assert again.content == thumb.content and again.headers["etag"] == thumb.headers["etag"]

    # deleting the image takes its object and its thumbnail's
    assert (await s3_api.client.delete(f"/api/v1/images/{image['id']}")).status_code == 204
    assert _keys(s3_server, s3_bucket, f"thumbs/{batch['id']}/") == []
    assert _keys(s3_server, s3_bucket, f"images/{batch['id']}/") == []


async def test_a_missing_object_is_404_file_missing(s3_api: Api) -> None:
    batch = await _made(s3_api, "a moth")
    image = batch["tasks"][0]["images"][0]
    [info] = await s3_api.ctx.read(batch_images, batch["id"])
    s3_api.ctx.storage.delete(info.image.path)
    for url in (f"/api/v1/images/{image['id']}/file", f"/api/v1/images/{image['id']}/thumbnail"):
        r = await s3_api.client.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] == "file_missing", url


async def test_zip_of_a_batch_and_deleting_it(
    s3_api: Api, s3_server: S3Server, s3_bucket: str
) -> None:
    batch = await _made(s3_api, "one", "two", "three")
    r = await s3_api.client.get(f"/api/v1/batches/{batch['id']}/images.zip")
    assert r.status_code == 200
    keys = _keys(s3_server, s3_bucket, f"images/{batch['id']}/")
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert sorted(archive.namelist()) == sorted(k.rsplit("/", 1)[-1] for k in keys)
        for key in keys:
            relative = key.removeprefix(f"{PREFIX}/")
            name = key.rsplit("/", 1)[-1]
            assert archive.read(name) == _object(s3_server, s3_bucket, relative)["data"]
    await s3_api.client.get(f"/api/v1/images/{batch['tasks'][0]['images'][0]['id']}/thumbnail")
    assert (await s3_api.client.delete(f"/api/v1/batches/{batch['id']}")).status_code == 204
    assert _keys(s3_server, s3_bucket, f"images/{batch['id']}/") == []
    assert _keys(s3_server, s3_bucket, f"thumbs/{batch['id']}/") == []


async def test_uploads_and_edits_live_in_the_bucket(
    s3_api: Api, s3_server: S3Server, s3_bucket: str
) -> None:
    picture = _picture("blue")
    r = await s3_api.client.post(
        "/api/v1/assets", files=[("files", ("blue.png", picture, "image/png"))]
    )
    assert r.status_code == 201, r.text
    [asset] = r.json()
    [key] = _keys(s3_server, s3_bucket, "assets/")
    assert _object(s3_server, s3_bucket, key.removeprefix(f"{PREFIX}/"))["data"] == picture
    got = await s3_api.client.get(f"/api/v1/assets/{asset['id']}/file")
    assert got.status_code == 200 and got.content == picture
    assert got.headers["content-type"] == "image/png"
    thumb = await s3_api.client.get(f"/api/v1/assets/{asset['id']}/thumbnail?size=128")
    assert thumb.status_code == 200
    assert _keys(s3_server, s3_bucket, "thumbs/assets/") == [
        f"{PREFIX}/thumbs/assets/{asset['id']}_128.webp"
    ]

    # an img2img batch from the upload, then an edit of its result: inputs from the bucket
    body = spec("a blue fox", init_image=f"asset:{asset['id']}", width=64, height=64)
    r = await s3_api.client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    made = r.json()["tasks"][0]
    assert made["status"] == "succeeded", made
    image_id = made["images"][0]["id"]
    inputs = await s3_api.client.get(f"/api/v1/images/{image_id}/inputs/0")
    assert inputs.status_code == 200 and inputs.content == picture
    r = await s3_api.client.post(f"/api/v1/images/{image_id}/edit", json={"prompt": "greener"})
    assert r.status_code == 201, r.text
    edit = await s3_api.client.get(f"/api/v1/batches/{r.json()['id']}?wait=true")
    assert edit.status_code == 200
    assert len(_keys(s3_server, s3_bucket, "assets/")) == 2  # the edited image, by content


async def test_export_sheets_and_retention_on_objects(
    s3_kiln: Kiln, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    storage = s3_kiln.storage
    assert isinstance(storage, S3Storage)
    batch_id = await _sweep(s3_kiln, plain_spec())
    await s3_kiln.run_until_done([batch_id])
    images = await s3_kiln.db.aread(images_by_task, batch_id)
    stored = {i.image.path: storage.read(i.image.path) for i in await _infos(s3_kiln, batch_id)}
    assert len(stored) == 18

    # export: a folder and a ZIP of local files, read from the bucket
    count = export_batch(s3_kiln.db, storage, batch_id, tmp_path / "out")
    assert count == 18
    for path, data in stored.items():
        assert (tmp_path / "out" / path.rsplit("/", 1)[-1]).read_bytes() == data
    export_batch(s3_kiln.db, storage, batch_id, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert {archive.read(p.rsplit("/", 1)[-1]) for p in stored} == set(stored.values())
    export_batch(s3_kiln.db, storage, batch_id, tmp_path / "out.csv")
    assert f"s3://{s3_bucket}/{PREFIX}/images/{batch_id}/" in (tmp_path / "out.csv").read_text()

    # a contact sheet drawn from the objects (a cell smaller than its image: the thumbnail)
    first = (await s3_kiln.db.aread(list_tasks, batch_id))[0]
    image = images[first.id][0]
    _draw_red_thumbnail(storage, f"thumbs/{batch_id}/{image.id}_128.webp")
    sheet = await service.sheet_png(s3_kiln.service, LOCAL, batch_id, z="m1", cell=32)
    with Image.open(io.BytesIO(sheet)) as drawn:
        assert _red_somewhere(drawn.convert("RGB"))  # the cell drawn from the thumbnail

    # retention: the batch ended 10 days ago; its objects go with its rows
    await _age(s3_kiln, batch_id, 10)
    found = await plan(s3_kiln.service, LOCAL)
    assert [b.id for b in found.batches] == [batch_id]
    thumb_size = storage.stat(f"thumbs/{batch_id}/{image.id}_128.webp").size
    assert found.files == 19 and found.bytes == sum(map(len, stored.values())) + thumb_size
    await apply(s3_kiln.service, LOCAL, found)
    assert _keys(s3_server, s3_bucket, f"images/{batch_id}/") == []
    assert _keys(s3_server, s3_bucket, f"thumbs/{batch_id}/") == []


async def _infos(kiln: Kiln, batch_id: int) -> list[Any]:
    return list(await kiln.db.aread(batch_images, batch_id))


def _draw_red_thumbnail(storage: Storage, relative: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(out, "WEBP")
    storage.write(relative, out.getvalue())


def _red_somewhere(picture: Image.Image) -> bool:
    raw = picture.tobytes()
    return any(raw[i] > 230 and raw[i + 1] < 30 and raw[i + 2] < 30 for i in range(0, len(raw), 3))


def test_kiln_run_names_the_bucket_folder(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text(
        f'[storage]\ndata_dir = "data"\nbackend = "s3"\ns3_endpoint = "{s3_server.endpoint}"\n'
        f's3_bucket = "{s3_bucket}"\ns3_prefix = "{PREFIX}"\n\n'
        '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n',
        encoding="utf-8",
    )
    batch = tmp_path / "batch.json"
    batch.write_text('{"name": "b", "tasks": [{"prompt": "a fox"}]}', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "AWS_"))}
    env |= CREDENTIALS | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "pixelkiln.cli", "run", str(batch), "-q", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"folder    s3://{s3_bucket}/{PREFIX}/images/1" in done.stdout
    assert len(_keys(s3_server, s3_bucket, "images/1/")) == 1
    assert not (tmp_path / "data" / "images").exists()


async def test_an_old_upload_goes_with_its_object_and_thumbnails(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """Uploads older than a second go: the object's LastModified is the upload's age."""
    settings = make_settings(
        tmp_path / "data",
        storage=s3_storage_settings(s3_server, s3_bucket, PREFIX),
        backends=[{"name": "placeholder", "type": "placeholder"}],
        retention={"images_days": 0, "events_days": 0, "uploads_days": 1.5 / DAY},
    )
    async with Kiln(settings) as kiln:
        image = read_input_image(_picture("green"))
        path = kiln.storage.write_asset(image)
        asset = await kiln.db.awrite(record_asset, None, asset_record(image, path, "g.png"))
        kiln.storage.write(f"thumbs/assets/{asset.id}_128.webp", b"thumb")
        made = kiln.storage.stat(path).mtime
        await _aged_asset(kiln, asset.id, made - 60)
        deadline = time.monotonic() + 10  # an object store's clock has whole seconds
        while time.time() < made + 2 and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        found = await plan(kiln.service, LOCAL)
        assert [u.id for u in found.uploads] == [asset.id] and found.upload_files == (path,)
        done = await apply(kiln.service, LOCAL, found)
    assert done.uploads == 1 and done.files == 2
    assert _keys(s3_server, s3_bucket, "assets/") == []
    assert _keys(s3_server, s3_bucket, "thumbs/assets/") == []


async def _aged_asset(kiln: Kiln, asset_id: int, when: float) -> None:
    def move(tx: Tx) -> None:
        tx.conn.execute(update(assets).where(assets.c.id == asset_id).values(created_at=when))

    await kiln.db.awrite(move)
