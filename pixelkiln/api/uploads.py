"""Multipart uploads: images checked by content, size and pixel count; tables for import.

Nothing from an upload reaches the filesystem by its name: images are stored
by content hash (:meth:`Storage.write_asset`), a table goes to a temporary
file. Nor does anything reach it as sent: an image is stored re-encoded
(:func:`pixelkiln.storage.read_input_image`), so no file appended to it, and no
metadata but its colour profile, is ever stored or served back. The name a
client sent is kept as sanitised text (:func:`pixelkiln.naming.file_name`): shown,
stored as the asset's name, and made the key of an upload batch's task.
Files are read one at a time, so 50 × 10 MB never sits in memory at once: every
file is checked first, and only when all pass are they read again from their
spool and stored, so a refused upload leaves no file behind.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from pixelkiln.api.deps import ApiContext
from pixelkiln.api.errors import ApiError
from pixelkiln.api.plain_text import check_form
from pixelkiln.db.database import Tx
from pixelkiln.db.records import Asset, record_asset
from pixelkiln.engine.intake import asset_record
from pixelkiln.exceptions import Problem
from pixelkiln.inputs import LoadedBatch, TableTemplate, load_batch_file
from pixelkiln.naming import file_name
from pixelkiln.service import Caller
from pixelkiln.service.uploads import Uploaded
from pixelkiln.specs import TaskSpec
from pixelkiln.storage import InputImage, read_input_image

TABLE_TYPES = (".csv", ".xlsx", ".json", ".yaml", ".yml", ".toml")
#: an XLSX is a ZIP: refuse one that inflates past this (a "zip bomb" aimed at openpyxl)
MAX_TABLE_INFLATED = 256 * 1024 * 1024
MAX_FIELDS = 100


#: an image part in OpenAPI terms: one or more files
IMAGE_FILES: dict[str, Any] = {"type": "array", "items": {"type": "string", "format": "binary"}}


def form_body(required: str, properties: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its multipart body itself (:func:`read_form`):
    FastAPI sees only a ``Request`` there, so the docs would otherwise show no body.
    """
    schema = {"type": "object", "required": [required], "properties": properties}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


async def read_form(request: Request, max_files: int, field: str = "files") -> FormData:
    """Parse a multipart body within our limits; 422 for too many files (named ``field``)."""
    try:
        form = await request.form(max_files=max_files, max_fields=MAX_FIELDS)
    except HTTPException as exc:
        if isinstance(exc, ApiError):
            raise
        detail = str(exc.detail)
        if "files" in detail.lower():
            raise ApiError(
                422, "too_many_files", f"at most {max_files} files per request", field=field
            ) from exc
        raise ApiError(400, "bad_request", f"unreadable form data: {detail}") from exc
    try:
        check_form(form)  # no control character in a field, its name or a file name
    except ApiError:
        await form.close()  # its files, spooled to disk: nobody else will
        raise
    return form


def files_of(form: FormData, name: str) -> list[UploadFile]:
    items = form.getlist(name)
    files = [item for item in items if isinstance(item, UploadFile)]
    if len(files) != len(items):
        raise ApiError(422, "invalid_request", f"'{name}' must be file parts", field=name)
    return files


