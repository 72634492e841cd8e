"""Stored objects answered by the API stay one version, and odd ``Range`` headers are no
500 (a moto server on loopback; see tests/s3server.py).

An object written again between the look at it (its size, ETag: the headers) and the
read of its bytes (a task run again, a thumbnail rewritten) must not go out as one
version's headers with another's body: the read names the version it wants
(``If-Match``), and a changed object is looked at again. The overwrite is made to fall
exactly in that gap by the storage's own ``stat``, which writes the object anew right
after it answered.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.datastructures import Headers

from pixelkiln.api.media import _range
from pixelkiln.db.records import batch_images
from pixelkiln.storage import StoredFileChanged, StoredInfo
from pixelkiln.storage.s3 import S3Storage
from tests.integration.api.apikit import Api, api_settings, running_api, spec
from tests.s3server import S3Server, s3_storage_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def s3_api(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> AsyncIterator[Api]:
    data = tmp_path / "data"
    storage = {"data_dir": str(data), **s3_storage_settings(s3_server, s3_bucket)}
    async with running_api(api_settings(data, storage=storage)) as running:
        yield running


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 64).save(out, "PNG")  # noise: the size in bytes follows the pixels
    return out.getvalue()


async def _image(api: Api) -> tuple[str, str]:
    """(file URL, stored path) of a fresh image."""
    r = await api.client.post("/api/v1/batches?wait=true", json=spec("a fox", width=96, height=64))
    assert r.status_code == 201, r.text
    image_id = r.json()["tasks"][0]["images"][0]["id"]
    meta = (await api.client.get(f"/api/v1/images/{image_id}")).json()
    path = next(i.image.path for i in await api.ctx.read(batch_images, r.json()["id"]))
    return meta["url"], path


def _overwrite_after_stat(
    monkeypatch: pytest.MonkeyPatch, storage: S3Storage, data: bytes
) -> list[StoredInfo]:
    """The storage's next ``stat`` answers, then the object is written again (once)."""
    stat: Callable[[str], StoredInfo] = storage.stat
    seen: list[StoredInfo] = []

    def stat_then_overwrite(relative: str) -> StoredInfo:
        info = stat(relative)
        if not seen:
            storage.write(relative, data)
        seen.append(info)
        return info

    monkeypatch.setattr(storage, "stat", stat_then_overwrite)
    return seen


async def test_an_object_written_again_mid_answer_goes_out_whole_and_as_one_version(
    s3_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, path = await _image(s3_api)
    storage = s3_api.ctx.storage
    assert isinstance(storage, S3Storage)
    newer = _png((200, 150))
    assert len(newer) != storage.stat(path).size
    seen = _overwrite_after_stat(monkeypatch, storage, newer)
    r = await s3_api.client.get(url)
    assert r.status_code == 200
    assert r.content == newer and r.headers["content-length"] == str(len(newer))
    assert len(seen) == 2 and r.headers["etag"] == seen[1].etag != seen[0].etag


async def test_a_range_of_an_object_that_shrank_meanwhile_is_416_not_503(
    s3_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, path = await _image(s3_api)
    storage = s3_api.ctx.storage
    assert isinstance(storage, S3Storage)
    size = storage.stat(path).size
    _overwrite_after_stat(monkeypatch, storage, b"tiny")  # the range now starts past its end
    r = await s3_api.client.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */4"


async def test_a_read_of_another_version_is_refused_by_both_storages(
    s3_api: Api, tmp_path: Path
) -> None:
    from pixelkiln.storage import LocalStorage

    local = LocalStorage(tmp_path / "files")
    for storage in (s3_api.ctx.storage, local):
        storage.write("x/a.png", b"first version")
        old = storage.stat("x/a.png")
        with storage.open("x/a.png", 6, 7, if_match=old.etag) as body:
            assert body.read() == b"version"
        storage.write("x/a.png", b"second, longer version")
        for start, length in ((0, None), (3, 4), (0, 0)):
            with pytest.raises(StoredFileChanged):
                storage.open("x/a.png", start, length, if_match=old.etag)


@pytest.mark.parametrize(
    "header",
    ["bytes=\u00b2-", "bytes=0-\u00b9", "bytes=-\u00b3", "bytes=-", "bytes=" + "9" * 5000 + "-"],
    ids=["superscript-first", "superscript-last", "superscript-suffix", "dash", "5000-digits"],
)
def test_a_range_of_other_digits_is_ignored_not_a_500(header: str) -> None:
    info = StoredInfo("a.png", 100, 0.0, '"e"')
    assert _range(Headers({"range": header}), info) is None


async def test_a_range_header_of_superscript_digits_gets_the_whole_file(s3_api: Api) -> None:
    url, _ = await _image(s3_api)
    whole = await s3_api.client.get(url)
    odd: Any = {"Range": "bytes=\u00b2-".encode("latin-1")}
    r = await s3_api.client.get(url, headers=odd)
    assert r.status_code == 200 and r.content == whole.content


@pytest.fixture
async def local_api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(api_settings(tmp_path / "data")) as running:
        yield running


async def test_a_local_file_answers_304_to_the_etag_a_client_holds(local_api: Api) -> None:
    """Files served from the data folder honour ``If-None-Match`` as objects do: a cached
    copy costs no body; another version's tag (or none) gets the bytes."""
    url, _ = await _image(local_api)
    client = local_api.client
    for path in (url, url.replace("/file", "/thumbnail")):
        whole = await client.get(path)
        assert whole.status_code == 200 and whole.content, path
        etag = whole.headers["etag"]
        for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            cached = await client.get(path, headers={"If-None-Match": held})
            assert cached.status_code == 304 and cached.content == b"", (path, held)
            assert cached.headers["etag"] == etag
            assert "content-type" not in cached.headers
        stale = await client.get(path, headers={"If-None-Match": '"another-version"'})
        assert stale.status_code == 200 and stale.content == whole.content
