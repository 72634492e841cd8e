"""Reading a batch file's bytes, with every OS and encoding error turned into a SpecError."""

from __future__ import annotations

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


def read_text(path: Path, source: str, *, hint: str = "") -> str:
    """The file as text: UTF-8, with or without a byte-order mark, and not blank."""
    data = read_bytes(path, source)
    try:
        # utf-8-sig drops the BOM that Excel and Notepad put in front of UTF-8 files.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8 text (undecodable byte at offset {exc.start})"
        raise file_error(source, f"{message}; {hint}" if hint else message) from exc
    if not text.strip():
        raise file_error(source, "the file is empty")
    return text
