"""CSV and XLSX batch files: a header row of parameter names, then one task per row.

Every row is validated as a :class:`~pixelkiln.specs.TaskSpec` and every
problem found, in every row, is reported at once ("row 17, field 'n'"), so a
user fixes a spreadsheet in one pass rather than one error per run. Row
numbers are the spreadsheet's own (header = row 1), blank rows included.
Headings may be English parameter names or the Chinese words batch tools use
(:mod:`pixelkiln.inputs.headers`); values as people type them (``16\uff1a9``, ``2K``,
a ratio Excel turned into a time of day). A table written by ``kiln export --to
FILE.xlsx|FILE.csv`` reads back as it is: its result columns are passed over.

With a :class:`TableTemplate` (``kiln run --template``, the API import's ``template``
field) each row is an item (:func:`pixelkiln.prompts.expand_items`): every column
that is no parameter is a field of it, an ``id`` (or ``key``, 编号) column its id, and
the template makes its prompt; problems still name the row.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.inputs._files import file_error, read_bytes, read_text
from pixelkiln.inputs.dotted import clashes, nested_fields
from pixelkiln.inputs.headers import (
    COLUMN_NAMES,
    RESULT_COLUMNS,
    column_name,
    is_chinese_heading,
)
from pixelkiln.inputs.pictures import PICTURE_COLUMNS, PlacedPictures, Placement, column_letter
from pixelkiln.inputs.sizes import check_listed
from pixelkiln.inputs.xlsx import Formula, Row, Sheet, dispimg, read_sheet
from pixelkiln.problems import MAX_PROBLEMS, capped, problems_from_validation
from pixelkiln.prompts import TemplateError, expand_items, parse_template
from pixelkiln.specs import BatchSpec, TaskSpec, control_message, salvage

#: a CSV cell starting with one of these is a formula to a spreadsheet, so an export writes
#: it behind a ``'``, which reading takes off again
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
__all__ = [
    "COLUMN_NAMES",
    "FORMULA_STARTS",
    "MAX_PROBLEMS",
    "RESULT_COLUMNS",
    "TableBatch",
    "TableTemplate",
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
FULLWIDTH_COLON = "\uff1a"  #: what a Chinese input method types for ":" (16\uff1a9)
_FORMULA = (
    "cell {cell} holds a formula ({formula}): formula cells are not supported; paste "
    "values (copy the cells, then Paste Special > Values)"
)


@dataclass(frozen=True)
class TableTemplate:
    """Makes each row of a table an item: the template and the fields every row may use.

    Tables have no top-level keys, so the template comes with the file rather than in
    it: ``kiln run FILE --template "..." --var style=ink``, or the API import's form.
    """

    text: str  #: "{style}. {title}: {visual_desc}"
    vars: Mapping[str, Any] | None = None  #: the batch's ``vars``


@dataclass(frozen=True)
class TableBatch:
    """A batch read from a table, with the spreadsheet row number of each task."""

    spec: BatchSpec
    rows: tuple[int, ...] = field(repr=False)  #: rows[i] is the row task i came from
    #: files written for the pictures in the table's cells, named in the tasks' inputs
    pictures: tuple[str, ...] = ()


def load_csv(
    path: Path,
    source: str,
    name: str,
    *,
    partial: bool = False,
    template: TableTemplate | None = None,
    max_tasks: int | None = None,
) -> TableBatch:
    """Read a CSV file (UTF-8, with or without BOM; ``,`` ``;`` or tab separated).

    A CSV saved by Chinese Excel or WPS is GBK (GB18030): read as such when its header
    row holds a Chinese heading (提示词, ...), the sign that it is that and not mojibake.
    """
    hint = "in Excel, save as 'CSV UTF-8'"
    text = read_text(path, source, hint=hint, chinese=_has_chinese_heading)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(text))
    try:
        rows = [(number, _unescaped(cells)) for number, cells in enumerate(reader, start=1)]
    except csv.Error as exc:
        raise file_error(source, f"is not valid CSV (line {reader.line_num}): {exc}") from exc
    return rows_to_batch(
        rows, source, name, partial=partial, template=template, max_tasks=max_tasks
    )


def _has_chinese_heading(text: str) -> bool:
    """Whether the first non-blank line, read as a CSV header, has a Chinese heading."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    cells = next(csv.reader([header], delimiter=_sniff_delimiter(header)), [])
    return any(is_chinese_heading(cell) for cell in cells)


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


