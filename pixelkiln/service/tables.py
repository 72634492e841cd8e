"""The web UI's batch table, in and out of a spreadsheet, without making a batch.

A table the user edits in the browser is rows of task fields (the batch spec's
names: ``prompt``, ``aspect_ratio``, ``reference_images`` as ``asset:<id>``...).
:func:`table_rows` turns a loaded batch file (``pixelkiln.inputs``, the loader
every import uses, Chinese headings and pictures in cells included) into those
rows; :func:`table_cells` turns rows back into a sheet with the template's columns
(``pixelkiln.workbooks``), so what is exported imports again as it is.

>>> table_cells([{"prompt": "a fox", "reference_images": ["asset:1", "asset:2"]}])[1][0][1]
'a fox'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pixelkiln.exceptions import InvalidValueError, Problem, SpecError
from pixelkiln.inputs import LoadedBatch
from pixelkiln.problems import capped
from pixelkiln.specs import TASK_KEYS
from pixelkiln.workbooks import TEMPLATE_COLUMNS

#: a cell as the browser sends it: text, a number, a list (reference images), or empty
Cell = str | int | float | list[str] | None
#: what a list cell is written as; the table reader splits on ``;`` and new lines
LIST_SEPARATOR = "\n"


def check_problems(loaded: LoadedBatch) -> None:
    """SpecError with every problem of the file (row and column named), if it has any.

    The table is loaded leniently (``partial``) so that all of them come at once.
    """
    if loaded.spec.problems:
        raise SpecError(capped(loaded.spec.problems, loaded.source))


def table_rows(loaded: LoadedBatch) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The file's defaults and one row per task, each with the fields it set.

    An item's own fields (a template's table) stay behind: the browser's table edits
    tasks, and a task made from an item already has its prompt.
    """
    defaults = _as_shown(loaded.spec.defaults.model_dump(mode="json", exclude_none=True))
    rows = [
        _as_shown(task.model_dump(mode="json", exclude_none=True, exclude={"item"}))
        for task in loaded.spec.tasks
    ]
    return defaults, rows


def _as_shown(fields: dict[str, Any]) -> dict[str, Any]:
    """A resolution as the template and the table write it: ``2K`` (the spec keeps ``2k``)."""
    if isinstance(fields.get("resolution"), str):
        fields["resolution"] = fields["resolution"].upper()
    return fields


def table_cells(rows: Sequence[Mapping[str, Cell]]) -> tuple[list[str], list[list[Any]]]:
    """The sheet of ``rows``: the template's columns, then any other task field a row sets
    (in the spec's order); lists one per line, a backend chain as ``a, b``.

    InvalidValueError names each cell that no table column takes (``rows[2].colour``).
    """
    unknown = [
        Problem("", f"row {i + 1}", f"rows[{i}].{name}", "not a column of a batch table")
        for i, row in enumerate(rows)
        for name in row
        if name not in TASK_KEYS
    ]
    if unknown:
        raise InvalidValueError(
            f"{unknown[0].field}: {unknown[0].message}", field="rows", problems=unknown[:50]
        )
    used = {name for row in rows for name, value in row.items() if value not in (None, "", [])}
    extra = [name for name in TASK_KEYS if name in used and name not in TEMPLATE_COLUMNS]
    columns = [*TEMPLATE_COLUMNS, *extra]
    return columns, [[_cell(name, row.get(name)) for name in columns] for row in rows]


def _cell(column: str, value: Cell) -> Any:
    if isinstance(value, list):
        return (", " if column == "backend" else LIST_SEPARATOR).join(value) or None
    if value == "":
        return None
    return value
