"""Small, fast PNG helpers: encode raw RGB, read and add ``tEXt`` chunks without decoding.

Pillow's PNG writer costs ~200 µs even for a 64×64 image, most of it Python
bookkeeping; the benchmarks draw thousands of placeholders, so raw RGB is
encoded here directly (filter 0, zlib level 1). Adding the WebUI ``parameters``
chunk to a PNG a generator returned splices bytes instead of re-encoding it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_chunk(key: str, value: str) -> bytes:
    """A ``tEXt`` chunk (Latin-1) or, when the value needs it, an ``iTXt`` (UTF-8)."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
    except UnicodeEncodeError:
        body = key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
        return _chunk(b"iTXt", body)


def encode_rgb(raw: bytes, width: int, height: int, level: int = 1) -> bytes:
    """PNG bytes of 8-bit RGB pixels ``raw`` (row-major, ``width * 3`` bytes a row)."""
    stride = width * 3
    if len(raw) != stride * height:
        raise ValueError("raw data does not match width × height × 3")
    rows = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, level))
        + _chunk(b"IEND", b"")
    )


def is_png(data: bytes) -> bool:
    return data[:8] == SIGNATURE


#: the chunks a stored PNG keeps: the picture's own, its colour and size information and
#: text (a generator's parameters or workflow); anything else (a private chunk, APNG
#: frames, a chunk of no standard) is dropped by :func:`cleaned`
KEPT_CHUNKS = frozenset(
    {
        b"IHDR",
        b"PLTE",
        b"IDAT",
        b"IEND",
        b"tRNS",
        b"gAMA",
        b"cHRM",
        b"sRGB",
        b"iCCP",
        b"cICP",
        b"sBIT",
        b"bKGD",
        b"pHYs",
        b"tIME",
        b"tEXt",
        b"zTXt",
        b"iTXt",
    }
)


def is_whole(png: bytes) -> bool:
    """Whether ``png``'s chunks run from IHDR to an IEND, each within the data."""
    chunks = _chunks(png, 8)
    return bool(chunks) and chunks[-1][0] == b"IEND" and chunks[-1][2] <= len(png)


TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def cleaned(png: bytes, texts: Collection[str] | None = None) -> bytes:
    """``png`` without what is not part of its picture: the chunks not in
    :data:`KEPT_CHUNKS`, and every byte after IEND (where a PNG+HTML or PNG+ZIP
    polyglot keeps its other file). ``texts``: the keys of the text chunks kept (None:
    all). The picture's bytes are not touched, so cleaning twice changes nothing.
    """
    keys = None if texts is None else {key.encode("latin-1") + b"\x00" for key in texts}
    kept = [png[:8]]
    for kind, start, end in _chunks(png, 8):
        if kind not in KEPT_CHUNKS:
            continue
        if kind in TEXT_CHUNKS and keys is not None:
            body = png[start + 8 : end - 4]
            if not any(body.startswith(key) for key in keys):
                continue
        kept.append(png[start:end])
    return b"".join(kept)


def with_text(png: bytes, key: str, value: str) -> bytes:
    """``png`` with a text chunk ``key`` = ``value`` placed right after IHDR.

    Any existing chunk with the same key is dropped so re-writing is idempotent.
    """
    if not is_png(png):
        raise ValueError("not a PNG")
    ihdr_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    kept = [png[:ihdr_end], text_chunk(key, value)]
    for kind, start, end in _chunks(png, ihdr_end):
        if kind in (b"tEXt", b"iTXt") and png[start + 8 : end].startswith(key.encode() + b"\x00"):
            continue
        kept.append(png[start:end])
    return b"".join(kept)


def read_text(png: bytes) -> dict[str, str]:
    """Every ``tEXt``/``iTXt`` chunk of ``png`` as key → value."""
    found: dict[str, str] = {}
    for kind, start, end in _chunks(png, 8):
        body = png[start + 8 : end - 4]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            # compression flag, method, language tag \0, translated keyword \0, text
            _, _, rest = rest[2:].partition(b"\x00")
            _, _, text = rest.partition(b"\x00")
            found[key.decode("latin-1")] = text.decode("utf-8")
    return found


def _chunks(png: bytes, offset: int) -> list[tuple[bytes, int, int]]:
    """(kind, start, end) of each chunk from ``offset``; end includes the CRC."""
    out = []
    while offset + 8 <= len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        end = offset + 12 + length
        out.append((kind, offset, end))
        offset = end
        if kind == b"IEND":
            break
    return out
