"""Where image bytes live: a local folder, files named from ids, PNG metadata.

Every path under the data folder is built here from ids and *sanitised*
names; no user string reaches the filesystem as given. Files are written to a
temporary name and renamed, so a crash never leaves half an image, and names
are deterministic (batch, task position, run, image index), so re-running a task
overwrites its files instead of duplicating them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pixelkiln import png
from pixelkiln.exceptions import ServerError

#: image formats accepted as uploads / init images, by Pillow format name
INPUT_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_INPUT_BYTES = 10 * 1024 * 1024
MAX_INPUT_PIXELS = 40_000_000  # decompression-bomb guard: ~6300×6300

#: Windows device names: a file so named (with any extension) opens the device
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))]
)


def safe_name(text: str, fallback: str = "image", limit: int = 80) -> str:
    """``text`` as one file-name part that is safe on every filesystem, in any script.

    Letters, marks and digits of every script are kept ("场景1" stays "场景1"), as
    are ``.``, ``_`` and ``-``; anything else (``/``, ``\\``, NUL and other control
    or invisible characters, spaces, punctuation, symbols) becomes one ``_`` per run.
    No leading or trailing ``._-`` (so never ``.`` or ``..``, nor a hidden file), no
    ``..`` inside, no Windows device name (``CON``, ``nul.png``), at most ``limit``
    bytes of UTF-8 (filesystems count bytes, not characters; a character is never
    cut in half), and never empty: ``fallback`` instead.

    >>> safe_name("场景 1/第二幕")
    '场景_1_第二幕'
    """
    kept: list[str] = []
    for char in unicodedata.normalize("NFC", text):
        if char in "._-" or unicodedata.category(char)[0] in "LMN":
            kept.append(char)
        elif not kept or kept[-1] != "\0":
            kept.append("\0")  # one _ for a run of unsafe characters
    name = _DOTS.sub(".", "".join(kept).replace("\0", "_")).strip("._-")
    name = name.encode()[:limit].decode(errors="ignore").strip("._-")
    stem, dot, rest = name.partition(".")
    if stem.upper() in _RESERVED:
        name = f"{stem}_{dot}{rest}"
    return name or fallback


_DOTS = re.compile(r"\.{2,}")


@dataclass(frozen=True)
class StoredImage:
    """An image file as written, and who made it: what the ``images`` row records."""

    path: str  #: relative to the data folder, '/'-separated
    width: int  #: read from the file: the size the generator returned
    height: int
    bytes: int
    sha256: str
    backend: str = ""  #: name of the backend that made it
    server: str = ""  #: URL of its server, without credentials ("" for a local generator)
    model: str = ""  #: the model used
    #: the generation parameters the generator took, as sent (see ``ImageRecord.params``);
    #: None: not known
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class InputImage:
    """A validated input image (init / reference) as read from a file or upload."""

    data: bytes
    format: str  #: Pillow's name: PNG, JPEG, GIF, WEBP
    mime: str
    width: int
    height: int
    sha256: str


def infotext(prompt: str, negative_prompt: str, settings: dict[str, object]) -> str:
    """WebUI-style ``parameters`` text: prompt, ``Negative prompt:``, then ``Key: value, ...``."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items() if v not in ("", None)))
    return "\n".join(lines)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, without decoding it."""
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def to_png(data: bytes) -> bytes:
    """Generator output as PNG bytes; JPEG/WebP are re-encoded, garbage is a ServerError."""
    if png.is_png(data) and data[12:16] == b"IHDR":
        return data
    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ServerError(f"generator returned data that is not an image ({exc})") from exc


class Storage:
    """The data folder: images, assets, logs and reports below one root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._root = str(self.root)  # plain strings on the hot path: pathlib costs per call
        self._prefix = self._root + os.sep
        self._made: set[str] = set()  # folders known to exist

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

    def absolute(self, relative: str) -> Path:
        """The file for a stored relative path; refuses anything that leaves the root."""
        return Path(self._checked(relative))

    def _checked(self, relative: str) -> str:
        # normpath, not resolve(): no filesystem calls on the hot path, and the
        # folders below the root are ours (no user-made symlinks to follow)
        path = os.path.normpath(os.path.join(self._root, relative))
        if not path.startswith(self._prefix):
            raise ValueError(f"path escapes the data folder: {relative}")
        return path

    def write_image(self, relative: str, data: bytes, parameters: str) -> StoredImage:
        """Write ``data`` as PNG with the ``parameters`` chunk, atomically; return its record.

        The size recorded is the file's own (what the generator returned, whatever was asked).
        """
        encoded = png.with_text(to_png(data), "parameters", parameters)
        self._write_atomic(self._checked(relative), encoded)
        width, height = png_size(encoded)
        digest = hashlib.sha256(encoded).hexdigest()
        return StoredImage(relative, width, height, len(encoded), digest)

    def write_asset(self, image: InputImage) -> str:
        """Store an input image by content hash (so re-uploads share a file); relative path.

        Storing bytes that are already there touches the file: its modification time is
        when they were last stored, which ``service.retention`` reads as the upload's age.
        """
        ext = {"JPEG": "jpg"}.get(image.format, image.format.lower())
        relative = f"assets/{image.sha256[:2]}/{image.sha256}.{ext}"
        target = self._checked(relative)
        if not os.path.exists(target):
            self._write_atomic(target, image.data)
        else:  # stored again: retention counts an upload's age from its file's last store
            with contextlib.suppress(OSError):
                os.utime(target)
        return relative

    def read(self, relative: str) -> bytes:
        return self.absolute(relative).read_bytes()

    def delete(self, relative: str) -> None:
        self.absolute(relative).unlink(missing_ok=True)

    def delete_image(self, relative: str, batch_id: int, image_id: int) -> None:
        """Delete an image file and its cached thumbnails (``thumbs/<batch>/<id>_<size>.webp``,
        made by the API) once its row is gone."""
        self.delete(relative)
        for thumb in self.absolute(f"thumbs/{batch_id}").glob(f"{image_id}_*.webp"):
            thumb.unlink(missing_ok=True)

    def _write_atomic(self, target: str, data: bytes) -> None:
        folder, name = os.path.split(target)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        # one temp name per target: a re-run after a crash reuses (truncates) the
        # half-written temp file instead of leaving it behind. Only the lease holder
        # of a task writes its files, so two writers of one name do not meet.
        tmp = f"{folder}/.{name}.tmp"
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
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def read_input_image(
    data: bytes, *, max_bytes: int = MAX_INPUT_BYTES, max_pixels: int = MAX_INPUT_PIXELS
) -> InputImage:
    """Validate an input image by its content (not its name); ValueError says what is wrong."""
    if len(data) > max_bytes:
        raise ValueError(f"image is {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        return _inspect_image(data, max_pixels)
    except UnidentifiedImageError as exc:
        # not Pillow's text: it names the buffer's memory address
        raise ValueError("not a readable image (JPEG, PNG, GIF or WebP expected)") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image has too many pixels ({exc})") from exc
    except Image.DecompressionBombWarning as exc:
        # raised only where warnings are errors; elsewhere our own pixel limit (below
        # Pillow's) refuses the image. No catch_warnings: it is not thread-safe.
        raise ValueError(f"image has too many pixels ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"damaged or truncated image ({exc})") from exc


def _inspect_image(data: bytes, max_pixels: int) -> InputImage:
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or ""
        width, height = image.size
        if fmt not in INPUT_FORMATS:
            raise ValueError(
                f"unsupported image type {fmt or 'unknown'}; use PNG, JPEG, GIF or WebP"
            )
        if width * height > max_pixels:
            raise ValueError(
                f"image is {width}×{height} pixels; the limit is {max_pixels:,} pixels"
            )
        image.load()  # catches truncated files
    digest = hashlib.sha256(data).hexdigest()
    return InputImage(data, fmt, INPUT_FORMATS[fmt], width, height, digest)
