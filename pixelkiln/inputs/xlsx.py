"""Reading an ``.xlsx`` workbook's table sheet: cell values, unsaved formulas, pictures.

Which sheet is the table: the one the workbook opens on (the active sheet) when its
header row looks like a table, else the first sheet whose header row does, else the
active one. A workbook may well start with a sheet of instructions (说明).

Three things a spreadsheet holds beyond plain values, each handled on purpose
rather than lost:

- A formula cell is marked :class:`Formula`, whether or not the file holds the value
  Excel saved for it (a program's workbook has none; a saved one may be blank or an
  error such as ``#REF!``): it is reported as a formula, never read as a blank or as
  its last value. A WPS picture formula (``DISPIMG``) is read as that picture.
- A picture placed on a cell (Excel's "Insert picture" over cells; openpyxl
  anchors) is returned with the cell it sits on, as is a WPS "embed in cell"
  picture (``=DISPIMG("ID_…",1)`` with its bytes in ``xl/cellimages.xml``).
- Drawings are read from the package's parts (workbook → the sheet read →
  drawing → media), and only when the file has some.
"""

from __future__ import annotations

import io
import posixpath
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

#: one spreadsheet row: its 1-based number and its cell values
Row = tuple[int, Sequence[Any]]
#: most bytes a workbook's parts may inflate to (a "zip bomb" of a few KB inflates to GBs)
MAX_INFLATED = 256 * 1024 * 1024
_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[ >/]")
_DISPIMG = re.compile(r'DISPIMG\(\s*"([^"]+)"', re.IGNORECASE)
_NS = {
    "xdr": "http://schemas.openxmlformats.org/drawingml/2006/spreadsheetDrawing",
    "a": "http://schemas.openxmlformats.org/drawingml/2006/main",
    "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "rel": "http://schemas.openxmlformats.org/package/2006/relationships",
    "main": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
}


@dataclass(frozen=True)
class Formula:
    """A formula cell (its saved value, if the file has one, is not used: see the module)."""

    formula: str  #: as written in the cell, "=A2&B2"


#: the name this class had while only formulas without a saved value were marked
UnsavedFormula = Formula


@dataclass(frozen=True)
class Picture:
    """A picture placed on (or embedded in) a cell of the sheet read."""

    row: int  #: 1-based, as the spreadsheet numbers rows
    column: int  #: 0-based column index
    data: bytes  #: the file's bytes, as stored in the workbook


@dataclass(frozen=True)
class Sheet:
    """The worksheet read: its rows and the pictures on its cells."""

    rows: list[Row]
    pictures: list[Picture]
    #: pictures placed on no cell at all (an absolute anchor): their 1-based top row or 0
    loose: list[int]
    name: str = "Sheet1"  #: the sheet's name, as its tab shows it
    others: tuple[str, ...] = ()  #: the workbook's other worksheets, in order
    #: whether its header row looked like a table (else it is the active sheet by default)
    table: bool = True


#: says whether a header row (the first non-blank one) is a table's
HeaderCheck = Callable[[Sequence[Any]], bool]


def read_sheet(data: bytes, looks_like_table: HeaderCheck = lambda _: True) -> Sheet:
    """The table sheet of the workbook in ``data`` (see above, ``looks_like_table``
    judging header rows); any exception means "not an .xlsx"."""
    with _quiet():
        import openpyxl  # imported here: it costs a quarter second at start-up

        archive = zipfile.ZipFile(io.BytesIO(data))
        _check_inflated(archive)
        names = set(archive.namelist())
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            title, table = _choose(workbook, looks_like_table)
            others = tuple(s.title for s in workbook.worksheets if s.title != title)
            rows = _values(workbook[title])
        finally:
            workbook.close()
        if _has_formulas(archive, names):
            formulas = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
            rows = _mark_formulas(rows, formulas, title)
        pictures: list[Picture] = []
        loose: list[int] = []
        if any(name.startswith("xl/drawings/") for name in names):
            pictures, loose = _anchored(archive, title)
        if "xl/cellimages.xml" in names:
            pictures += _wps_cell_pictures(archive, rows)
        return Sheet(rows, pictures, loose, title, others, table)