async def store_images(
    ctx: ApiContext, caller: Caller, files: list[UploadFile], field: str = "files"
) -> list[Uploaded]:
    """Validate every file by content and store it; one 4xx listing every bad file."""
    limits = ctx.settings.server
    if not files:
        raise ApiError(422, "invalid_request", "no image was uploaded", field=field)
    if len(files) > limits.max_upload_files:
        raise ApiError(
            422,
            "too_many_files",
            f"at most {limits.max_upload_files} files per request",
            field=field,
        )
    checked: list[tuple[UploadFile, str, str]] = []
    too_large: list[dict[str, str]] = []
    invalid: list[dict[str, str]] = []
    for i, upload in enumerate(files):
        where, name = f"{field}[{i}]", file_name(upload.filename)
        if upload.size is not None and upload.size > limits.max_upload_bytes:
            too_large.append(
                _problem(where, name, _too_large(upload.size, limits.max_upload_bytes))
            )
            continue
        data = await upload.read(limits.max_upload_bytes + 1)
        try:
            await ctx.run(_check, ctx, data, False)  # cleaned once all pass, below
        except ValueError as exc:
            bucket = too_large if len(data) > limits.max_upload_bytes else invalid
            bucket.append(_problem(where, name, str(exc)))
            continue
        # the bytes stay in the spool: only their digest is kept, to see them unchanged
        checked.append((upload, hashlib.sha256(data).hexdigest(), name))
    if too_large:
        raise ApiError(
            413,
            "file_too_large",
            too_large[0]["message"],
            field=field,
            problems=too_large + invalid,
        )
    if invalid:
        raise ApiError(
            422,
            "invalid_image",
            f"{invalid[0]['where']} ({invalid[0]['field']}): {invalid[0]['message']}",
            field=field,
            problems=invalid,
        )
    # only now, every file good, does anything reach the disk: a refused upload leaves nothing
    records = []
    for upload, digest, name in checked:
        await upload.seek(0)
        data = await upload.read(limits.max_upload_bytes + 1)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ApiError(400, "bad_request", "an uploaded file changed while it was read")
        # checked again, and so cleaned (re-encoded): what is stored is never the bytes sent
        records.append(await ctx.run(_store, ctx, await ctx.run(_check, ctx, data), name))
    assets = await ctx.write(_record_all, caller.user_id, records)
    return [Uploaded(a, name) for a, (_, _, name) in zip(assets, checked, strict=True)]


def _problem(where: str, name: str, message: str) -> dict[str, str]:
    return {"where": where, "field": name, "message": message}


def _too_large(size: int, limit: int) -> str:
    return f"file is {size:,} bytes; the limit is {limit:,}"


def _check(ctx: ApiContext, data: bytes, clean: bool = True) -> InputImage:
    """Content checks: type, size, pixels, truncation; the image cleaned to be stored
    unless ``clean`` is False (a first look) (a thread)."""
    limits = ctx.settings.server
    return read_input_image(
        data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_upload_pixels,
        clean=clean,
    )


def _store(ctx: ApiContext, image: InputImage, name: str) -> dict[str, Any]:
    """The checked (and cleaned) image by content hash (a thread)."""
    return asset_record(image, ctx.storage.write_asset(image), name)


def _record_all(tx: Tx, owner_id: int | None, records: list[dict[str, Any]]) -> list[Asset]:
    return [record_asset(tx, owner_id, r) for r in records]


# -- batch files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneFile:
    """The one file of a form, read whole, and the form's other fields."""

    filename: str | None  #: as the client sent it (unsafe: see :func:`saved_table`)
    data: bytes
    form: FormData  #: its text fields (the files in it are closed)


async def read_one_file(request: Request, ctx: ApiContext, field: str = "file") -> OneFile:
    """A form of exactly one file part named ``field``, its bytes within the server's
    batch-file limit (a table is parsed in memory): 422 for no file or more, 413 for a
    larger one. The form's spooled files are closed before this returns."""
    try:
        form = await read_form(request, 1, field)
    except ApiError as exc:
        if exc.code != "too_many_files":
            raise
        raise _one_file(field) from exc
    try:
        files = files_of(form, field)
        if len(files) != 1:
            raise _one_file(field)
        limit = ctx.settings.server.max_spec_bytes
        data = await files[0].read(limit + 1)
        if len(data) > limit:
            raise ApiError(
                413, "too_large", f"batch files are limited to {limit:,} bytes", field=field
            )
    finally:
        await form.close()
    return OneFile(files[0].filename, data, form)


def _one_file(field: str) -> ApiError:
    return ApiError(422, "invalid_request", f"send exactly one '{field}'", field=field)