def load_xlsx(
    path: Path,
    source: str,
    name: str,
    *,
    partial: bool = False,
    pictures_dir: Callable[[], Path] | None = None,
    template: TableTemplate | None = None,
    max_tasks: int | None = None,
) -> TableBatch:
    """Read the table sheet of an ``.xlsx`` workbook, with the pictures on its cells.

    The sheet read is the one the workbook opens on when its header row has a known
    column (a parameter's heading, English or Chinese, or ``id``), else the first sheet
    whose header row has one, else the one it opens on; :mod:`pixelkiln.inputs.xlsx`.
    A picture in a ``reference_images`` or ``init_image`` cell is written to
    ``pictures_dir()`` (asked for only when there is one) and used as that row's
    input by its path; see :mod:`pixelkiln.inputs.pictures`.
    """
    # Reading the bytes ourselves gives the same "not found" / "cannot read"
    # messages as the other formats and leaves no file handle open.
    data = read_bytes(path, source)
    try:
        sheet = read_sheet(data, _has_known_column)
    except Exception as exc:
        # A damaged workbook surfaces as any of BadZipFile, KeyError, XML
        # ParseError, ValueError...: all mean "not a readable .xlsx".
        raise _not_xlsx(source, exc) from exc
    placed = PlacedPictures(sheet, source, pictures_dir)
    try:
        return rows_to_batch(
            placed.rows,
            source,
            name,
            partial=partial,
            pictures=placed,
            template=template,
            max_tasks=max_tasks,
        )
    except SpecError as exc:
        if sheet.table or not sheet.others:
            raise
        raise SpecError([*exc.problems, _sheet_read(sheet, source)]) from exc


def _has_known_column(cells: Sequence[Any]) -> bool:
    """Whether a header row names a parameter (in English or Chinese) or items' ids."""
    names = (column_name(_as_text(c)) for c in cells if _cell_value(c) is not None)
    return any(name in COLUMN_NAMES or name == "id" for name in names)


def _sheet_read(sheet: Sheet, source: str) -> Problem:
    """Which sheet of a workbook was read when none looked like a table: the way out."""
    others = ", ".join(f"'{name}'" for name in sheet.others)
    message = (
        f"read the sheet '{sheet.name}' (the one the workbook opens on), since no sheet's "
        f"first row names a known column (prompt, 提示词, id, ...); its other sheets: "
        f"{others}. Put the table on a sheet of its own, headings in its first row"
    )
    return Problem(source, "", "", message)


def _not_xlsx(source: str, exc: Exception) -> SpecError:
    # the reader's own first line only: openpyxl's go on about "the exception for details"
    lines = str(exc).strip().splitlines()
    detail = (lines[0].strip() if lines else "") or type(exc).__name__
    detail = re.sub(r" (?:from|at) <[^>]*>", "", detail)[:200]  # no object reprs
    return file_error(source, f"is not a readable .xlsx workbook ({detail})")


