"""CSV and XLSX batch files: a header row of parameter names, then one task per row.

Every row is validated as a :class:`~pixelkiln.specs.TaskSpec` and every
problem found, in every row, is reported at once ("row 17, field 'n'"), so a
user fixes a spreadsheet in one pass rather than one error per run. Row
numbers are the spreadsheet's own (header = row 1), blank rows included.
A table written by ``kiln export --to FILE.xlsx|FILE.csv`` reads back as it is:
its result columns (status, error, images) are passed over.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.inputs._files import file_error, read_bytes, read_text
from pixelkiln.problems import MAX_PROBLEMS, capped, problems_from_validation
from pixelkiln.specs import TASK_KEYS, BatchSpec, TaskSpec, salvage

#: columns a table may have: every parameter plus the task key
COLUMN_NAMES = TASK_KEYS
#: columns an export adds (``kiln export --to FILE.xlsx``): read over, so the table runs again
RESULT_COLUMNS = ("status", "error", "images")
#: a CSV cell starting with one of these is a formula to a spreadsheet, so an export writes
#: it behind a ``'``, which reading takes off again
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
__all__ = [
    "COLUMN_NAMES",
    "FORMULA_STARTS",
    "MAX_PROBLEMS",
    "RESULT_COLUMNS",
    "TableBatch",
    "load_csv",
    "load_xlsx",
    "rows_to_batch",
]
#: columns whose values are text: numbers typed into them (a key 17) become "17"
TEXT_COLUMNS = frozenset(
    name for name, info in TaskSpec.model_fields.items() if str in get_args(info.annotation)
)
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_LIST_SEPARATOR = re.compile(r"[;\r\n]+")

#: one spreadsheet row: its 1-based number and its cell values
Row = tuple[int, Sequence[Any]]


@dataclass(frozen=True)
class TableBatch:
    """A batch read from a table, with the spreadsheet row number of each task."""

    spec: BatchSpec
    rows: tuple[int, ...] = field(repr=False)  #: rows[i] is the row task i came from


def load_csv(path: Path, source: str, name: str, *, partial: bool = False) -> TableBatch:
    """Read a CSV file (UTF-8, with or without BOM; ``,`` ``;`` or tab separated)."""
    text = read_text(path, source, hint="in Excel, save as 'CSV UTF-8'")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(text))
    try:
        rows = [(number, _unescaped(cells)) for number, cells in enumerate(reader, start=1)]
    except csv.Error as exc:
        raise file_error(source, f"is not valid CSV (line {reader.line_num}): {exc}") from exc
    return rows_to_batch(rows, source, name, partial=partial)


def _unescaped(cells: list[str]) -> list[str]:
    """Cells as written before an export guarded them against formulas ("'=x" → "=x")."""
    return [c[1:] if c[:1] == "'" and c[1:2] in FORMULA_STARTS else c for c in cells]


def _sniff_delimiter(text: str) -> str:
    """The separator used in the header line.

    Parameter names never contain ``,`` ``;`` or a tab, so counting them in the
    header is reliable, unlike ``csv.Sniffer`` which is easily misled by prompts
    full of commas.
    """
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def load_xlsx(path: Path, source: str, name: str, *, partial: bool = False) -> TableBatch:
    """Read the first sheet of an ``.xlsx`` workbook."""
    # Reading the bytes ourselves gives the same "not found" / "cannot read"
    # messages as the other formats and leaves no file handle open.
    data = read_bytes(path, source)
    return rows_to_batch(_xlsx_rows(data, source), source, name, partial=partial)


def _xlsx_rows(data: bytes, source: str) -> list[Row]:
    # openpyxl warns about workbook features it drops on reading (data validation
    # extensions, default styles); none of them matter for cell values.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"openpyxl(\.|$)")
        try:
            import openpyxl  # imported here: it costs a quarter second at start-up

            workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as exc:
            # A damaged workbook surfaces as any of BadZipFile, KeyError, XML
            # ParseError, ValueError...: all mean "not a readable .xlsx".
            raise _not_xlsx(source, exc) from exc
        try:
            return _first_sheet_rows(workbook)
        except Exception as exc:  # read-only mode parses lazily, so damage shows up here too
            raise _not_xlsx(source, exc) from exc
        finally:
            workbook.close()


def _first_sheet_rows(workbook: Any) -> list[Row]:
    if not workbook.worksheets:
        raise ValueError("the workbook has no worksheet")
    sheet = workbook.worksheets[0]
    # Some writers store a wrong used range; without this read-only mode trusts it
    # and silently drops rows past it.
    sheet.reset_dimensions()
    return list(enumerate(sheet.iter_rows(values_only=True), start=1))


def _not_xlsx(source: str, exc: Exception) -> SpecError:
    detail = str(exc) or type(exc).__name__
    return file_error(source, f"is not a readable .xlsx workbook ({detail})")


def rows_to_batch(
    rows: Iterable[Row], source: str, name: str, *, partial: bool = False
) -> TableBatch:
    """Turn numbered rows (header first) into a batch; SpecError lists every problem.

    With ``partial=True`` the problems travel in the spec (see
    :func:`pixelkiln.specs.parse_batch`) unless the table cannot be read as tasks at all.
    """
    filled = [(number, cells) for number, cells in rows if not _is_blank_row(cells)]
    if not filled:
        raise file_error(source, "the table is empty; row 1 must name the columns (prompt, ...)")
    (header_number, header_cells), body = filled[0], filled[1:]
    header = _Header.read(header_cells, header_number, source)
    if not body:
        raise file_error(source, "the table has a header but no task rows")
    problems = [*header.problems, *_values_without_header(body, header, source)]
    if "prompt" not in header.columns.values():
        partial = False  # no row can be a task: its other checks would only repeat that
    tasks: list[TaskSpec] = []
    for number, cells in body:
        task, row_problems = _row_to_task(number, cells, header, source)
        problems.extend(row_problems)
        tasks.append(task)
    if problems and not partial:
        raise SpecError(capped(problems, source))
    spec = _batch(name, tasks, source, problems)
    return TableBatch(spec.with_problems(problems), tuple(number for number, _ in body))


@dataclass(frozen=True)
class _Header:
    """What the header row says: which column holds which parameter."""

    columns: dict[int, str]  #: 0-based column index → parameter name, known names only
    named: frozenset[int]  #: indexes of every column with a heading, known or not
    problems: tuple[Problem, ...]

    @classmethod
    def read(cls, cells: Sequence[Any], number: int, source: str) -> _Header:
        columns: dict[int, str] = {}
        named: set[int] = set()
        headings: list[str] = []  #: as the user wrote them, for messages
        problems: list[Problem] = []
        where = f"row {number}"
        for index, cell in enumerate(cells):
            heading = _cell_value(cell)
            if heading is None:
                continue
            named.add(index)
            headings.append(str(heading))
            column = _column_name(str(heading))
            if column in RESULT_COLUMNS:
                continue
            if column not in COLUMN_NAMES:
                text = str(heading)
                problems.append(Problem(source, where, text, _unknown_column(text)))
            elif column in columns.values():
                message = f"column '{column}' appears twice; keep one"
                problems.append(Problem(source, where, column, message))
            else:
                columns[index] = column
        if "prompt" not in columns.values():
            message = f"the header has no 'prompt' column; its columns are: {_listing(headings)}"
            problems.append(Problem(source, where, "prompt", message))
        return cls(columns, frozenset(named), tuple(problems))


def _column_name(heading: str) -> str:
    """``" Negative Prompt "`` → ``"negative_prompt"``: headings people type still match."""
    return re.sub(r"[\s\-]+", "_", heading.strip().lower())


def _unknown_column(column: str) -> str:
    return f"unknown column '{column}'; known columns are: {', '.join(COLUMN_NAMES)}"


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names) or "nothing"


def _values_without_header(body: list[Row], header: _Header, source: str) -> list[Problem]:
    """One problem per column that has values but no heading (not one per row)."""
    rows_by_column: dict[int, list[int]] = {}
    for number, cells in body:
        for index, cell in enumerate(cells):
            if index not in header.named and _cell_value(cell) is not None:
                rows_by_column.setdefault(index, []).append(number)
    problems = []
    for index, numbers in sorted(rows_by_column.items()):
        message = (
            f"column {_column_letter(index)} has values but no heading in the header row "
            f"({len(numbers)} row(s), first row {numbers[0]}); a value containing the "
            f"separator must be quoted"
        )
        problems.append(Problem(source, f"row {numbers[0]}", "", message))
    return problems


def _column_letter(index: int) -> str:
    """0 → "A", 26 → "AA", as a spreadsheet labels its columns."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def _row_to_task(
    number: int, cells: Sequence[Any], header: _Header, source: str
) -> tuple[TaskSpec, list[Problem]]:
    """The row's task (its invalid values left out) and the row's problems."""
    where = f"row {number}"
    values = _row_values(cells, header)
    problems: list[Problem] = []
    if "prompt" in header.columns.values() and "prompt" not in values:
        # Tables have no defaults, so a blank prompt can never be filled in later.
        problems.append(Problem(source, where, "prompt", "is required"))
    try:
        return TaskSpec.model_validate(values), problems
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, source, lambda loc: (where, _field(loc))))
        return salvage(TaskSpec, values), problems