def _choose(workbook: Any, looks_like_table: HeaderCheck) -> tuple[str, bool]:
    """The name of the sheet to read, and whether its header row looked like a table."""
    sheets = list(workbook.worksheets)
    if not sheets:
        raise ValueError("the workbook has no worksheet")
    active = workbook.active if workbook.active in sheets else sheets[0]
    for sheet in [active, *(s for s in sheets if s is not active)]:
        if looks_like_table(_header_row(sheet)):
            return sheet.title, True
    return active.title, False


def _header_row(sheet: Any) -> Sequence[Any]:
    """The sheet's first row with a value in it (its header, if it is a table)."""
    sheet.reset_dimensions()
    for cells in sheet.iter_rows(values_only=True):
        if any(c is not None and str(c).strip() for c in cells):
            return list(cells)
    return []


@contextmanager
def _quiet() -> Iterator[None]:
    # openpyxl warns about workbook features it drops on reading (data validation
    # extensions, default styles); none of them matter for cell values.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"openpyxl(\.|$)")
        yield


def _values(sheet: Any) -> list[Row]:
    # Some writers store a wrong used range; without this read-only mode trusts it
    # and silently drops rows past it.
    sheet.reset_dimensions()
    return [(n, list(cells)) for n, cells in enumerate(sheet.iter_rows(values_only=True), 1)]


def _check_inflated(archive: zipfile.ZipFile) -> None:
    """ValueError when the workbook's parts inflate past MAX_INFLATED (a "zip bomb").

    The sizes are those the archive declares; reading a part never inflates it past its
    declared size (zipfile stops there, and the checksum then fails).
    """
    inflated = sum(info.file_size for info in archive.infolist())
    if inflated > MAX_INFLATED:
        raise ValueError(
            f"its parts inflate to {inflated:,} bytes; at most {MAX_INFLATED:,} are read"
        )


def _has_formulas(archive: zipfile.ZipFile, names: set[str]) -> bool:
    """Whether any sheet holds a formula: only then is the second pass worth its time.
    Each sheet is read a piece at a time, never inflated whole into memory."""
    sheets = (n for n in names if n.startswith("xl/worksheets/") and n.endswith(".xml"))
    for name in sheets:
        with archive.open(name) as part:
            tail = b""
            while piece := part.read(1 << 20):
                if _FORMULA_TAG.search(tail + piece):
                    return True
                tail = piece[-16:]  # a tag cut in two by the pieces' boundary
    return False


def _mark_formulas(rows: list[Row], workbook: Any, name: str) -> list[Row]:
    """Rows where each formula cell holds a :class:`Formula` in place of its saved value."""
    try:
        sheet = workbook[name]
        sheet.reset_dimensions()
        marked: list[Row] = []
        for (number, values), cells in zip(rows, sheet.iter_rows(), strict=False):
            row = list(values)
            for index, cell in enumerate(cells):
                if index < len(row) and cell.data_type == "f":
                    row[index] = Formula(str(cell.value))
            marked.append((number, row))
        return marked + rows[len(marked) :]
    finally:
        workbook.close()


def _anchored(archive: zipfile.ZipFile, name: str) -> tuple[list[Picture], list[int]]:
    """Pictures on the named sheet's cells (top-left corner), and those on none.

    Read from the package itself rather than through openpyxl, which drops a
    picture it cannot open with a mere warning: here a damaged or linked picture
    comes back with no bytes, to be refused with its row.
    """
    sheet = _sheet_part(archive, name)
    drawings = [
        target
        for rel_id, target in _relationships(archive, sheet).items()
        if rel_id in _drawing_ids(archive, sheet)
    ]
    pictures: list[Picture] = []
    loose: list[int] = []
    for drawing in drawings:
        media = _relationships(archive, drawing)
        for anchor in ElementTree.fromstring(archive.read(drawing)):
            start = anchor.find("xdr:from", _NS)
            for pic in anchor.iter(f"{{{_NS['xdr']}}}pic"):
                if start is None:  # an absolute anchor: placed by position, on no cell
                    loose.append(0)
                    continue
                row, column = (int(start.findtext(f"xdr:{k}", "0", _NS)) for k in ("row", "col"))
                pictures.append(Picture(row + 1, column, _blip(archive, pic, media)))
    return pictures, loose