def rows_to_batch(
    rows: Iterable[Row],
    source: str,
    name: str,
    *,
    partial: bool = False,
    pictures: PlacedPictures | None = None,
    template: TableTemplate | None = None,
    max_tasks: int | None = None,
) -> TableBatch:
    """Turn numbered rows (header first) into a batch; SpecError lists every problem.

    With ``partial=True`` the problems travel in the spec (see
    :func:`pixelkiln.specs.parse_batch`) unless the table cannot be read as tasks at all.
    With a ``template`` the rows are items (see :class:`TableTemplate`).
    """
    filled = [(number, cells) for number, cells in rows if not _is_blank_row(cells)]
    if not filled:
        raise file_error(source, "the table is empty; row 1 must name the columns (prompt, ...)")
    (header_number, header_cells), body = filled[0], filled[1:]
    header = _Header.read(header_cells, header_number, source, items=template is not None)
    if not body:
        raise file_error(source, "the table has a header but no task rows")
    check_listed(len(body), max_tasks, source)  # before a task is made of any row
    placement = Placement()
    if pictures is not None:
        placement = pictures.place(header.columns, header.headings, {n for n, _ in body})
    problems = [*header.problems, *_values_without_header(body, header, source)]
    problems.extend(placement.problems)
    tasks: list[TaskSpec] = []
    if template is not None:
        tasks = _rows_to_items(body, header, source, placement, template, problems)
    else:
        if "prompt" not in header.columns.values():
            partial = False  # no row can be a task: its other checks would only repeat that
        for number, cells in body:
            task, row_problems = _row_to_task(number, cells, header, source, placement)
            problems.extend(row_problems)
            tasks.append(task)
    if problems and not partial:
        raise SpecError(capped(problems, source))
    spec = _batch(name, tasks, source, problems, template)
    numbers = tuple(number for number, _ in body)
    return TableBatch(spec.with_problems(problems), numbers, tuple(placement.paths))


@dataclass
class _Header:
    """What the header row says: which column holds which parameter (or item field)."""

    columns: dict[int, str] = field(default_factory=dict)  #: column index → parameter name
    named: frozenset[int] = frozenset()  #: indexes of every column with a heading
    problems: tuple[Problem, ...] = ()
    headings: dict[int, str] = field(default_factory=dict)  #: as written, for messages
    #: rows as items: column index → field name, for every column that is no parameter
    fields: dict[int, str] = field(default_factory=dict)
    id_column: int | None = None  #: rows as items: the column of their ids (id, key, 编号)

    @classmethod
    def read(cls, cells: Sequence[Any], number: int, source: str, *, items: bool) -> _Header:
        header = cls()
        problems: list[Problem] = []
        where = f"row {number}"
        for index, cell in enumerate(cells):
            heading = _cell_value(cell)
            if heading is None:
                continue
            if isinstance(heading, Formula):
                message = _formula_message(heading, index, number)
                problems.append(Problem(source, where, "", message))
                continue
            text = header.headings[index] = _as_text(heading)
            control = _control_message(text, index, number)
            if control is not None:
                problems.append(Problem(source, where, "", control))
                continue
            problem = header.place(index, text, items)
            if problem:
                problems.append(Problem(source, where, *problem))
        if not items and "prompt" not in header.columns.values():
            listing = _listing(header.headings.values())
            message = f"the header has no 'prompt' column; its columns are: {listing}"
            problems.append(Problem(source, where, "prompt", message))
        if items:
            problems.extend(Problem(source, where, *found) for found in header.clashes())
        header.named, header.problems = frozenset(header.headings), tuple(problems)
        return header

    def clashes(self) -> list[tuple[str, str]]:
        """(field, message) for each dotted column that would make an object of another's
        field: ``setting.place`` beside ``setting``."""
        names = {**self.columns, **self.fields}
        if self.id_column is not None:
            names[self.id_column] = "id"
        heading = {name: self.headings[index] for index, name in names.items()}
        return [
            (
                longer,
                f"columns '{heading[name]}' and '{heading[longer]}' clash: '{heading[longer]}' "
                f"is a field inside '{name}', which another column holds whole; keep one",
            )
            for name, longer in clashes(names.values())
        ]

    def place(self, index: int, text: str, items: bool) -> tuple[str, str] | None:
        """Give column ``index`` (headed ``text``) its role; (field, message) if it has none."""
        column = column_name(text)
        if column in RESULT_COLUMNS:
            return None
        if items and column in ("id", "key"):
            if self.id_column is not None:
                first = self.headings[self.id_column]
                return column, f"columns '{first}' and '{text}' both hold the items' ids; keep one"
            self.id_column = index
            return None
        taken = self.columns if column in COLUMN_NAMES else self.fields
        if column not in COLUMN_NAMES and not items:
            return text, _unknown_column(text)
        if column in taken.values():
            return column, f"column '{column}' appears twice; keep one"
        taken[index] = column
        return None