@contextmanager
def saved_table(upload: OneFile) -> Iterator[Path]:
    """The uploaded batch file in a private temporary folder, under a safe name."""
    name = file_name(upload.filename, "batch")
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in TABLE_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"batch files must end in {', '.join(TABLE_TYPES)}",
            field="file",
        )
    with tempfile.TemporaryDirectory(prefix="kiln-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(upload.data)
        if suffix == ".xlsx":
            _check_inflated_size(path)
        yield path


def _check_inflated_size(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ApiError(
            422, "invalid_file", f"not a readable XLSX file ({exc})", field="file"
        ) from exc
    if inflated > MAX_TABLE_INFLATED:
        raise ApiError(413, "too_large", "the XLSX file inflates too much", field="file")


def load_table(
    path: Path,
    name: str | None,
    template: TableTemplate | None = None,
    *,
    max_tasks: int | None = None,
) -> LoadedBatch:
    """Read the batch file (thread); SpecError names each problem's row and column.

    Messages name the file as uploaded, not the temporary copy. Pictures in its
    cells are written beside it, in the upload's private folder, until
    :func:`store_pictures` makes them the caller's uploads. A ``template`` makes a
    table's rows items. A file listing more than ``max_tasks`` rows (``[limits]
    max_tasks_per_batch``) is refused before any row becomes a task.
    """
    return load_batch_file(
        path,
        name=name,
        partial=True,
        source=path.name,
        pictures_dir=lambda: path.parent,
        template=template,
        max_tasks=max_tasks,
    )


async def store_pictures(ctx: ApiContext, caller: Caller, loaded: LoadedBatch) -> LoadedBatch:
    """The table's cell pictures stored as the caller's uploads, named ``asset:ID`` in the rows.

    An API caller's inputs must be uploads, so a picture becomes one exactly as an
    uploaded file would (checked against the server's upload limits); one that
    fails those is reported with the others in the batch's problems.
    """
    if not loaded.pictures:
        return loaded
    refs: dict[str, str | None] = {}  # a picture's path → its reference; None: refused
    problems: list[Problem] = []
    records = []
    for path in loaded.pictures:
        try:
            image = await ctx.run(_check, ctx, Path(path).read_bytes())
        except ValueError as exc:
            where, field = _first_use(loaded, path)
            problems.append(
                Problem(loaded.source, where, field, f"the picture in this cell: {exc}")
            )
            refs[path] = None
            continue
        name = file_name(f"{Path(loaded.source).stem}-{Path(path).name}")  # 模板-row2-….png
        records.append((path, await ctx.run(_store, ctx, image, name)))
    assets = await ctx.write(_record_all, caller.user_id, [record for _, record in records])
    refs |= {path: f"asset:{asset.id}" for (path, _), asset in zip(records, assets, strict=True)}
    spec = loaded.spec.with_problems(problems)
    tasks = [_with_refs(task, refs) for task in spec.tasks]
    return replace(loaded, spec=spec.model_copy(update={"tasks": tasks}), pictures=())


def _first_use(loaded: LoadedBatch, path: str) -> tuple[str, str]:
    """Where a picture is used: its row and column (every picture has its own row)."""
    for i, task in enumerate(loaded.spec.tasks):
        if task.init_image == path:
            return loaded.where(i), "init_image"
        if path in (task.reference_images or []):
            return loaded.where(i), "reference_images"
    return "", ""


def _with_refs(task: TaskSpec, refs: dict[str, str | None]) -> TaskSpec:
    """The task with each picture's path replaced by its upload (a refused one left out)."""
    update: dict[str, Any] = {}
    if task.init_image in refs:
        update["init_image"] = refs[task.init_image]
    if task.reference_images and any(p in refs for p in task.reference_images):
        kept = [refs.get(p, p) for p in task.reference_images]
        update["reference_images"] = [ref for ref in kept if ref]
    return task.model_copy(update=update) if update else task