def _field(loc: tuple[Any, ...]) -> str:
    # ("reference_images", 2) names the column, not the list item
    return str(loc[0]) if loc else ""


def _row_values(cells: Sequence[Any], header: _Header) -> dict[str, Any]:
    """The row's non-blank cells by parameter name, converted to what TaskSpec expects."""
    values: dict[str, Any] = {}
    for index, column in header.columns.items():
        value = _cell_value(cells[index]) if index < len(cells) else None
        if value is not None:
            values[column] = _convert(column, value)
    return values


def _convert(column: str, value: Any) -> Any:
    if column == "reference_images":
        return [part.strip() for part in _LIST_SEPARATOR.split(_as_text(value)) if part.strip()]
    if column in TEXT_COLUMNS:
        return _as_text(value)
    if isinstance(value, str) and _DECIMAL_COMMA.match(value):
        # A ';'-separated CSV from a European Excel writes 7.5 as "7,5".
        return value.replace(",", ".")
    return value


def _as_text(value: Any) -> str:
    """Cell text; an XLSX number typed into a text column reads as it looked (3.0 → "3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell_value(cell: Any) -> Any:
    """The cell's value, or None when blank (empty or only spaces)."""
    if isinstance(cell, str):
        return cell.strip() or None
    return cell


def _is_blank_row(cells: Sequence[Any]) -> bool:
    return all(_cell_value(cell) is None for cell in cells)


def _batch(name: str, tasks: list[TaskSpec], source: str, problems: list[Problem]) -> BatchSpec:
    try:
        return BatchSpec(name=name, tasks=tasks)
    except ValidationError as exc:  # a name too long, more rows than a batch may hold
        found = problems_from_validation(exc, source, _locate_in_batch)
        raise SpecError(capped([*problems, *found], source)) from exc


def _locate_in_batch(loc: tuple[Any, ...]) -> tuple[str, str]:
    return "", ".".join(str(part) for part in loc)