def _sheet_part(archive: zipfile.ZipFile, name: str) -> str:
    """The package part of the sheet named ``name`` (``xl/worksheets/sheet2.xml``)."""
    part = "xl/workbook.xml"
    for sheet in ElementTree.fromstring(archive.read(part)).iterfind("main:sheets/main:sheet", _NS):
        if sheet.get("name") == name:
            return _relationships(archive, part)[sheet.get(f"{{{_NS['r']}}}id", "")]
    raise ValueError(f"the workbook has no worksheet '{name}'")


def _drawing_ids(archive: zipfile.ZipFile, sheet: str) -> set[str]:
    root = ElementTree.fromstring(archive.read(sheet))
    return {d.get(f"{{{_NS['r']}}}id", "") for d in root.iter(f"{{{_NS['main']}}}drawing")}


def _blip(archive: zipfile.ZipFile, pic: ElementTree.Element, media: dict[str, str]) -> bytes:
    """The picture's bytes; b"" when it links to a file outside the workbook or is missing."""
    blip = pic.find("xdr:blipFill/a:blip", _NS)
    target = media.get(blip.get(f"{{{_NS['r']}}}embed", "") if blip is not None else "")
    if target is None or target not in archive.namelist():
        return b""
    return archive.read(target)


def _relationships(archive: zipfile.ZipFile, part: str) -> dict[str, str]:
    """A package part's relationships: id → the target part's name in the archive."""
    folder, name = posixpath.split(part)
    rels = posixpath.join(folder, "_rels", f"{name}.rels")
    if rels not in archive.namelist():
        return {}
    found = {}
    for rel in ElementTree.fromstring(archive.read(rels)).iter(f"{{{_NS['rel']}}}Relationship"):
        target = rel.get("Target", "")
        if rel.get("TargetMode") == "External" or not target:
            continue
        path = target[1:] if target.startswith("/") else posixpath.join(folder, target)
        found[rel.get("Id", "")] = posixpath.normpath(path)
    return found


def _wps_cell_pictures(archive: zipfile.ZipFile, rows: list[Row]) -> list[Picture]:
    """WPS "embed in cell" pictures: a ``DISPIMG("ID")`` cell and ``xl/cellimages.xml``."""
    by_id = _wps_images(archive)
    found = []
    for number, cells in rows:
        for index, value in enumerate(cells):
            match = _DISPIMG.search(_text(value))
            if match and match.group(1) in by_id:
                found.append(Picture(number, index, by_id[match.group(1)]))
    return found


def _wps_images(archive: zipfile.ZipFile) -> dict[str, bytes]:
    """Picture id → bytes, from ``xl/cellimages.xml`` and its relationships."""
    part = "xl/cellimages.xml"
    media = _relationships(archive, part)
    images = {}
    for pic in ElementTree.fromstring(archive.read(part)).iter(f"{{{_NS['xdr']}}}pic"):
        props = pic.find("xdr:nvPicPr/xdr:cNvPr", _NS)
        if props is not None:
            images[props.get("name", "")] = _blip(archive, pic, media)
    return images


def dispimg(value: Any) -> bool:
    """Whether a cell value is a WPS picture formula (its picture read or not)."""
    return _DISPIMG.search(_text(value)) is not None


def _text(value: Any) -> str:
    """A cell's text for a DISPIMG look: WPS saves the formula's text as its value,
    other writers save no value at all."""
    if isinstance(value, Formula):
        return value.formula
    return value if isinstance(value, str) else ""
