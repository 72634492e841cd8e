"""The offline ``placeholder`` backend: deterministic images drawn from prompt and seed.

It needs no generator, GPU or network, so the quick start, the tests and the
benchmarks run anywhere. Each image is a gradient with shapes derived from a
hash of (prompt, seed), the prompt drawn on it, and a "PLACEHOLDER" label so
nobody mistakes it for a generated picture. The same prompt and seed always
give the same bytes.

Settable in its ``[[backends]]`` entry, so it can stand in for a slow or
flaky generator: ``latency`` (seconds per request) and ``fail_rate`` (0–1,
share of requests failing with a retryable server error). The option
``reject_if_prompt_contains`` fails matching tasks with a non-retryable error.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hashlib
import random
import struct
import textwrap
import zlib
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

from pixelkiln import png
from pixelkiln.backends.base import BackendDeps, GeneratedImage, GenerationRequest
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import RejectedInputError, ServerError

LABEL = "PLACEHOLDER"
#: images up to this many pixels in all are drawn on the event loop, larger ones in a thread
INLINE_PIXELS = 128 * 128
#: images larger than this many pixels are compressed a band of rows at a time
BANDED_PIXELS = 1024 * 1024
BAND_ROWS = 64


def draw(prompt: str, seed: int, width: int, height: int) -> bytes:
    """PNG bytes of the placeholder picture for (prompt, seed) at width × height."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    image = _gradient(digest[0:3], digest[3:6], width, height)
    pen = ImageDraw.Draw(image)
    for k in range(3):
        x0, y0, x1, y1 = (digest[8 + 4 * k + j] / 255 for j in range(4))
        box = (
            int(min(x0, x1) * width),
            int(min(y0, y1) * height),
            int(max(x0, x1) * width) + 1,
            int(max(y0, y1) * height) + 1,
        )
        colour = (digest[20 + k], digest[21 + k], digest[22 + k])
        (pen.ellipse if digest[24 + k] % 2 else pen.rectangle)(box, outline=colour, width=2)
    label = _label(max(8, min(width, height) // 16))
    image.paste(label, (3, 2), label)
    if height >= 128:  # below that a prompt is not legible
        _draw_prompt(pen, prompt, width, height)
    if width * height <= BANDED_PIXELS:
        return png.encode_rgb(image.tobytes(), width, height)
    data = _encoded_in_bands(image)
    del image, pen
    _give_back_memory()
    return data


def _encoded_in_bands(image: Image.Image) -> bytes:
    """The same PNG bytes as :func:`pixelkiln.png.encode_rgb` of ``image.tobytes()``, made
    a band of rows at a time: a 4096² picture's 50 MB of pixels is not copied twice more
    (as raw bytes and as filtered rows) to be compressed."""
    width, height = image.size
    squeeze = zlib.compressobj(1)
    idat = []
    for top in range(0, height, BAND_ROWS):
        band = image.crop((0, top, width, min(height, top + BAND_ROWS))).tobytes()
        stride = width * 3
        rows = b"".join(
            b"\x00" + band[y : y + stride] for y in range(0, len(band), stride)
        )  # filter 0 on each row, as encode_rgb writes them
        idat.append(squeeze.compress(rows))
    idat.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [png.SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", b"".join(idat)), _chunk(b"IEND")]
    )


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _give_back_memory() -> None:
    """Hand the freed pixels of a large picture back to the system (glibc keeps freed
    blocks of up to 32 MB for reuse, so a server would otherwise stay hundreds of MB above
    its baseline after one 4K placeholder). Elsewhere a no-op."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None
    return trim


def _gradient(top: bytes, bottom: bytes, width: int, height: int) -> Image.Image:
    """Vertical gradient from two colours, interpolated by Pillow in C (fast at any size)."""
    ends = Image.frombytes("RGB", (1, 2), bytes(top) + bytes(bottom))
    column = ends.resize((1, height), Image.Resampling.BILINEAR)
    return column.resize((width, height), Image.Resampling.NEAREST)


@functools.lru_cache(maxsize=32)
def _label(size: int) -> Image.Image:
    """The "PLACEHOLDER" stamp at a font size, white with a black outline (RGBA)."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(LABEL, stroke_width=1)
    stamp = Image.new("RGBA", (int(right - left) + 2, int(bottom - top) + 2))
    ImageDraw.Draw(stamp).text(
        (1 - left, 1 - top),
        LABEL,
        fill=(255, 255, 255, 255),
        font=font,
        stroke_width=1,
        stroke_fill=(0, 0, 0, 255),
    )
    return stamp


def _draw_prompt(pen: ImageDraw.ImageDraw, prompt: str, width: int, height: int) -> None:
    size = max(8, min(width, height) // 16)
    columns = max(8, width // max(1, size // 2 + 1))
    lines = textwrap.wrap(prompt, columns)[: max(1, (height - 2 * size) // (size + 4))]
    pen.multiline_text(
        (4, size + 8),
        "\n".join(lines),
        fill=(255, 255, 255),
        font=_font(size),
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


class PlaceholderBackend:
    """Draws placeholder images; see the module docstring."""

    honours = frozenset({"seed"})  #: the picture comes from prompt, seed and size alone

    def __init__(self, settings: BackendSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._reject = str(settings.options.get("reject_if_prompt_contains", ""))

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        if self.settings.latency:
            await asyncio.sleep(self.settings.latency)
        if self._reject and self._reject in request.prompt:
            raise RejectedInputError(
                f"placeholder rejects prompts containing '{self._reject}'", server="placeholder"
            )
        if self.settings.fail_rate and self._rng.random() < self.settings.fail_rate:
            raise ServerError(
                f"placeholder: simulated failure (fail_rate={self.settings.fail_rate})",
                server="placeholder",
            )
        if request.width * request.height * request.n <= INLINE_PIXELS:
            # ~0.2 ms: cheaper than the thread hop, and too short to hold up the loop
            return self._draw_all(request)
        return await asyncio.to_thread(self._draw_all, request)

    def _draw_all(self, request: GenerationRequest) -> list[GeneratedImage]:
        return [
            GeneratedImage(
                data=draw(request.prompt, request.seed + i, request.width, request.height),
                seed=request.seed + i,
                info={"placeholder": True},
                model=request.model or self.settings.model,
            )
            for i in range(request.n)
        ]

    async def aclose(self) -> None:
        return None


def create(settings: BackendSettings, deps: BackendDeps) -> PlaceholderBackend:
    """Entry-point factory (``pixelkiln.backends`` group)."""
    return PlaceholderBackend(settings)
