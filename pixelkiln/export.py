"""A batch out of the data folder: images to a folder or a ZIP with a manifest, or a table.

The target's suffix says which (:func:`export_kind`): ``.zip`` a ZIP file,
``.xlsx`` / ``.csv`` one row per task with the columns ``kiln run`` reads from a
spreadsheet (so the table runs again as it is) plus the task's status, error and
image files; no suffix (or an existing folder) a folder. Anything else is refused
rather than made into a folder named like a file.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Literal

from pixelkiln.db.database import Database
from pixelkiln.db.records import batch_images
from pixelkiln.db.tasks import images_by_task, list_tasks
from pixelkiln.inputs.tabular import FORMULA_STARTS, RESULT_COLUMNS
from pixelkiln.models import Task
from pixelkiln.naming import unique_name
from pixelkiln.storage import Storage

#: what export_batch writes, by the target's suffix
ExportKind = Literal["folder", "zip", "xlsx", "csv"]
_KINDS: dict[str, ExportKind] = {".zip": "zip", ".xlsx": "xlsx", ".csv": "csv"}
#: the task parameters a table carries, as stored in ``tasks.params``
PARAM_COLUMNS = "model width height steps cfg_scale sampler seed n denoise filename_prefix".split()
#: the table's columns: those ``kiln run`` reads (their names), then the results it passes over
TABLE_COLUMNS = (
    "key",
    "prompt",
    "negative_prompt",
    "backend",
    *PARAM_COLUMNS,
    "init_image",
    "reference_images",
    *RESULT_COLUMNS,
)


def manifest(db: Database, batch_id: int) -> list[dict[str, Any]]:
    """One entry per image: file name, task key and position, what was sent, who made it.

    ``negative_prompt`` and ``params`` are as sent (what the backend ignores is left out),
    ``width``/``height`` as returned, ``model`` the one used, ``server`` without credentials.
    """
    return [entry for entry, _ in _manifest_files(db, batch_id)]


def _manifest_files(db: Database, batch_id: int) -> list[tuple[dict[str, Any], str]]:
    """Each image's manifest entry with its stored path (relative to the data folder).

    ``file`` is the stored file's name (``photo_00_0.png`` for an upload batch), unique in
    the export whatever the case (a folder on Windows or macOS would merge two otherwise).
    """
    taken: set[str] = set()
    return [
        (
            {
                "file": unique_name(Path(info.image.path).name, taken),
                "key": info.key,
                "position": info.position,
                "index": info.image.index,
                "prompt": info.prompt,
                "negative_prompt": info.sent_negative_prompt,
                "seed": info.image.seed_sent,
                "width": info.image.width,
                "height": info.image.height,
                "sha256": info.image.sha256,
                "backend": info.image.backend,
                "server": info.image.server,
                "model": info.image.model,
                "params": info.sent_params,
            },
            info.image.path,
        )
        for info in db.read(batch_images, batch_id)
    ]


def export_kind(target: Path) -> ExportKind:
    """What exporting to ``target`` writes; ValueError for a suffix that is none of them."""
    suffix = target.suffix.lower()
    if suffix in _KINDS:
        return _KINDS[suffix]
    if not suffix or target.is_dir():
        return "folder"
    raise ValueError(
        f"cannot export to '{target}': give a folder, or a file ending in .zip, .xlsx or .csv"
    )


def export_batch(db: Database, data_dir: Path, batch_id: int, target: Path) -> int:
    """Write the batch to ``target`` (see :func:`export_kind`); the images (or rows) written.

    >>> export_batch(db, Path("kiln-data"), 1, Path("out.xlsx"))    # doctest: +SKIP
    12
    """
    kind = export_kind(target)
    if kind in ("xlsx", "csv"):
        return export_table(db, data_dir, batch_id, target)
    storage = Storage(data_dir)
    files = _manifest_files(db, batch_id)
    entries = [entry for entry, _ in files]
    if kind == "zip":
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            for entry, path in files:  # PNGs are compressed already
                archive.write(storage.absolute(path), entry["file"])
            archive.writestr("manifest.json", json.dumps(entries, indent=2, ensure_ascii=False))
        return len(entries)
    target.mkdir(parents=True, exist_ok=True)
    for entry, path in files:
        shutil.copyfile(storage.absolute(path), target / entry["file"])
    (target / "manifest.json").write_text(
        json.dumps(entries, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return len(entries)


# -- tables -----------------------------------------------------------------------------------


def export_table(db: Database, data_dir: Path, batch_id: int, target: Path) -> int:
    """One row per task in ``target`` (.xlsx or .csv, by its suffix); the rows written."""
    rows = table_rows(db, Storage(data_dir), batch_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".csv":
        _write_csv(target, rows)
    else:
        _write_xlsx(target, rows)
    return len(rows)


def table_rows(db: Database, storage: Storage, batch_id: int) -> list[list[Any]]:
    """The tasks as rows under TABLE_COLUMNS; files (inputs, images) as absolute paths."""
    images = db.read(images_by_task, batch_id)
    rows = []
    for task in db.read(list_tasks, batch_id):
        files = [str(storage.absolute(i.path)) for i in images.get(task.id, [])]
        rows.append(_task_row(task, storage, files))
    return rows


def _task_row(task: Task, storage: Storage, images: list[str]) -> list[Any]:
    params, inputs = task.params, task.inputs

    def stored(path: str) -> str:
        return str(storage.absolute(path)) if path else ""

    values: dict[str, Any] = {
        "key": task.key,
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt,
        "backend": task.backend,
        **{name: params.get(name) for name in PARAM_COLUMNS},
        "init_image": stored(inputs.get("init_image") or ""),
        "reference_images": "\n".join(stored(p) for p in inputs.get("reference_images", [])),
        "status": str(task.status),
        "error": task.last_error or "",
        "images": "\n".join(images),
    }
    return [_blank(values[name]) for name in TABLE_COLUMNS]


def _blank(value: Any) -> Any:
    return None if value == "" else value


def _write_xlsx(target: Path, rows: list[list[Any]]) -> None:
    import openpyxl  # imported here: it costs a quarter second at start-up
    from openpyxl.cell import WriteOnlyCell

    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("tasks")
    sheet.append(list(TABLE_COLUMNS))
    for row in rows:
        cells = []
        for value in row:
            cell = WriteOnlyCell(sheet, value=value)
            if isinstance(value, str):
                cell.data_type = "s"  # text as it is: "=..." never becomes a formula
            cells.append(cell)
        sheet.append(cells)
    workbook.save(target)


def _write_csv(target: Path, rows: list[list[Any]]) -> None:
    # utf-8-sig: Excel reads the file as UTF-8 only with the byte-order mark
    with target.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows([[_csv_text(value) for value in row] for row in rows])


def _csv_text(value: Any) -> Any:
    """A value a spreadsheet would run as a formula gets a leading ``'`` (read back without)."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return "" if value is None else value
