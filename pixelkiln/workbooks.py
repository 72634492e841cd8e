"""Writing tables people open in Excel: exports of a batch and the template to fill in.

Every cell is written as what it is, never as something a spreadsheet would
run: text that begins with ``=``, ``+``, ``-`` or ``@`` is a string cell with
Excel's quote prefix in an XLSX (so editing it keeps it text) and sits behind a
``'`` in a CSV (which :mod:`pixelkiln.inputs.tabular` takes off again). A
prompt pasted from anywhere can hold such text; a formula written from it
would run on the user's machine when they open the export.

>>> data = xlsx_bytes(["prompt"], [["=1+1 a fox"]])   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from typing import Any

from pixelkiln.inputs.headers import Headers, heading
from pixelkiln.inputs.pictures import column_letter
from pixelkiln.inputs.tabular import FORMULA_STARTS

#: how wide (in characters) a column is shown; others get the default
WIDTHS = {
    "key": 12,
    "prompt": 60,
    "negative_prompt": 30,
    "reference_images": 30,
    "init_image": 30,
    "error": 40,
    "images": 30,
    "links": 50,
    "final_prompt": 60,
}
#: the template's columns: those a batch tool's users fill in, and the key
TEMPLATE_COLUMNS = (
    "key",
    "prompt",
    "negative_prompt",
    "aspect_ratio",
    "resolution",
    "reference_images",
    "n",
    "filename_prefix",
)
#: the template's example row, and the note on each heading
TEMPLATE_EXAMPLE: dict[str, Any] = {
    "key": "fox",
    "prompt": "a red fox in a snowy forest, morning light",
    "negative_prompt": "blurry, text",
    "aspect_ratio": "16:9",
    "resolution": "1K",
    "reference_images": None,
    "n": 2,
    "filename_prefix": "fox",
}
TEMPLATE_NOTES = {
    "key": "Optional: this row's name in reports and file names (default: its number).",
    "prompt": "Required: what to draw.",
    "negative_prompt": "Optional: what to keep out of the picture.",
    "aspect_ratio": "1:1, 2:3, 3:2, 3:4, 4:3, 16:9 or 9:16 (default 1:1).",
    "resolution": "1K, 2K or 4K (default 1K).",
    "reference_images": "0-4 images: paste pictures into this cell, or type file paths "
    "separated by ; or new lines (relative to this file).",
    "n": "Images for this row, 1-10 (default 1).",
    "filename_prefix": "Optional: output files start with this.",
}
#: a table's rows under its columns
Rows = Sequence[Sequence[Any]]
_TEXT_FORMAT = "@"  # so that Excel keeps "16:9" as typed, not as the time 16:09


def xlsx_bytes(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], headers: Headers = "en"
) -> bytes:
    """A one-sheet workbook: bold headings, frozen header row, readable widths."""
    import openpyxl  # imported here: it costs a quarter second at start-up
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("tasks")
    sheet.freeze_panes = "A2"
    for index, column in enumerate(columns):
        width = WIDTHS.get(column)
        if width:
            sheet.column_dimensions[column_letter(index)].width = width
    bold = Font(bold=True)
    titles = []
    for column in columns:
        cell = WriteOnlyCell(sheet, value=heading(column, headers))
        cell.font = bold
        titles.append(cell)
    sheet.append(titles)
    for row in rows:
        sheet.append([_cell(sheet, WriteOnlyCell, value) for value in row])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


#: what XML 1.0 cannot hold (openpyxl's ILLEGAL_CHARACTERS_RE, without importing openpyxl)
ILLEGAL_CHARACTERS_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _cell(sheet: Any, make: Any, value: Any) -> Any:
    if isinstance(value, str):
        # XML 1.0 cannot hold most control characters (a vertical tab pasted from Word,
        # say): openpyxl refuses them, so each becomes U+FFFD instead of failing the file
        value = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
    cell = make(sheet, value=value)
    if isinstance(value, str):
        cell.data_type = "s"  # text as it is: "=..." never becomes a formula
        if value[:1] in FORMULA_STARTS:
            cell.quotePrefix = True  # and stays text when the user edits the cell
    return cell


def csv_bytes(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], headers: Headers = "en"
) -> bytes:
    """UTF-8 with a byte-order mark: Excel reads a CSV as UTF-8 only with it."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow([heading(column, headers) for column in columns])
    writer.writerows([[_csv_text(value) for value in row] for row in rows])
    return out.getvalue().encode("utf-8-sig")


def _csv_text(value: Any) -> Any:
    """A value a spreadsheet would run as a formula gets a leading ``'`` (read back without)."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return "" if value is None else value


def template_bytes(headers: Headers = "en") -> bytes:
    """The batch template: headings with a note each, one example row, text-format cells.

    >>> template_bytes("zh")[:2]
    b'PK'
    """
    import openpyxl
    from openpyxl.comments import Comment
    from openpyxl.styles import Font

    workbook = openpyxl.Workbook()
    sheet = workbook.worksheets[0]
    sheet.title = "tasks"
    sheet.freeze_panes = "A2"
    for index, column in enumerate(TEMPLATE_COLUMNS, start=1):
        title = sheet.cell(1, index, heading(column, headers))
        title.font = Font(bold=True)
        title.comment = Comment(f"{column}: {TEMPLATE_NOTES[column]}", "pixelkiln")
        example = sheet.cell(2, index, TEMPLATE_EXAMPLE[column])
        if column != "n":
            example.number_format = _TEXT_FORMAT
        letter = column_letter(index - 1)
        sheet.column_dimensions[letter].width = WIDTHS.get(column, 14)
        if column != "n":  # rows the user adds keep typed text as text
            sheet.column_dimensions[letter].number_format = _TEXT_FORMAT
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()
