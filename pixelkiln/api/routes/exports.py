"""Spreadsheets over HTTP: a batch as XLSX or CSV, and the template to fill in.

``GET /api/v1/batches/{id}/export.xlsx`` (or ``.csv``) answers one row per
task, with the columns ``POST /api/v1/batches/import`` reads back, then how the
task went; image links are absolute URLs of this server, input images the
owner's ``asset:ID`` uploads, so the table imports again as it is.
``GET /api/v1/templates/batch.xlsx`` is the empty template. ``?headers=zh``
writes the Chinese headings (提示词, 图片比例, ...) that the import reads too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import Connection

from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.api.views import ImageLinks
from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import asset_ids_at
from pixelkiln.export import TableLinks, table_of
from pixelkiln.inputs.headers import Headers
from pixelkiln.wire.schemas import ErrorBody
from pixelkiln.workbooks import csv_bytes, template_bytes, xlsx_bytes

router = APIRouter(tags=["spreadsheets"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv; charset=utf-8"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 422)}
HeadersQuery = Annotated[
    Headers, Query(description="Headings: en (parameter names) or zh (提示词, 图片比例, ...).")
]


def _download(data: bytes, media_type: str, filename: str) -> Response:
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/batches/{batch_id:int}/export.{kind}",
    responses=ERRORS | {200: {"content": {XLSX: {}, "text/csv": {}}}},
    response_class=Response,
    summary="A batch as a spreadsheet (one row per task, with results)",
)
async def export_batch_table(
    batch_id: IdPath,
    kind: Literal["xlsx", "csv"],
    request: Request,
    ctx: CtxDep,
    caller: CallerDep,
    headers: HeadersQuery = "en",
) -> Response:
    """Input columns, then status, error, image files, their links, and the final prompt."""
    batch = await ctx.read(get_batch, batch_id, caller.scope)
    # absolute, and signed when auth is on: a spreadsheet's link cannot send a token
    images = ImageLinks.of(ctx.settings, ctx.keys, str(request.base_url))
    links = TableLinks(image=lambda image: images.file(image.id), inputs=_uploads(batch.owner_id))
    columns, rows = await ctx.read(table_of, batch_id, links)
    write, media_type = (xlsx_bytes, XLSX) if kind == "xlsx" else (csv_bytes, CSV)
    data = await ctx.run(write, columns, rows, headers)
    return _download(data, media_type, f"batch-{batch.id}.{kind}")


def _uploads(owner_id: int | None) -> Callable[[Connection, list[str]], dict[str, str]]:
    """Input cells as the owner's ``asset:ID`` (a file name where no upload matches)."""

    def cells(conn: Connection, paths: list[str]) -> dict[str, str]:
        ids = asset_ids_at(conn, paths, owner_id)
        return {p: f"asset:{ids[p]}" if p in ids else p.rsplit("/", 1)[-1] for p in paths}

    return cells


@router.get(
    "/templates/batch.xlsx",
    responses=ERRORS | {200: {"content": {XLSX: {}}}},
    response_class=Response,
    summary="The spreadsheet template for a batch",
)
async def batch_template(ctx: CtxDep, headers: HeadersQuery = "en") -> Response:
    """Headings with a note each and one example row; fill it in and import it."""
    data = await ctx.run(template_bytes, headers)
    return _download(data, XLSX, "batch.xlsx")
