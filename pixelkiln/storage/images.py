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
    """Generator output as PNG bytes; JPEG/WebP are re-encoded, garbage is a ServerError.

    A whole PNG (IHDR first, IEND last) is kept as it is, less what a browser or another
    tool could find in it besides the picture (:func:`pixelkiln.png.cleaned`: anything
    after IEND, private chunks); a PNG cut short is decoded, and refused.
    """
    if png.is_png(data) and data[12:16] == b"IHDR" and png.is_whole(data):
        return png.cleaned(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ServerError(f"generator returned data that is not an image ({exc})") from exc


def read_input_image(
    data: bytes,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    max_pixels: int = MAX_INPUT_PIXELS,
    clean: bool = True,
) -> InputImage:
    """Validate an input image by its content (not its name) and clean it for storing;
    ValueError says what is wrong.

    What comes back is the picture re-encoded (:func:`clean_image`), never the bytes as
    sent, though in the format it was sent in: nothing after the image's end (a PNG with
    HTML or a ZIP appended), no metadata but its colour profile, turned upright by its
    EXIF orientation, CMYK as RGB, 16 bits as 8, an animation's first frame. Its
    ``sha256`` is of those bytes, so the same file uploaded twice is still stored once.
    ``clean=False`` checks the same but keeps the bytes: for a file this server stored
    itself (a generated image made an upload, already cleaned by :func:`to_png`).
    """
    if len(data) > max_bytes:
        raise ValueError(f"image is {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        return _inspect_image(data, max_pixels, clean)
    except UnidentifiedImageError as exc:
        # not Pillow's text: it names the buffer's memory address
        raise ValueError("not a readable image (JPEG, PNG, GIF or WebP expected)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # the warning is raised only where warnings are errors; elsewhere our own pixel
        # limit (below Pillow's) refuses the image. No catch_warnings: not thread-safe.
        raise ValueError(f"image has too many pixels; the limit is {max_pixels:,}") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"damaged or truncated image ({exc})") from exc


def _inspect_image(data: bytes, max_pixels: int, clean: bool) -> InputImage:
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
        if width < 1 or height < 1:
            raise ValueError(f"image is {width}×{height} pixels: it has no picture")
        image.load()  # the first frame; catches truncated files
        if clean:
            fmt, data, (width, height) = clean_image(image, data)
    digest = hashlib.sha256(data).hexdigest()
    return InputImage(data, fmt, INPUT_FORMATS[fmt], width, height, digest)


#: the EXIF tag of the orientation, and how each value is turned upright (as Pillow's
#: ``ImageOps.exif_transpose``; 1 and anything unknown: as it is)
_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: how each format is written again: lossless ones as they were, lossy ones at a quality
#: that loses little (without chroma subsampling)
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "PNG": {},
    "GIF": {},
    "JPEG": {"quality": 95, "subsampling": 0},
    "WEBP": {"quality": 95},
}


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: as if there were none
        return 1
    return value if isinstance(value, int) else 1


#: the one text a stored PNG keeps: the WebUI-style parameters (this server's own, on
#: every image it generated), so an image of ours uploaded again is the same file
KEPT_TEXTS = ("parameters",)


def clean_image(image: Image.Image, data: bytes) -> tuple[str, bytes, tuple[int, int]]:
    """A decoded input image (``data``, as sent) made safe to store: (Pillow format
    name, bytes, size).

    Only the pixels and the colour profile are kept: nothing appended to the file,
    no EXIF, comments or private chunks survive, so a stored upload holds no other file
    (an HTML page, a script, a ZIP) for a browser or another tool to find. The EXIF
    orientation is applied (the picture is stored upright, and every reader sees it
    the same way), CMYK becomes RGB, 16-bit samples become 8-bit, an animation is its
    first frame. The format stays the one sent (a GIF's first frame is a still GIF).

    JPEG, GIF and WebP are decoded and encoded again. An 8-bit PNG standing upright is
    cleaned chunk by chunk instead (:func:`pixelkiln.png.cleaned`: no text but
    :data:`KEPT_TEXTS`, nothing after IEND): the same picture, losslessly, and a file
    this server generated stays byte for byte the same.
    """
    fmt = image.format or "PNG"
    if fmt == "PNG" and data[24:25] != b"\x10" and _orientation(image) == 1 and png.is_whole(data):
        return fmt, png.cleaned(data, KEPT_TEXTS), image.size
    profile = image.info.get("icc_profile")
    transparency = image.info.get("transparency")
    picture = _plain_mode(image, fmt)
    if image.mode == "CMYK":
        profile = None  # a CMYK profile does not describe RGB pixels
    turn = _UPRIGHT.get(_orientation(image))
    turned = picture.transpose(turn) if turn is not None else picture.copy()
    turned.info = {}  # Pillow's writers fall back on it: nothing is written unasked
    options = dict(_SAVE_OPTIONS[fmt])
    if isinstance(profile, bytes) and profile and fmt != "GIF":
        options["icc_profile"] = profile
    if fmt == "GIF" and turned.mode == "P" and isinstance(transparency, int):
        options["transparency"] = transparency
    out = io.BytesIO()
    turned.save(out, format=fmt, **options)
    return fmt, out.getvalue(), turned.size


def _plain_mode(image: Image.Image, fmt: str) -> Image.Image:
    """The image in a mode every generator and browser reads: L, RGB or RGBA (a GIF's
    palette stays one)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scaled, not clipped
        return image.convert("I").point(lambda v: v / 257).convert("L")
    if (image.mode == "L" and fmt != "WEBP") or (fmt == "GIF" and image.mode == "P"):
        return image
    alpha = "A" in image.getbands() or "transparency" in image.info
    if alpha and fmt != "JPEG":
        return image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")
