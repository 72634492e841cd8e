"""Reading a batch file's bytes, with every OS and encoding error turned into a SpecError."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

from pixelkiln.exceptions import Problem, SpecError


def file_error(source: str, message: str) -> SpecError:
    """A SpecError about the whole file (no row, task or field)."""
    return SpecError([Problem(source, "", "", message)])


def read_bytes(path: Path, source: str) -> bytes:
    """The file's bytes; a missing, unreadable or folder path becomes a SpecError."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise file_error(source, "file not found") from exc
    except IsADirectoryError as exc:
        raise file_error(source, "is a folder, not a batch file") from exc
    except OSError as exc:
        raise file_error(source, f"cannot read the file: {exc.strerror or exc}") from exc


def read_text(
    path: Path, source: str, *, hint: str = "", chinese: Callable[[str], bool] | None = None
) -> str:
    """The file as text: UTF-8, with or without a byte-order mark (or UTF-16 and UTF-32
    with theirs), and not blank.

    With ``chinese``, a file that is not UTF-8 is read as GB18030 (what Chinese Excel
    and WPS save a CSV in: GBK is part of it) when ``chinese`` says that reading is
    right, e.g. its header holds Chinese headings; bytes in another code page (cp1252)
    would decode as nonsense Chinese, so the check keeps such a file refused.
    """
    data = read_bytes(path, source)
    try:
        # utf-8-sig drops the BOM that Excel and Notepad put in front of UTF-8 files.
        text = data.decode(_bom_encoding(data) or "utf-8-sig")
    except UnicodeDecodeError as exc:
        if _bom_encoding(data):
            detail = f"{_bom_encoding(data)} (its byte-order mark says) but is not valid"
            message = f"is marked {detail} (byte {exc.start})"
            raise file_error(source, f"{message}; {hint}" if hint else message) from exc
        legacy = _gb18030(data, chinese) if chinese else None
        if legacy is None:
            message = f"is not UTF-8 text (undecodable byte at offset {exc.start})"
            raise file_error(source, f"{message}; {hint}" if hint else message) from exc
        text = legacy
    if not text.strip():
        raise file_error(source, "the file is empty")
    return text


#: byte-order marks, longest first (UTF-32's begins with UTF-16's)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _bom_encoding(data: bytes) -> str | None:
    """UTF-16 or UTF-32, when the text starts with their byte-order mark (Excel's "Unicode
    Text", Notepad's "Unicode"): a mark no text in another encoding starts with."""
    return next((name for bom, name in _BOMS if data.startswith(bom)), None)


def _gb18030(data: bytes, accept: Callable[[str], bool]) -> str | None:
    """The bytes read as GB18030 if they are such text and ``accept`` agrees; else None."""
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return None
    return text if accept(text) else None
