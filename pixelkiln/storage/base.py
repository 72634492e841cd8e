"""The storage interface: what every caller may ask of the place image bytes live.

Two implementations: :class:`~pixelkiln.storage.local.LocalStorage` (files under
the data folder, the default) and :class:`~pixelkiln.storage.s3.S3Storage` (objects
in an S3-compatible bucket, for workers on several machines). Both are addressed
by the same *relative paths* (``images/3/fox_0001_0.png``): the database stores
those, and a batch moved from one storage to another keeps its rows.

The rules that must not differ between the two live here: which paths are
allowed (:func:`checked_relative`), how an image is encoded and named, how an
upload is stored by content and "touched" when stored again, how an image's
thumbnails are found.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from PIL import Image

from pixelkiln import png
from pixelkiln.exceptions import StorageError
from pixelkiln.storage.images import InputImage, StoredImage, png_size, safe_name, to_png

PNG_TYPE = "image/png"
COPY_CHUNK = 256 * 1024  #: block size of copies out of the storage
#: content types of the files a storage holds, by extension (what S3 serves them as)
CONTENT_TYPES = {
    "png": PNG_TYPE,
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}


@dataclass(frozen=True)
class StoredInfo:
    """One stored file or object, as a listing or ``stat`` sees it."""

    path: str  #: relative to the storage's root, '/'-separated
    size: int  #: bytes
    mtime: float  #: when last written (or touched), seconds since 1970
    #: a validator that changes when the bytes do (an HTTP ETag, quotes included)
    etag: str


class StoredFileChanged(StorageError):
    """The file is no longer the version asked for (``Storage.open(..., if_match=etag)``):
    it was written again since its ``stat``. Stat it again and start over."""


class Closing:
    """``with`` support for a stream: ``__exit__`` calls its ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None:
        self.close()


