"""Retention on S3 storage (a moto server on loopback) when the store misbehaves, and
how it finds uploads' thumbnails.

Once a step's rows are deleted, a file that cannot be removed is only space: the step
must go on with the other files and the pass with the next steps, not stop with the
rest of the objects orphaned. And the thumbnails of the uploads a step removed are
found by their own key prefix (``thumbs/assets/<id>_``), not by listing every upload's
thumbnails once per step.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import anyio
import pytest
from PIL import Image
from sqlalchemy import update

from pixelkiln.app import Kiln
from pixelkiln.db.database import Tx
from pixelkiln.db.records import Asset, record_asset
from pixelkiln.db.tables import assets
from pixelkiln.engine.intake import asset_record
from pixelkiln.exceptions import StorageError
from pixelkiln.service import LOCAL
from pixelkiln.service.retention import DAY, apply, plan
from pixelkiln.storage import StoredInfo, read_input_image
from pixelkiln.storage.s3 import S3Storage
from tests.conftest import make_settings
from tests.s3server import S3Server, s3_storage_settings

pytestmark = pytest.mark.anyio
PREFIX = "kiln"


def _keys(server: S3Server, bucket: str, under: str) -> list[str]:
    answer = server.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/{under}")
    return sorted(item["Key"].removeprefix(f"{PREFIX}/") for item in answer.get("Contents", []))


def _picture(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(out, "PNG")
    return out.getvalue()


async def _upload(kiln: Kiln, colour: str, *, old: bool) -> Asset:
    """An uploaded picture with two cached thumbnails; made a minute ago when ``old``."""
    image = read_input_image(_picture(colour))
    path = kiln.storage.write_asset(image)
    asset = await kiln.db.awrite(record_asset, None, asset_record(image, path, f"{colour}.png"))
    for size in (128, 256):
        kiln.storage.write(f"thumbs/assets/{asset.id}_{size}.webp", b"thumb")
    if old:

        def move(tx: Tx) -> None:
            made = time.time() - 60
            tx.conn.execute(update(assets).where(assets.c.id == asset.id).values(created_at=made))

        await kiln.db.awrite(move)
    return asset


async def test_a_file_that_cannot_be_deleted_leaves_the_others_going(
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        tmp_path / "data",
        storage=s3_storage_settings(s3_server, s3_bucket, PREFIX),
        backends=[{"name": "placeholder", "type": "placeholder"}],
        retention={"images_days": 0, "events_days": 0, "uploads_days": 1.5 / DAY},
    )
    async with Kiln(settings) as kiln:
        storage = kiln.storage
        assert isinstance(storage, S3Storage)
        red, blue = await _upload(kiln, "red", old=True), await _upload(kiln, "blue", old=True)
        made = max(storage.stat(a.path).mtime for a in (red, blue))
        deadline = time.monotonic() + 10  # an object store's clock has whole seconds
        while time.time() < made + 2 and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        kept = await _upload(kiln, "green", old=False)  # stored now: young
        found = await plan(kiln.service, LOCAL)
        assert {u.id for u in found.uploads} == {red.id, blue.id}

        delete, listed = storage.delete, storage._listed
        prefixes: list[str] = []

        def refuse_red(relative: str) -> None:
            if relative == red.path:
                raise StorageError(f"S3 delete of {relative} failed: InternalError")
            delete(relative)

        def listing(prefix: str) -> object:
            prefixes.append(prefix)
            return listed(prefix)

        monkeypatch.setattr(storage, "delete", refuse_red)
        monkeypatch.setattr(storage, "_listed", listing)
        with caplog.at_level(logging.WARNING, "pixelkiln.retention"):
            done = await apply(kiln.service, LOCAL, found)
        upload_rows = await kiln.db.aread(
            lambda conn: [r.id for r in conn.execute(assets.select())]
        )

    assert done.uploads == 2 and not done.stopped
    assert upload_rows == [kept.id]
    # red's object stays (logged); blue's and every thumbnail of both went
    assert _keys(s3_server, s3_bucket, "assets/") == sorted([red.path, kept.path])
    thumbs = [f"thumbs/assets/{kept.id}_128.webp", f"thumbs/assets/{kept.id}_256.webp"]
    assert _keys(s3_server, s3_bucket, "thumbs/") == thumbs
    assert done.files == 5  # blue's object, four thumbnails
    assert f"could not delete {red.path}" in caplog.text
    # one listing per upload, by its own prefix: never the whole thumbs/assets folder
    assert sorted(prefixes) == sorted(f"{PREFIX}/thumbs/assets/{a.id}_" for a in (red, blue)), (
        prefixes
    )


async def test_thumbnails_by_id_on_both_storages(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    from pixelkiln.storage import LocalStorage

    s3 = S3Storage(bucket=s3_bucket, prefix=PREFIX, endpoint=s3_server.endpoint)
    for storage in (s3, LocalStorage(tmp_path / "files")):
        for name in ("1_128.webp", "1_256.webp", "12_128.webp", "2_128.webp", "1_x.png"):
            storage.write(f"thumbs/assets/{name}", b"t")
        found: list[StoredInfo] = list(storage.thumbnails("thumbs/assets", {1, 2, 3}))
        assert sorted(i.path for i in found) == [
            "thumbs/assets/1_128.webp",
            "thumbs/assets/1_256.webp",
            "thumbs/assets/2_128.webp",
        ]
        assert {i.size for i in found} == {1}
    s3.close()


async def test_a_batch_whose_files_cannot_be_listed_is_still_deleted(
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store goes away between a batch's last rows and its files: the batch is gone
    (its files left, logged), and the pass goes on."""
    from pixelkiln.specs import parse_batch
    from tests.integration.test_retention import _age

    settings = make_settings(
        tmp_path / "data",
        storage=s3_storage_settings(s3_server, s3_bucket, PREFIX),
        backends=[{"name": "placeholder", "type": "placeholder"}],
        retention={"images_days": 7, "events_days": 0, "uploads_days": 0},
    )
    async with Kiln(settings) as kiln:
        spec = parse_batch(
            {
                "name": "old",
                "defaults": {"width": 64, "height": 64},
                "tasks": [{"prompt": "a"}, {"prompt": "b"}],
            }
        )
        first, second = [await kiln.submit(spec) for _ in range(2)]
        await kiln.run_until_done([first, second])
        for batch_id in (first, second):
            await _age(kiln, batch_id, 8)
        found = await plan(kiln.service, LOCAL)
        assert {b.id for b in found.batches} == {first, second}
        storage = kiln.storage
        assert isinstance(storage, S3Storage)

        def down(folder: str) -> object:
            raise StorageError("S3 list failed: endpoint unreachable")

        monkeypatch.setattr(storage, "list_files", down)
        done = await apply(kiln.service, LOCAL, found)
    assert done.batches == 2 and not done.stopped
