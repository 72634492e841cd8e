"""The default storage: files under the data folder.

Every path is built from ids and *sanitised* names and checked to stay below
the root; no user string reaches the filesystem as given. Files are written to
a temporary name and renamed, so a crash never leaves half an image.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

from PIL import Image

from pixelkiln.storage.base import (
    Closing,
    Storage,
    StoredFileChanged,
    StoredInfo,
    Stream,
    checked_relative,
)

log = logging.getLogger("pixelkiln.storage")


class LocalStorage(Storage):
    """The data folder: images, assets, thumbnails (and, beside them, logs and reports)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._root = str(self.root)  # plain strings on the hot path: pathlib costs per call
        self._prefix = self._root + os.sep
        self._made: set[str] = set()  # folders known to exist

    def absolute(self, relative: str) -> Path:
        """The file for a stored relative path; refuses anything that leaves the root."""
        return Path(self._checked(relative))

    def local_path(self, relative: str) -> Path:
        return self.absolute(relative)

    def where(self, relative: str) -> str:
        return str(self.absolute(relative))

    def _checked(self, relative: str) -> str:
        # normpath, not resolve(): no filesystem calls on the hot path, and the
        # folders below the root are ours (no user-made symlinks to follow)
        path = os.path.normpath(os.path.join(self._root, relative))
        if not path.startswith(self._prefix):
            raise ValueError(f"path escapes the data folder: {relative}")
        return path

    # -- writing -------------------------------------------------------------------------------

    def _write_image(self, relative: str, data: bytes) -> None:
        # one temp name per target: a re-run after a crash reuses (truncates) the
        # half-written temp file instead of leaving it behind. Only the lease holder
        # of a task writes its files, so two writers of one name do not meet.
        target = self._checked(relative)
        folder, name = os.path.split(target)
        self._write_atomic(folder, target, f"{folder}/.{name}.tmp", data)

    def write(self, relative: str, data: bytes) -> None:
        target = self._checked(relative)
        folder, name = os.path.split(target)
        # writers of one name may meet here (two first requests of a thumbnail): each
        # has its own temp file, and each rename leaves a whole file
        tmp = f"{folder}/.{name}.{os.getpid()}-{threading.get_ident()}.tmp"
        self._write_atomic(folder, target, tmp, data)

    def _store_or_touch(self, relative: str, data: bytes) -> None:
        target = self._checked(relative)
        if not os.path.exists(target):
            folder, name = os.path.split(target)
            self._write_atomic(folder, target, f"{folder}/.{name}.tmp", data)
        else:  # stored again: retention counts an upload's age from its file's last store
            with contextlib.suppress(OSError):
                os.utime(target)

    def _write_atomic(self, folder: str, target: str, tmp: str, data: bytes) -> None:
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        try:
            # os-level calls: open() adds fstat/ioctl/lseek round trips per file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except FileNotFoundError:
            # the folder went away (a batch deleted meanwhile) after we made it once
            self._made.discard(folder)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- reading -------------------------------------------------------------------------------

    def read(self, relative: str) -> bytes:
        return self.absolute(relative).read_bytes()

    def open(
        self,
        relative: str,
        start: int = 0,
        length: int | None = None,
        *,
        if_match: str | None = None,
    ) -> Stream:
        file = open(self._checked(relative), "rb")  # the caller closes it
        # writes replace a file whole (a new inode): the open one is the version fstat sees
        if if_match is not None and _info(relative, os.fstat(file.fileno())).etag != if_match:
            file.close()
            raise StoredFileChanged(f"{relative} was written again since it was looked at")
        if start:
            file.seek(start)
        if length is None:
            return file
        return _Bounded(file, length)

    def stat(self, relative: str) -> StoredInfo:
        found = os.stat(self._checked(relative))
        return _info(relative, found)

    def list_files(self, folder: str) -> Iterator[StoredInfo]:
        base = checked_relative(folder)
        for entry in _walk(self._checked(base)):
            try:
                found = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            relative = os.path.relpath(entry.path, self._root).replace(os.sep, "/")
            yield _info(relative, found)

    def open_image(self, relative: str) -> Image.Image:
        return Image.open(self._checked(relative))  # lazily, from the file

    # -- deleting ------------------------------------------------------------------------------

    def delete(self, relative: str) -> None:
        self.absolute(relative).unlink(missing_ok=True)

    def delete_image(self, relative: str, batch_id: int, image_id: int) -> None:
        self.delete(relative)
        # a glob of names: no stat of the batch's other thumbnails
        for thumb in self.absolute(f"thumbs/{batch_id}").glob(f"{image_id}_*.webp"):
            thumb.unlink(missing_ok=True)

    def thumbnails(self, folder: str, ids: Collection[int]) -> Iterator[StoredInfo]:
        """A glob of names per id: the folder's other files are not looked at."""
        base = self.absolute(folder)
        for image_id in sorted(set(ids)):
            for thumb in base.glob(f"{int(image_id)}_*.webp"):
                try:
                    found = thumb.stat()
                except OSError:
                    continue  # removed meanwhile
                relative = os.path.relpath(thumb, self._root).replace(os.sep, "/")
                yield _info(relative, found)

    def delete_folder(self, folder: str) -> None:
        """Delete a folder and what is in it.

        The folder is first renamed out of the way in one step, so nothing ever sees a
        half-deleted folder under its name; batch ids are never reused, so no newer
        batch's files are there. A runner still finishing a task of the batch (cancelled
        in another process, not stopped yet) may write meanwhile: that must not turn a
        delete whose rows are gone into an error, so what cannot be removed is logged.
        ``rmtree`` does not follow symlinks.
        """
        path = self.absolute(folder)
        doomed = path.with_name(f".deleted-{path.name}-{uuid.uuid4().hex}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        self._made.discard(str(path))
        shutil.rmtree(doomed, ignore_errors=True)
        if doomed.exists():
            log.warning("could not remove all of %s", doomed)

    def sweep_leftovers(self, older_than: float) -> int:
        """Temp files of writes (``.NAME.tmp``, ``.NAME.PID-TID.tmp``) and folders renamed
        for deletion (``.deleted-…``) that a SIGKILL left, last changed before
        ``older_than``: the retention sweeper's pass removes them (a write under way is
        milliseconds old). Only our own dot-names are touched; symlinks are not followed."""
        removed = 0
        for folder, dirs, files in os.walk(self._root):
            for name in [d for d in dirs if d.startswith(".deleted-")]:
                dirs.remove(name)  # not walked: it goes as a whole
                path = os.path.join(folder, name)
                if _older(path, older_than):
                    shutil.rmtree(path, ignore_errors=True)
                    removed += not os.path.exists(path)
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    path = os.path.join(folder, name)
                    if _older(path, older_than):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                            removed += 1
        return removed

    # -- health --------------------------------------------------------------------------------

    def check(self) -> None:
        """Nothing to ask: a folder that cannot be written says so on the first write."""

    def close(self) -> None:
        """A folder holds no connections."""


class _Bounded(Closing):
    """A file read up to ``length`` bytes (a Range of it); closes the file with itself."""

    def __init__(self, file: Stream, length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        wanted = self._left if size < 0 else min(size, self._left)
        data = self._file.read(wanted)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


def _info(relative: str, found: os.stat_result) -> StoredInfo:
    # the ETag Starlette's FileResponse gives the same file: a client's cached copy
    # stays valid whichever way the file is answered
    base = f"{found.st_mtime}-{found.st_size}"
    etag = f'"{hashlib.md5(base.encode(), usedforsecurity=False).hexdigest()}"'
    return StoredInfo(relative, found.st_size, found.st_mtime, etag)


def _older(path: str, moment: float) -> bool:
    try:
        return os.lstat(path).st_mtime < moment
    except FileNotFoundError:
        return False


def _walk(folder: str) -> Iterator[os.DirEntry[str]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        elif not entry.name.startswith("."):  # temp files of writes under way
            yield entry
