"""Reading an ``.xlsx`` workbook's first sheet: cell values, unsaved formulas, pictures.

Three things a spreadsheet holds beyond plain values, each handled on purpose
rather than lost:

- A formula cell's value is the one Excel saved with the file. A workbook made by
  a program (not saved by Excel) has none: such a cell is marked
  :class:`UnsavedFormula`, so it is reported as a formula, never as a blank.
- A picture placed on a cell (Excel's "Insert picture" over cells; openpyxl
  anchors) is returned with the cell it sits on, as is a WPS "embed in cell"
  picture (``=DISPIMG("ID_…",1)`` with its bytes in ``xl/cellimages.xml``).
- Drawings are parsed only when the file has some: loading a workbook in full
  (not read-only) costs far more than reading its values.
"""

from __future__ import annotations

import io
import posixpath
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

#: one spreadsheet row: its 1-based number and its cell values
Row = tuple[int, Sequence[Any]]
_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[ >/]")
_DISPIMG = re.compile(r'DISPIMG\(\s*"([^"]+)"', re.IGNORECASE)
_NS = {
    "xdr": "http://schemas.openxmlformats.org/drawingml/2006/spreadsheetDrawing",
    "a": "http://schemas.openxmlformats.org/drawingml/2006/main",
    "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "rel": "http://schemas.openxmlformats.org/package/2006/relationships",
}


@dataclass(frozen=True)
class UnsavedFormula:
    """A formula cell whose file holds no saved value (made by a program, never opened)."""

    formula: str  #: as written in the cell, "=A2&B2"


@dataclass(frozen=True)
class Picture:
    """A picture placed on (or embedded in) a cell of the first sheet."""

    row: int  #: 1-based, as the spreadsheet numbers rows
    column: int  #: 0-based column index
    data: bytes  #: the file's bytes, as stored in the workbook


@dataclass(frozen=True)
class Sheet:
    """The first worksheet: its rows and the pictures on its cells."""

    rows: list[Row]
    pictures: list[Picture]
    #: pictures placed on no cell at all (an absolute anchor): their 1-based top row or 0
    loose: list[int]


def read_sheet(data: bytes) -> Sheet:
    """The first sheet of the workbook in ``data``; any exception means "not an .xlsx"."""
    with _quiet():
        import openpyxl  # imported here: it costs a quarter second at start-up

        archive = zipfile.ZipFile(io.BytesIO(data))
        names = set(archive.namelist())
        rows = _values(openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True))
        if _has_formulas(archive, names):
            formulas = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
            rows = _mark_unsaved(rows, formulas)
        pictures: list[Picture] = []
        loose: list[int] = []
        if any(name.startswith("xl/drawings/") for name in names):
            pictures, loose = _anchored(openpyxl.load_workbook(io.BytesIO(data), data_only=True))
        if "xl/cellimages.xml" in names:
            pictures += _wps_cell_pictures(archive, rows)
        return Sheet(rows, pictures, loose)


@contextmanager
def _quiet() -> Iterator[None]:
    # openpyxl warns about workbook features it drops on reading (data validation
    # extensions, default styles); none of them matter for cell values.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"openpyxl(\.|$)")
        yield


def _values(workbook: Any) -> list[Row]:
    try:
        sheet = _first(workbook)
        # Some writers store a wrong used range; without this read-only mode trusts it
        # and silently drops rows past it.
        sheet.reset_dimensions()
        return [(n, list(cells)) for n, cells in enumerate(sheet.iter_rows(values_only=True), 1)]
    finally:
        workbook.close()


def _first(workbook: Any) -> Any:
    if not workbook.worksheets:
        raise ValueError("the workbook has no worksheet")
    return workbook.worksheets[0]


def _has_formulas(archive: zipfile.ZipFile, names: set[str]) -> bool:
    """Whether any sheet holds a formula: only then is the second pass worth its time."""
    sheets = (n for n in names if n.startswith("xl/worksheets/") and n.endswith(".xml"))
    return any(_FORMULA_TAG.search(archive.read(name)) for name in sheets)


def _mark_unsaved(rows: list[Row], workbook: Any) -> list[Row]:
    """Rows where each formula cell without a saved value holds an UnsavedFormula."""
    try:
        sheet = _first(workbook)
        sheet.reset_dimensions()
        marked: list[Row] = []
        for (number, values), cells in zip(rows, sheet.iter_rows(), strict=False):
            row = list(values)
            for index, cell in enumerate(cells):
                if index < len(row) and row[index] is None and cell.data_type == "f":
                    row[index] = UnsavedFormula(str(cell.value))
            marked.append((number, row))
        return marked + rows[len(marked) :]
    finally:
        workbook.close()


def _anchored(workbook: Any) -> tuple[list[Picture], list[int]]:
    """Pictures on the first sheet's cells (top-left corner), and those on none."""
    try:
        pictures, loose = [], []
        for image in getattr(_first(workbook), "_images", []):
            start = getattr(image.anchor, "_from", None)
            if start is None:  # an absolute anchor: placed by position, on no cell
                loose.append(0)
                continue
            pictures.append(Picture(start.row + 1, start.col, image._data()))
        return pictures, loose
    finally:
        workbook.close()


def _wps_cell_pictures(archive: zipfile.ZipFile, rows: list[Row]) -> list[Picture]:
    """WPS "embed in cell" pictures: a ``DISPIMG("ID")`` cell and ``xl/cellimages.xml``."""
    by_id = _wps_images(archive)
    found = []
    for number, cells in rows:
        for index, value in enumerate(cells):
            match = _DISPIMG.search(value) if isinstance(value, str) else None
            if match and match.group(1) in by_id:
                found.append(Picture(number, index, by_id[match.group(1)]))
    return found


def _wps_images(archive: zipfile.ZipFile) -> dict[str, bytes]:
    """Picture id → bytes, from ``xl/cellimages.xml`` and its relationships."""
    rels_name = "xl/_rels/cellimages.xml.rels"
    if rels_name not in archive.namelist():
        return {}
    relationships = ElementTree.fromstring(archive.read(rels_name))
    targets = {
        rel.get("Id"): rel.get("Target", "")
        for rel in relationships.iter(f"{{{_NS['rel']}}}Relationship")
    }
    images = {}
    cell_images = ElementTree.fromstring(archive.read("xl/cellimages.xml"))
    for pic in cell_images.iter(f"{{{_NS['xdr']}}}pic"):
        props = pic.find("xdr:nvPicPr/xdr:cNvPr", _NS)
        blip = pic.find("xdr:blipFill/a:blip", _NS)
        if props is None or blip is None:
            continue
        target = targets.get(blip.get(f"{{{_NS['r']}}}embed"))
        if target:  # relative to xl/, where cellimages.xml is, or absolute in the package
            path = target[1:] if target.startswith("/") else posixpath.join("xl", target)
            images[props.get("name", "")] = archive.read(posixpath.normpath(path))
    return images


def dispimg(value: Any) -> bool:
    """Whether a cell value is a WPS picture formula (its picture read or not)."""
    return isinstance(value, str) and _DISPIMG.search(value) is not None
