"""``/api/v1/tables``: a batch table in and out of a spreadsheet, without making a batch.

The web UI's batch table reads an uploaded XLSX or CSV into rows it can edit
(``parse``: the same loader as ``POST /api/v1/batches/import``, Chinese headings and
pictures in cells, which become the caller's uploads) and writes the rows it holds
back to an XLSX (``export``) with the template's headings, in English or Chinese.
Starting the table is an ordinary ``POST /api/v1/batches``.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from pixelkiln.api.deps import CallerDep, CtxDep
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.uploads import (
    form_body,
    load_table,
    read_one_file,
    saved_table,
    store_pictures,
)
from pixelkiln.inputs.headers import Headers
from pixelkiln.naming import file_name
from pixelkiln.service.tables import check_problems, table_cells, table_rows
from pixelkiln.wire.schemas import ErrorBody
from pixelkiln.wire.web import ParsedTable, TableExport
from pixelkiln.workbooks import xlsx_bytes

router = APIRouter(prefix="/tables", tags=["spreadsheets"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_FILE = {"file": {"type": "string", "format": "binary"}}


@router.post(
    "/parse",
    responses=ERRORS | {415: {"model": ErrorBody}},
    openapi_extra=form_body("file", _FILE),
    summary="Read a batch table (XLSX, CSV, JSON, YAML, TOML) into rows; no batch is made",
)
async def parse(request: Request, ctx: CtxDep, caller: CallerDep) -> ParsedTable:
    """Headings in English or Chinese; pictures in cells become my uploads (``asset:<id>``
    in ``reference_images``). Every problem in one 422 naming row and column."""
    upload = await read_one_file(request, ctx)
    with saved_table(upload) as path:
        limit = ctx.settings.limits.max_tasks_per_batch
        loaded = await ctx.run(load_table, path, None, max_tasks=limit)
        check_problems(loaded)  # before any picture is stored
        loaded = await store_pictures(ctx, caller, loaded)  # while their files exist
    check_problems(loaded)  # a picture that is no image
    defaults, rows = table_rows(loaded)
    return ParsedTable(name=loaded.spec.name, defaults=defaults, rows=rows)


@router.post(
    "/export",
    responses=ERRORS | {200: {"content": {XLSX: {}}}},
    response_class=Response,
    summary="Write the rows of a batch table as an XLSX (the template's headings)",
)
async def export(body: TableExport, ctx: CtxDep) -> Response:
    """Rows as they are, checked or not (a draft exports too); ``POST /tables/parse`` or
    ``POST /batches/import`` reads the file back."""
    columns, rows = table_cells(body.rows)
    headers: Headers = "zh" if body.headers == "zh" else "en"
    data = await ctx.run(xlsx_bytes, columns, rows, headers)
    name = file_name(f"{body.name or 'batch'}.xlsx", "batch")
    disposition = f"attachment; filename=\"batch.xlsx\"; filename*=UTF-8''{quote(name)}"
    return Response(data, media_type=XLSX, headers={"Content-Disposition": disposition})
