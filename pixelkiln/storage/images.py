"""What stored images are: safe file names, PNG bytes and their metadata, checked inputs.

Shared by every storage (:mod:`pixelkiln.storage.local`, :mod:`pixelkiln.storage.s3`):
nothing here knows where the bytes go.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import unicodedata
from dataclasses import dataclass
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
