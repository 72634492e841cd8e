"""Image files for the API: stored files answered, cached thumbnails, ZIP archives
streamed as they are written.

A stored file is answered from its local file (``StoredFile``) or streamed from the
object store (``StoredObject``), with the same validators and ``Range`` support.
A thumbnail is made with Pillow on its first request and kept in the storage under
``thumbs/<batch>/<image>_<size>.webp`` (an upload's under
``thumbs/assets/<asset>_<size>.webp``); later requests are a read. A ZIP
is written into a sink that hands its bytes to the response as each file goes
in (PNG is already compressed, so entries are stored), so a batch of any size
costs one read buffer of memory, not the archive.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from email.utils import formatdate
from functools import partial
from pathlib import PurePosixPath
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import Depends, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import Receive, Scope, Send

from pixelkiln.api.errors import ApiError, error_response
from pixelkiln.db.records import Asset
from pixelkiln.models import ImageRecord
from pixelkiln.naming import unique_name
from pixelkiln.storage import (
    Storage,
    StorageError,
    StoredFileChanged,
    StoredInfo,
    Stream,
    content_type,
)

log = logging.getLogger("pixelkiln.api")

THUMB_SIZES = (128, 256, 512)
THUMB_TYPE = "image/webp"
#: thumbnails are kept a day by the browser that asked, never by a shared cache: they are
#: answered to a cookie or a token, and a proxy must not hand one user's to another
PRIVATE_CACHE = "private, max-age=86400"
READ_CHUNK = 256 * 1024
#: looks (stat, then a read of that version) before a stored object that keeps being
#: written again is answered 503
VERSION_TRIES = 3


def _thumb_size(
    size: Annotated[
        int,
        Query(
            description=f"Longest side: one of {THUMB_SIZES}.",
            json_schema_extra={"enum": list(THUMB_SIZES)},
        ),
    ] = 256,
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
        if _fresh(Headers(scope=scope), self.headers.get("etag")):
            await self._not_modified(send)
            return
        await super().__call__(scope, receive, send)

    async def _not_modified(self, send: Send) -> None:
        """304: the client's cached copy is this version (its validators, no body)."""
        headers = MutableHeaders(raw=list(self.raw_headers))
        for name in ("content-type", "content-length", "content-disposition"):
            del headers[name]
        await send({"type": "http.response.start", "status": 304, "headers": headers.raw})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def stored_file(
    storage: Storage,
    relative: str,
    *,
    media_type: str | None = None,
    filename: str | None = None,
    disposition: str = "attachment",
    headers: dict[str, str] | None = None,
) -> Response:
    """A stored file as the response: from the local file where there is one (Starlette's
    ``FileResponse``), else streamed from the object store. Both give ``Content-Length``,
    ``Last-Modified``, ``ETag`` and ``Accept-Ranges`` and answer a ``Range``; a missing
    file is 404 ``file_missing``."""
    kind = media_type or content_type(relative)
    try:
        path = storage.local_path(relative)
    except ValueError as exc:  # a stored path outside the root: never served
        raise ApiError(404, FILE_MISSING, _GONE) from exc
    if path is not None:
        return StoredFile(
            path,
            media_type=kind,
            filename=filename,
            content_disposition_type=disposition,
            headers=headers,
        )
    return StoredObject(
        storage,
        relative,
        media_type=kind,
        filename=filename,
        disposition=disposition,
        headers=headers,
    )