def _unknown_column(column: str) -> str:
    return (
        f"unknown column '{column}'; known columns are: {', '.join(COLUMN_NAMES)} "
        f"(or their Chinese headings, e.g. 提示词, 负面提示词, 图片比例, 分辨率, 参考示例图, "
        f"生成数量, 文件名); with a template, the other columns are the fields of the "
        f"rows' items"
    )


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
            f"column {column_letter(index)} has values but no heading in the header row "
            f"({len(numbers)} row(s), first row {numbers[0]}); a value containing the "
            f"separator must be quoted"
        )
        problems.append(Problem(source, f"row {numbers[0]}", "", message))
    return problems


def _row_to_task(
    number: int, cells: Sequence[Any], header: _Header, source: str, placement: Placement
) -> tuple[TaskSpec, list[Problem]]:
    """The row's task (its invalid values left out) and the row's problems."""
    where = f"row {number}"
    values, problems = _row_values(cells, header.columns, number, source)
    problems.extend(_add_pictures(values, placement.refs.get(number, {}), where, source))
    reported = {p.field for p in problems}  # an unsaved formula is not a blank
    if "prompt" in header.columns.values() and "prompt" not in {*values, *reported}:
        # Tables have no defaults, so a blank prompt can never be filled in later.
        problems.append(Problem(source, where, "prompt", "is required"))
    try:
        return TaskSpec.model_validate(values), problems
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, source, lambda loc: (where, _field(loc))))
        return salvage(TaskSpec, values), problems


def _add_pictures(
    values: dict[str, Any], refs: Mapping[str, list[str]], where: str, source: str
) -> list[Problem]:
    """The row's pictures joined to its typed inputs: references added, one init image."""
    if "reference_images" in refs:
        values["reference_images"] = values.get("reference_images", []) + refs["reference_images"]
    typed = [values["init_image"]] if "init_image" in values else []
    init = typed + refs.get("init_image", [])
    if len(init) > 1:
        message = "holds more than one image (a path or picture each); a task has one init image"
        return [Problem(source, where, "init_image", message)]
    if init:
        values["init_image"] = init[0]
    return []


def _rows_to_items(
    body: list[Row],
    header: _Header,
    source: str,
    placement: Placement,
    template: TableTemplate,
    problems: list[Problem],
) -> list[TaskSpec]:
    """Each row an item made a task by the template; every row's problems into ``problems``."""
    columns = {**header.columns, **header.fields}
    if header.id_column is not None:
        columns[header.id_column] = "id"
    columns = dict(sorted(columns.items()))  # the item's fields in the table's order
    aliases = _aliases(columns, header.headings, template.text)
    items: list[dict[str, Any]] = []
    for position, (number, cells) in enumerate(body, start=1):
        values, found = _row_values(cells, columns, number, source)
        values |= {alias: values[name] for name, alias in aliases if name in values}
        values = nested_fields(values)  # setting.place → {"setting": {"place": ...}}
        # without an id column a row's id is its task's position, as a table task's key is
        items.append(values if header.id_column is not None else {"id": str(position), **values})
        problems.extend(found)
    numbers = [number for number, _ in body]
    tasks, found = expand_items(
        items,
        template.text,
        template.vars,
        {},
        source,
        where=lambda j: f"row {numbers[j]}",
        json_paths=False,
    )
    problems.extend(found)
    made = []
    for number, task in zip(numbers, tasks, strict=True):
        refs = placement.refs.get(number, {})
        task, found = _with_pictures(task, refs, f"row {number}", source)
        problems.extend(found)
        made.append(task)
    return made


