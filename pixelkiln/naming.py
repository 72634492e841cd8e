"""Names people gave their files, kept: safe to show and to write, and never two alike.

An upload ``photo_00.png`` becomes the key of its img2img task and the stem of its
outputs (``photo_00_0.png``), in the data folder and in every ZIP. Names are
reduced by :func:`~pixelkiln.storage.safe_name` (``../../etc/passwd.png`` →
``passwd.png``, ``CON.png`` → ``CON_.png``; Chinese and other scripts kept), keep
their extension when the rest must be shortened, and are made unique without
regard to case (``photo_00.png`` twice → ``photo_00.png``, ``photo_00-2.png``), as
Windows and macOS folders and ZIP tools compare them.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pixelkiln.storage import safe_name

#: a kept name's UTF-8 length: the file names built from it stay well under 255 bytes
MAX_NAME_BYTES = 80
#: the suffixes of the image types accepted as inputs
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
_MAX_SUFFIX = 6  # ".jpeg" and the like; longer "suffixes" are part of the name


def file_name(raw: str | None, fallback: str = "upload") -> str:
    """The last part of a client's file name, safe as one file-name part, extension kept.

    >>> file_name("C:\\\\photos\\\\照片 1.PNG")
    '照片_1.PNG'
    >>> file_name("../../etc/passwd.png")
    'passwd.png'
    """
    base = PurePosixPath((raw or "").replace("\\", "/")).name
    stem, suffix = _split(base)
    suffix = "." + safe_name(suffix[1:], "", limit=_MAX_SUFFIX) if suffix else ""
    if suffix == ".":
        suffix = ""
    return _fitted(safe_name(stem, fallback), suffix)


def _split(name: str) -> tuple[str, str]:
    """``a.b.png`` → (``a.b``, ``.png``); no suffix for ``.hidden`` or a long tail."""
    stem, dot, tail = name.rpartition(".")
    if not dot or not stem or len(tail) + 1 > _MAX_SUFFIX:
        return name, ""
    return stem, dot + tail


def _fitted(stem: str, suffix: str) -> str:
    """``stem + suffix`` within MAX_NAME_BYTES, shortening the stem (never mid-character)."""
    room = MAX_NAME_BYTES - len(suffix.encode())
    return safe_name(stem, "_", limit=room) + suffix  # safe_name again: "CON" → "CON_"


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem-2.ext``, ``stem-3.ext``… the first not in ``taken`` (any case).

    ``taken`` holds casefolded names and gets the one returned.

    >>> seen: set[str] = set()
    >>> [unique_name(n, seen) for n in ("a.png", "A.PNG", "a.png")]
    ['a.png', 'A-2.PNG', 'a-3.png']
    """
    stem, suffix = _split(name)
    candidate, n = name, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = _fitted(stem, f"-{n}{suffix}")
    taken.add(candidate.casefold())
    return candidate


def unique_stem(stem: str, taken: set[str]) -> str:
    """:func:`unique_name` for a name without its extension (``a.b`` → ``a.b-2``)."""
    return unique_name(f"{stem}.png", taken).removesuffix(".png")


def with_image_suffix(name: str, mime: str) -> str:
    """``name``, with its type's extension added when it has no image extension
    (``scan`` holding a PNG → ``scan.png``), so that it reads as what it is."""
    if _split(name)[1].lower() in IMAGE_SUFFIXES:
        return name
    suffix = _MIME_SUFFIXES.get(mime, "")
    return _fitted(name, suffix) if suffix else name


_MIME_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif"} | {
    "image/webp": ".webp"
}


def image_stem(key: str) -> str | None:
    """The stem of a key that is an image's file name (``photo_00.png`` → ``photo_00``).

    None for other keys (``slide-3``, ``17``): their tasks' files keep the position.
    """
    stem, suffix = _split(key)
    if suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return safe_name(stem, "image", limit=MAX_NAME_BYTES)
