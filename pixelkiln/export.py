"""A batch out of the data folder: images to a folder or a ZIP with a manifest, or a table.

The target's suffix says which (:func:`export_kind`): ``.zip`` a ZIP file,
``.xlsx`` / ``.csv`` one row per task with the columns ``kiln run`` reads from a
spreadsheet (so the table runs again as it is; headings in English or Chinese)
plus the task's status, error, image files and links, and its final prompt (a batch
made from items also has its items' fields, so that the table runs again with the
same template); no suffix (or an existing folder) a folder. Anything else is refused
rather than made into a folder named like a file.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection

from pixelkiln.db.batches import get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.records import batch_images
from pixelkiln.db.tasks import images_by_task, list_tasks
from pixelkiln.inputs.dotted import clashes, flat_fields, path_of
from pixelkiln.inputs.headers import COLUMN_NAMES, RESULT_COLUMNS, Headers, column_name
from pixelkiln.models import ImageRecord, Task
from pixelkiln.naming import unique_name
from pixelkiln.params import ASPECT_RATIOS, RESOLUTIONS
from pixelkiln.prompts import render
from pixelkiln.storage import LocalStorage, Storage
from pixelkiln.workbooks import csv_bytes, xlsx_bytes

COPY_CHUNK = 256 * 1024
#: what export_batch writes, by the target's suffix
ExportKind = Literal["folder", "zip", "xlsx", "csv"]
_KINDS: dict[str, ExportKind] = {".zip": "zip", ".xlsx": "xlsx", ".csv": "csv"}
#: the task parameters a table carries as stored in ``tasks.params`` (the size apart)
PARAM_COLUMNS = "model steps cfg_scale sampler seed n denoise filename_prefix".split()
#: the table's columns: those ``kiln run`` reads (their names), then the results it passes over
TABLE_COLUMNS = (
    "key",
    "prompt",
    "negative_prompt",
    "backend",
    "model",
    "aspect_ratio",
    "resolution",
    "width",
    "height",
    *PARAM_COLUMNS[1:],
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


def export_batch(
    db: Database,
    storage: Storage | Path,
    batch_id: int,
    target: Path,
    *,
    headers: Headers = "en",
) -> int:
    """Write the batch to ``target`` (see :func:`export_kind`); the images (or rows) written.

    The images are read from ``storage`` (a data folder's path: its local storage) and
    written to local files, wherever the storage is.

    >>> export_batch(db, Path("kiln-data"), 1, Path("out.xlsx"))    # doctest: +SKIP
    12
    """
    kind = export_kind(target)
    store = _storage(storage)
    if kind in ("xlsx", "csv"):
        return export_table(db, store, batch_id, target, headers=headers)
    files = _manifest_files(db, batch_id)
    entries = [entry for entry, _ in files]
    if kind == "zip":
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            for entry, path in files:  # PNGs are compressed already
                member = zipfile.ZipInfo(entry["file"], time.localtime()[:6])
                with store.open(path) as source, archive.open(member, "w") as out:
                    shutil.copyfileobj(source, out, COPY_CHUNK)
            archive.writestr("manifest.json", json.dumps(entries, indent=2, ensure_ascii=False))
        return len(entries)
    target.mkdir(parents=True, exist_ok=True)
    for entry, path in files:
        store.save_to(path, target / entry["file"])
    (target / "manifest.json").write_text(
        json.dumps(entries, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return len(entries)


def _storage(given: Storage | Path) -> Storage:
    return LocalStorage(given) if isinstance(given, Path) else given


# -- tables -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableLinks:
    """How a table names a batch's files: its images' links and its input images.

    From the command line both are paths on this machine (the table runs again with
    ``kiln run``); the API gives image URLs and the caller's ``asset:ID`` uploads.
    """

    image: Callable[[ImageRecord], str]  #: an image's link
    #: the cell text of each stored input path (a read: the API looks up its uploads)
    inputs: Callable[[Connection, list[str]], dict[str, str]]


def local_links(storage: Storage) -> TableLinks:
    """Links and inputs where the storage has them: absolute paths under the data folder
    (or ``s3://bucket/key`` URLs of an object store)."""
    return TableLinks(
        image=lambda image: storage.where(image.path),
        inputs=lambda _, paths: {path: storage.where(path) for path in paths},
    )


def export_table(
    db: Database,
    storage: Storage | Path,
    batch_id: int,
    target: Path,
    *,
    headers: Headers = "en",
) -> int:
    """One row per task in ``target`` (.xlsx or .csv, by its suffix); the rows written."""
    columns, rows = db.read(table_of, batch_id, local_links(_storage(storage)))
    target.parent.mkdir(parents=True, exist_ok=True)
    write = csv_bytes if target.suffix.lower() == ".csv" else xlsx_bytes
    target.write_bytes(write(columns, rows, headers))
    return len(rows)


def table_of(
    conn: Connection, batch_id: int, links: TableLinks
) -> tuple[tuple[str, ...], list[list[Any]]]:
    """The batch's columns and one row per task: what ran, then how it went (a read).

    The fields of the items a batch was made from come between the two, and with a
    template the ``prompt`` column holds the item's own (``final_prompt`` the one made).
    """
    images = images_by_task(conn, batch_id)
    tasks = list_tasks(conn, batch_id)
    stored = {p for t in tasks for p in [t.inputs.get("init_image"), *_references(t)] if p}
    inputs = links.inputs(conn, sorted(stored))
    items = _flat_items(tasks)
    fields = _item_fields(items)
    templated = "template" in get_batch(conn, batch_id).extra
    taken: set[str] = set()  # image files named as a folder or ZIP export names them
    rows = []
    for task, item in zip(tasks, items, strict=True):
        row = _task_row(task, images.get(task.id, []), links, inputs, taken)
        if templated and task.item is not None:
            row["prompt"] = _field_cell(item.get("prompt"))
        rows.append(row | {name: _field_cell(item.get(name)) for name in fields})
    split = len(TABLE_COLUMNS) - len(RESULT_COLUMNS)
    columns = (*TABLE_COLUMNS[:split], *fields, *TABLE_COLUMNS[split:])
    return columns, [[_blank(row.get(name)) for name in columns] for row in rows]


def _flat_items(tasks: list[Task]) -> list[dict[str, Any]]:
    """Each task's item with its objects and lists spread into dotted columns
    (``setting.place``, ``shots.0``), which a table of items reads back as they were.

    A field stays whole (JSON text, as a template writes it) when a column it would make
    reads back as another name, when it is an object in one item and a plain value in
    another (``setting`` and ``setting.place`` cannot both be columns), or when it is named
    like one of the table's own columns.
    """
    whole = {"id", *TABLE_COLUMNS}  # a parameter's column holds the value used, not the item's
    items = _spread(tasks, whole)
    names = {name for item in items for name in item}
    clashing = {path_of(name)[0] for pair in clashes(names) for name in pair}
    return _spread(tasks, whole | clashing) if clashing else items


def _spread(tasks: list[Task], whole: set[str]) -> list[dict[str, Any]]:
    """The tasks' items flattened, the fields named in ``whole`` kept whole."""
    return [
        flat_fields(task.item or {}, lambda n: _reads_back(n) and path_of(n)[0] not in whole)
        for task in tasks
    ]


def _reads_back(name: str) -> bool:
    return column_name(name) == name


def _item_fields(items: list[dict[str, Any]]) -> tuple[str, ...]:
    """The items' fields a table holds as columns of their own, in the order first met.

    Not the id (the ``key`` column), nor a parameter (its column holds the value used), nor a
    name a table reads as another column (a result's, ``比例``): those would not come back.
    """
    names = dict.fromkeys(name for item in items for name in item)
    kept = (name for name in names if name != "id" and _reads_back(name))
    return tuple(name for name in kept if name not in (*COLUMN_NAMES, *RESULT_COLUMNS))


def _field_cell(value: Any) -> Any:
    """An item's value as a cell: numbers and texts as they are; anything else as the text
    a template writes for it, so that the table read again makes the same prompt.
    """
    if value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
        return value
    return render("{value}", {"value": value})


def _references(task: Task) -> list[str]:
    return list(task.inputs.get("reference_images") or [])


def _task_row(
    task: Task,
    images: list[ImageRecord],
    links: TableLinks,
    inputs: dict[str, str],
    taken: set[str],
) -> dict[str, Any]:
    """The task's cells by column name."""
    params = task.params
    width, height = params.get("width"), params.get("height")
    ratio, resolution = _named_size(params)
    if ratio:  # the ratio and resolution the user typed give back this very size
        width = height = None
    values: dict[str, Any] = {
        "key": task.key,
        "prompt": task.prompt,
        "negative_prompt": task.negative_prompt,
        "backend": _backend_cell(task),
        **{name: params.get(name) for name in PARAM_COLUMNS},
        "aspect_ratio": ratio,
        "resolution": resolution,
        "width": width,
        "height": height,
        "init_image": inputs.get(task.inputs.get("init_image") or ""),
        "reference_images": "\n".join(inputs.get(p, "") for p in _references(task)),
        "status": str(task.status),
        "error": task.last_error or "",
        "images": "\n".join(unique_name(Path(i.path).name, taken) for i in images),
        "links": "\n".join(links.image(i) for i in images),
        "final_prompt": task.prompt,
    }
    return values


def _backend_cell(task: Task) -> str:
    """The task's own chain as typed ("a, b"), else the backend it ran on."""
    chain = task.params.get("backends") or []
    return ", ".join(chain) if chain else task.backend


def _named_size(params: dict[str, Any]) -> tuple[str | None, str | None]:
    """The ratio and resolution (as people write them: "16:9", "2K") that give this size."""
    width, height = params.get("width"), params.get("height")
    for ratio, (base_w, base_h) in ASPECT_RATIOS.items():
        for resolution, scale in RESOLUTIONS.items():
            if (base_w * scale, base_h * scale) == (width, height):
                return ratio, resolution.upper()
    return None, None


def _blank(value: Any) -> Any:
    return None if value == "" else value
