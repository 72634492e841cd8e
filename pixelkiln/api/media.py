"""Image files for the API: cached thumbnails and ZIP archives streamed as they are written.

A thumbnail is made with Pillow on its first request and kept under
``<data_dir>/thumbs/<batch>/<image>_<size>.webp`` (an upload's under
``thumbs/assets/<asset>_<size>.webp``); later requests are a file read. A ZIP
is written into a sink that hands its bytes to the response as each file goes
in (PNG is already compressed, so entries are stored), so a batch of any size
costs one read buffer of memory, not the archive.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated

import anyio
from fastapi import Depends, Query
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from starlette.types import Receive, Scope, Send

from pixelkiln.api.errors import ApiError, error_response
from pixelkiln.db.records import Asset
from pixelkiln.models import ImageRecord
from pixelkiln.naming import unique_name
from pixelkiln.storage import Storage

THUMB_SIZES = (128, 256, 512)
THUMB_TYPE = "image/webp"
#: thumbnails are kept a day by the browser that asked, never by a shared cache: they are
#: answered to a cookie or a token, and a proxy must not hand one user's to another
PRIVATE_CACHE = "private, max-age=86400"
READ_CHUNK = 256 * 1024


def _thumb_size(
    size: Annotated[int, Query(description=f"Longest side: one of {THUMB_SIZES}.")] = 256,
) -> int:
    if size not in THUMB_SIZES:
        raise ApiError(422, "invalid_request", f"size must be one of {THUMB_SIZES}", field="size")
    return size


#: a thumbnail route's ``size`` query parameter, checked
ThumbSize = Annotated[int, Depends(_thumb_size)]

FILE_MISSING = "file_missing"
_GONE = "the file is no longer on the server (deleted meanwhile?)"


def _file_missing() -> JSONResponse:
    return error_response(404, FILE_MISSING, _GONE)


class StoredFile(FileResponse):
    """A file from the data folder that answers 404 ``file_missing`` when it is gone.

    Starlette's FileResponse raises RuntimeError (a 500) for a missing file, and it looks
    only when the response is sent: after the route's own checks, so an image deleted
    while it is being fetched must be caught here.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stat_result is None:
            try:
                found = await anyio.to_thread.run_sync(os.stat, self.path)
            except FileNotFoundError:
                await _file_missing()(scope, receive, send)
                return
            if stat.S_ISREG(found.st_mode):  # else FileResponse's own error: a bug, not input
                self.stat_result = found
                self.set_stat_headers(found)
        await super().__call__(scope, receive, send)


def thumbnail_path(storage: Storage, image: ImageRecord, size: int) -> Path:
    """The cached thumbnail of an image, made now if missing (blocking: call in a thread)."""
    target = storage.absolute(f"thumbs/{image.batch_id}/{image.id}_{size}.webp")
    return _thumbnail(storage.absolute(image.path), target, size)


def asset_thumbnail_path(storage: Storage, asset: Asset, size: int) -> Path:
    """The cached thumbnail of an uploaded image (blocking: call in a thread)."""
    target = storage.absolute(f"thumbs/assets/{asset.id}_{size}.webp")
    return _thumbnail(storage.absolute(asset.path), target, size)


def _thumbnail(original: Path, target: Path, size: int) -> Path:
    if target.exists():
        return target
    try:
        source = Image.open(original)
    except FileNotFoundError as exc:
        raise ApiError(404, FILE_MISSING, _GONE) from exc
    with source:
        source.seek(0)  # an animated GIF or WebP: its first frame
        source.thumbnail((size, size))
        picture = source.convert("RGBA" if "A" in source.getbands() else "RGB")
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=80)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(out.getvalue())
    os.replace(tmp, target)  # concurrent first requests each write whole files
    return target


def remove_image_files(storage: Storage, image: ImageRecord) -> None:
    storage.delete(image.path)
    for size in THUMB_SIZES:
        storage.delete(f"thumbs/{image.batch_id}/{image.id}_{size}.webp")


class _Sink(io.RawIOBase):
    """A write-only, unseekable file that collects bytes until taken."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def zip_stream(storage: Storage, images: Iterable[ImageRecord]) -> Iterator[bytes]:
    """The bytes of a ZIP of ``images``, produced while it is written (blocking iterator).

    Entries are named as the files are (``photo_00_0.png`` for an upload batch); a name met
    twice (any case) gets ``-2`` before its extension, so no entry hides another.
    """
    sink = _Sink()
    names: set[str] = set()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for image in images:
            path = storage.absolute(image.path)
            if not path.is_file():
                continue  # deleted meanwhile: the archive has the rest
            name = unique_name(PurePosixPath(image.path).name, names)
            with archive.open(name, "w", force_zip64=image.bytes >= 2**31) as entry:
                with path.open("rb") as source:
                    while block := source.read(READ_CHUNK):
                        entry.write(block)
                        yield sink.take()
            yield sink.take()
    yield sink.take()