def _aliases(
    columns: Mapping[int, str], headings: Mapping[int, str], template: str
) -> list[tuple[str, str]]:
    """(column, heading) for each column the template names by its heading, not its name.

    A parameter's value is the item's under the parameter's name (``prompt``), which
    is how it sets the task's; a template written against the sheet says ``{提示词}``.
    """
    try:
        named = {field.split(".")[0] for field in parse_template(template).fields}
    except TemplateError:
        return []  # expand_items reports it
    pairs = ((column, headings[index].strip()) for index, column in columns.items())
    return [
        (column, heading) for column, heading in pairs if heading != column and heading in named
    ]


def _with_pictures(
    task: TaskSpec, refs: Mapping[str, list[str]], where: str, source: str
) -> tuple[TaskSpec, list[Problem]]:
    """The task with its row's pictures, which its item (what the row says) leaves out."""
    if not refs:
        return task, []
    values = task.model_dump(include={"init_image", "reference_images"}, exclude_none=True)
    problems = _add_pictures(values, refs, where, source)
    return task.model_copy(update=values), problems


def _field(loc: tuple[Any, ...]) -> str:
    # ("reference_images", 2) names the column, not the list item
    return str(loc[0]) if loc else ""


def _row_values(
    cells: Sequence[Any], columns: Mapping[int, str], number: int, source: str
) -> tuple[dict[str, Any], list[Problem]]:
    """The row's non-blank cells by column name, parameters converted to what TaskSpec
    expects; and a problem for each cell that is a formula or holds a control character.
    """
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    where = f"row {number}"
    for index, column in columns.items():
        value = _cell_value(cells[index]) if index < len(cells) else None
        if column in PICTURE_COLUMNS and dispimg(value):
            continue  # a WPS picture the file lacks: the pictures' check reports it
        if isinstance(value, Formula):
            problems.append(Problem(source, where, column, _formula_message(value, index, number)))
            continue
        control = _control_message(value, index, number) if isinstance(value, str) else None
        if control is not None:
            problems.append(Problem(source, where, column, control))
        elif value is not None:
            values[column] = _convert(column, value)
    return values, problems


def _formula_message(formula: Formula, index: int, number: int) -> str:
    return _FORMULA.format(cell=f"{column_letter(index)}{number}", formula=formula.formula)


def _control_message(text: str, index: int, number: int) -> str | None:
    """Why a cell's text cannot be read, naming the cell ("cell B3 contains a control
    character (U+0007) at character 5, ..."); None when it is fine."""
    message = control_message(text)
    return None if message is None else f"cell {column_letter(index)}{number} {message}"


def _convert(column: str, value: Any) -> Any:
    if column not in COLUMN_NAMES:  # an item's field (or its id): as typed, 3.0 as 3
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if column == "reference_images":
        return [part.strip() for part in _LIST_SEPARATOR.split(_as_text(value)) if part.strip()]
    if column == "aspect_ratio":
        return _ratio(value)
    if column in TEXT_COLUMNS:
        return _as_text(value)
    if isinstance(value, str) and _DECIMAL_COMMA.match(value):
        # A ';'-separated CSV from a European Excel writes 7.5 as "7,5".
        return value.replace(",", ".")
    return value


def _ratio(value: Any) -> str:
    """A ratio as typed: with a Chinese keyboard's colon, or as a time Excel made of it."""
    if isinstance(value, datetime.time | datetime.datetime) and not value.second:
        return f"{value.hour}:{value.minute}"  # Excel reads "16:9" typed in a cell as 16:09
    return _as_text(value).replace(FULLWIDTH_COLON, ":")


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


def _batch(
    name: str,
    tasks: list[TaskSpec],
    source: str,
    problems: list[Problem],
    template: TableTemplate | None,
) -> BatchSpec:
    made = {"template": template.text, "vars": template.vars or None} if template else {}
    try:
        return BatchSpec(name=name, tasks=tasks, **made)
    except ValidationError as exc:  # a name too long, more rows than a batch may hold
        found = problems_from_validation(exc, source, _locate_in_batch)
        raise SpecError(capped([*problems, *found], source)) from exc


def _locate_in_batch(loc: tuple[Any, ...]) -> tuple[str, str]:
    return "", ".".join(str(part) for part in loc)