class Stream(Protocol):
    """A readable stream of stored bytes (a file, an object's body); close it when done."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> Stream: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


def checked_relative(relative: str) -> str:
    """``relative`` normalised ('/'-separated, no ``.`` parts); ValueError if it leaves the root.

    Absolute paths, ``..`` that climbs out, and the root itself are refused: every
    key or file name is below the root, whatever a row or a request says.

    >>> checked_relative("images/3/./a.png")
    'images/3/a.png'
    """
    path = posixpath.normpath(relative.replace("\\", "/")) if relative else ""
    if not path or path == "." or path.startswith(("/", "../")) or path == "..":
        raise ValueError(f"path escapes the data folder: {relative}")
    return path


class Storage(ABC):
    """Where images, uploads and thumbnails live, by relative path (see the module docstring).

    Every method is blocking: call it in a thread from async code. Missing files are
    ``FileNotFoundError``; an unreachable store is :class:`StorageError`; a path that
    leaves the root is ``ValueError``.
    """

    # -- names ---------------------------------------------------------------------------------

    def image_path(
        self, batch_id: int, stem: str, position: int | None, index: int, run: int = 0
    ) -> str:
        """Relative path of image ``index`` of the task at ``position`` in a batch.

        ``position`` None: the stem alone is unique in its batch (a task named after its
        upload, see ``engine.intake.name_outputs``), so the name is ``<stem>_<index>.png``.
        A regenerated task's later runs end in ``_r<run>`` (``s2_0002_0_r1.png``,
        ``photo_00_0_r1.png``): never a first run's name (those end in a digit), so they
        never overwrite any file, and its earlier runs' files are kept as history.
        """
        place = "" if position is None else f"_{position:04d}"
        again = f"_r{run}" if run else ""
        return f"images/{batch_id}/{safe_name(stem, 'task')}{place}_{index}{again}.png"

    @abstractmethod
    def where(self, relative: str) -> str:
        """Where ``relative`` is, for people: a local path or an ``s3://bucket/key`` URL."""

    def local_path(self, relative: str) -> Path | None:
        """The local file of ``relative`` when the storage is a local folder, else None.

        For what is cheaper on a file (the API's ``sendfile``-style responses); every
        caller also works without one.
        """
        return None

    # -- writing -------------------------------------------------------------------------------

    def write_image(self, relative: str, data: bytes, parameters: str) -> StoredImage:
        """Write ``data`` as PNG with the ``parameters`` chunk, atomically; return its record.

        The size recorded is the file's own (what the generator returned, whatever was asked).
        Names are deterministic, so a task run again overwrites its files: never duplicates.
        """
        encoded = png.with_text(to_png(data), "parameters", parameters)
        self._write_image(relative, encoded)
        width, height = png_size(encoded)
        digest = hashlib.sha256(encoded).hexdigest()
        return StoredImage(relative, width, height, len(encoded), digest)

    def _write_image(self, relative: str, data: bytes) -> None:
        """Write an image file; only the lease holder of its task writes its name."""
        self.write(relative, data)

    def write_asset(self, image: InputImage) -> str:
        """Store an input image by content hash (so re-uploads share a file); relative path.

        Storing bytes that are already there touches them: their modification time is
        when they were last stored, which ``service.retention`` reads as the upload's age.
        """
        ext = {"JPEG": "jpg"}.get(image.format, image.format.lower())
        relative = f"assets/{image.sha256[:2]}/{image.sha256}.{ext}"
        self._store_or_touch(relative, image.data)
        return relative

    @abstractmethod
    def _store_or_touch(self, relative: str, data: bytes) -> None:
        """Write ``data`` unless ``relative`` exists; if it does, make its mtime now."""

    @abstractmethod
    def write(self, relative: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old bytes or the new, never half.

        Several writers of one name at once (two first requests of a thumbnail) each
        leave a whole file.
        """

    # -- reading -------------------------------------------------------------------------------

    @abstractmethod
    def read(self, relative: str) -> bytes:
        """The whole file."""

    @abstractmethod
    def open(
        self,
        relative: str,
        start: int = 0,
        length: int | None = None,
        *,
        if_match: str | None = None,
    ) -> Stream:
        """A stream of the file's bytes from ``start`` (``length`` of them, or to the end).

        Close it (``with storage.open(p) as f``). Read it in blocks: a large file is never
        held in memory whole. ``if_match``: the ETag of the version wanted (from
        :meth:`stat`); :class:`StoredFileChanged` if the file is another one now, so
        headers built from a ``stat`` never go out with another version's bytes.
        """

    @abstractmethod
    def stat(self, relative: str) -> StoredInfo:
        """Size, modification time and ETag of one file."""

    def exists(self, relative: str) -> bool:
        try:
            self.stat(relative)
        except FileNotFoundError:
            return False
        return True

    @abstractmethod
    def list_files(self, folder: str) -> Iterator[StoredInfo]:
        """Every file below ``folder`` (relative, any depth), in no particular order."""

    def save_to(self, relative: str, target: Path) -> None:
        """Copy a stored file to a local file (an export, a project's folder), in blocks,
        through a temporary name: a copy stopped half-way never stands as the file."""
        partial = target.with_name(f".{target.name}.part")
        try:
            with self.open(relative) as source, partial.open("wb") as out:
                shutil.copyfileobj(source, out, COPY_CHUNK)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def open_image(self, relative: str) -> Image.Image:
        """The file opened with Pillow (lazily where the storage allows; close it)."""
        return Image.open(io.BytesIO(self.read(relative)))

    # -- deleting ------------------------------------------------------------------------------

    @abstractmethod
    def delete(self, relative: str) -> None:
        """Remove a file; one already gone is no error."""

    @abstractmethod
    def delete_folder(self, folder: str) -> None:
        """Remove every file below ``folder`` (a batch's images or thumbnails)."""

    def delete_image(self, relative: str, batch_id: int, image_id: int) -> None:
        """Delete an image file and its cached thumbnails (``thumbs/<batch>/<id>_<size>.webp``,
        made by the API) once its row is gone."""
        self.delete(relative)
        for thumb in self.thumbnails(f"thumbs/{batch_id}", {image_id}):
            self.delete(thumb.path)

    def thumbnails(self, folder: str, ids: Collection[int]) -> Iterator[StoredInfo]:
        """The cached thumbnails (``<id>_<size>.webp``) in ``folder`` of the images or
        uploads with these ids. Here: one listing of the folder, filtered; a storage that
        can look up names by their start (a glob, a key prefix) does that per id instead,
        never listing the others' (``thumbs/assets`` holds every upload's)."""
        wanted = set(ids)
        for info in self.list_files(folder):
            if _thumbnail_id(info.path) in wanted:
                yield info

    def sweep_leftovers(self, older_than: float) -> int:
        """Remove what writes and deletes that a crash cut short left behind, last changed
        before ``older_than`` (a wall-clock time); how many. Here: nothing is left (an
        object store's write is whole or absent)."""
        return 0

    # -- health --------------------------------------------------------------------------------

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~pixelkiln.exceptions.ConfigError` saying why the storage cannot be
        used (bucket missing, credentials refused, endpoint down); start-up calls it."""

    @abstractmethod
    def close(self) -> None:
        """Release the storage's connections."""


def thumbnails_of(storage: Storage, folder: str, ids: Collection[int]) -> Iterator[StoredInfo]:
    """The cached thumbnails in ``folder`` of these images or uploads
    (:meth:`Storage.thumbnails`)."""
    return storage.thumbnails(folder, ids)


def _thumbnail_id(path: str) -> int | None:
    """The image or upload id of a thumbnail's path (``<id>_<size>.webp``); None: not one."""
    name = path.rsplit("/", 1)[-1]
    number, sep, rest = name.partition("_")
    if sep and rest.endswith(".webp") and number.isascii() and number.isdigit():
        return int(number)
    return None


def content_type(relative: str) -> str:
    """The media type of a stored file, by its extension."""
    return CONTENT_TYPES.get(relative.rsplit(".", 1)[-1].lower(), "application/octet-stream")