class StoredObject(Response):
    """A stored object streamed in blocks (never whole in memory), with the headers and
    ``Range`` handling of :class:`StoredFile`, plus ``If-None-Match`` → 304 (a cached
    copy costs one HEAD to the store, not the bytes).

    Only one range is served; a request for several gets the whole file (RFC 9110 lets a
    server ignore ``Range``). The store unreachable is 503 ``unavailable``.
    """

    def __init__(
        self,
        storage: Storage,
        relative: str,
        *,
        media_type: str,
        filename: str | None = None,
        disposition: str = "attachment",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.storage = storage
        self.relative = relative
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.headers.setdefault("accept-ranges", "bytes")
        if filename is not None:
            quoted = quote(filename)
            if quoted != filename:
                value = f"{disposition}; filename*=utf-8''{quoted}"
            else:
                value = f'{disposition}; filename="{filename}"'
            self.headers.setdefault("content-disposition", value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Headers(scope=scope)
        try:
            for _ in range(VERSION_TRIES):
                info = await anyio.to_thread.run_sync(self.storage.stat, self.relative)
                answer = await self._answer(request, info, scope["method"].upper() == "HEAD")
                if answer is not None:
                    break
            else:  # written again at every try: the next request will find it settled
                raise StorageError(f"{self.relative} kept changing while it was being read")
        except (FileNotFoundError, ValueError):
            await _file_missing()(scope, receive, send)
            return
        except StorageError as exc:
            log.error("image storage unavailable: %s", exc)
            await _unavailable()(scope, receive, send)
            return
        if isinstance(answer, Response):
            await answer(scope, receive, send)
            return
        status, extra, stream = answer
        await self._send_head(send, status, extra, more=stream is not None)
        if stream is not None:
            await _stream_until_disconnect(stream, send, receive)

    async def _answer(
        self, request: Headers, info: StoredInfo, head: bool
    ) -> Response | tuple[int, dict[str, str], Stream | None] | None:
        """(status, extra headers, the body's stream: None for a head alone), or a whole
        answer (416), for the version ``info`` describes; None when the object was
        written again since (stat anew).

        The body is read with ``If-Match`` on that version's ETag: headers made from one
        version never go out with another's bytes (a task run again, a thumbnail rewritten).
        """
        self.headers["last-modified"] = formatdate(info.mtime, usegmt=True)
        self.headers["etag"] = info.etag
        if _fresh(request, info.etag):
            return 304, {}, None
        try:
            span = _range(request, info)
        except _Unsatisfiable:
            headers = {"content-range": f"bytes */{info.size}"}
            return PlainTextResponse(status_code=416, headers=headers)
        start, length = (0, info.size) if span is None else span
        status, extra = 200, {}
        if span is not None:
            status = 206
            extra["content-range"] = f"bytes {start}-{start + length - 1}/{info.size}"
        extra["content-length"] = str(length)
        if head:
            return status, extra, None
        try:
            stream = await anyio.to_thread.run_sync(
                partial(self.storage.open, self.relative, start, length, if_match=info.etag)
            )
        except StoredFileChanged:
            return None
        return status, extra, stream

    async def _send_head(
        self, send: Send, status: int, extra: dict[str, str], more: bool = False
    ) -> None:
        headers = MutableHeaders(raw=list(self.raw_headers))
        for name, value in extra.items():
            headers[name] = value
        if status == 304:
            del headers["content-type"]
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        if not more:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream_until_disconnect(stream: Stream, send: Send, receive: Receive) -> None:
    """Send the stream's blocks; stop reading the store when the client goes away."""

    async def pump() -> None:
        while block := await anyio.to_thread.run_sync(stream.read, READ_CHUNK):
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(pump)
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)


def _fresh(request: Headers, etag: str | None) -> bool:
    """The client's copy is current (``If-None-Match`` names the ETag, or ``*``)."""
    wanted = request.get("if-none-match")
    if wanted is None or etag is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return "*" in tags or etag in tags


#: one range spec: ``first-last``, ``first-`` or ``-suffix``, ASCII digits only (and not
#: so many that ``int()`` refuses them: a longer one is no range, the whole file is sent)
_BYTE_RANGE = re.compile(r"([0-9]{0,64})-([0-9]{0,64})")


class _Unsatisfiable(Exception):
    """The range asked for starts past the end: 416."""


def _range(request: Headers, info: StoredInfo) -> tuple[int, int] | None:
    """(start, length) of the one range asked for; None: the whole file (_Unsatisfiable: 416).

    ``If-Range`` that names another version (ETag or date) means the whole file; so do
    several ranges and a header that is not ``bytes=…``.
    """
    asked = request.get("range")
    if asked is None:
        return None
    condition = request.get("if-range")
    if condition is not None and condition not in (info.etag, formatdate(info.mtime, usegmt=True)):
        return None
    unit, _, spec = asked.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    found = _BYTE_RANGE.fullmatch(spec.strip())
    if found is None or found.group() == "-":  # ASCII only: "²".isdigit() is True
        return None
    first, last = found.groups()
    size = info.size
    if not first:  # the last N bytes
        length = min(int(last), size)
        if not length:
            raise _Unsatisfiable
        return size - length, length
    start = int(first)
    if start >= size:
        raise _Unsatisfiable
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end - start + 1


def _unavailable() -> JSONResponse:
    return error_response(503, "unavailable", "the image storage cannot be reached; retry")


def thumbnail(storage: Storage, image: ImageRecord, size: int) -> str:
    """The cached thumbnail of an image (its stored path), made now if missing (blocking:
    call in a thread). Cached in the storage itself, beside the images: one made by any
    API process serves every other, and deleting a batch's thumbs folder removes it."""
    target = f"thumbs/{image.batch_id}/{image.id}_{size}.webp"
    return _thumbnail(storage, image.path, target, size)


def asset_thumbnail(storage: Storage, asset: Asset, size: int) -> str:
    """The cached thumbnail of an uploaded image (blocking: call in a thread)."""
    return _thumbnail(storage, asset.path, f"thumbs/assets/{asset.id}_{size}.webp", size)


def _thumbnail(storage: Storage, original: str, target: str, size: int) -> str:
    try:
        if storage.exists(target):
            return target
        source = storage.open_image(original)
    except (FileNotFoundError, ValueError) as exc:
        raise ApiError(404, FILE_MISSING, _GONE) from exc
    except StorageError as exc:
        log.error("image storage unavailable: %s", exc)
        raise ApiError(503, "unavailable", "the image storage cannot be reached; retry") from exc
    with source:
        source.seek(0)  # an animated GIF or WebP: its first frame
        source.thumbnail((size, size))
        picture = source.convert("RGBA" if "A" in source.getbands() else "RGB")
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=80)
    storage.write(target, out.getvalue())  # concurrent first requests each write whole files
    return target


def remove_image_files(storage: Storage, image: ImageRecord) -> None:
    """An image's file and thumbnails, once its row is gone (a store that cannot be
    reached leaves them, logged: the row is gone, so it is only space)."""
    try:
        storage.delete_image(image.path, image.batch_id, image.id)
    except StorageError as exc:
        log.warning("could not delete the files of image %d: %s", image.id, exc)


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
            try:
                source = storage.open(image.path)
            except FileNotFoundError:
                continue  # deleted meanwhile: the archive has the rest
            name = unique_name(PurePosixPath(image.path).name, names)
            with source, archive.open(name, "w", force_zip64=image.bytes >= 2**31) as entry:
                while block := source.read(READ_CHUNK):
                    entry.write(block)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
