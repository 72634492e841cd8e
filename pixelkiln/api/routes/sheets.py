"""Contact sheets of a sweep batch: ``GET /api/v1/batches/{id}/sheets`` lists them,
``GET /api/v1/batches/{id}/sheet.png?z=…`` draws one (see docs/sheets.md).

A sheet changes while its batch runs, so it is never cached (``Cache-Control: no-store``);
like every route here it takes a bearer token or the web UI's session cookie.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from pixelkiln import service
from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.sheets import DEFAULT_CELL, MIN_CELL
from pixelkiln.wire.schemas import ErrorBody

router = APIRouter(prefix="/batches", tags=["sheets"])

PNG = "image/png"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 409, 422)
}
MAX_CELL = 1024


class SheetPublic(BaseModel):
    """One contact sheet of a sweep batch."""

    model_config = ConfigDict(extra="ignore")

    z: str | None  #: the z value as ``?z=`` takes it; null when the sweep has no z axis
    label: str  #: "model=m1"; "" without a z axis
    group: int  #: 1-based; more than one when several tasks share each cell
    groups: int  #: the groups of this z value
    task: str = ""  #: with several groups: the key its tasks share before the axes (``fox#2``)
    url: str  #: the sheet's PNG, relative to this server


class SheetList(BaseModel):
    """The contact sheets of a batch: none when it is not a sweep."""

    model_config = ConfigDict(extra="ignore")

    sheets: list[SheetPublic]


def _url(batch_id: int, ref: service.SheetRef) -> str:
    query: dict[str, str | int] = {} if ref.z is None else {"z": ref.z}
    if ref.groups > 1:
        query["group"] = ref.group
    tail = f"?{urlencode(query)}" if query else ""
    return f"/api/v1/batches/{batch_id}/sheet.png{tail}"


@router.get(
    "/{batch_id:int}/sheets", responses=ERRORS, summary="The contact sheets of a sweep batch"
)
async def sheets(batch_id: IdPath, ctx: CtxDep, caller: CallerDep) -> SheetList:
    """One sheet per z value (and per group when several tasks share each cell); an empty
    list for a batch that is not a sweep; 409 for a sweep too large to draw."""
    refs = await service.list_sheets(ctx.service, caller, batch_id)
    return SheetList(
        sheets=[
            SheetPublic(
                z=r.z,
                label=r.label,
                group=r.group,
                groups=r.groups,
                task=r.task,
                url=_url(batch_id, r),
            )
            for r in refs
        ]
    )


@router.get(
    "/{batch_id:int}/sheet.png",
    response_class=Response,
    responses=ERRORS
    | {200: {"content": {PNG: {}}, "description": "The sheet, drawn from the results so far."}},
    summary="A contact sheet of a sweep batch (PNG)",
)
async def sheet(
    batch_id: IdPath,
    ctx: CtxDep,
    caller: CallerDep,
    z: Annotated[
        str | None,
        Query(max_length=1000, description="The z value (default: the first); 422 lists them."),
    ] = None,
    group: Annotated[
        int, Query(ge=1, le=100_000, description="Which task of each cell (1 = the first).")
    ] = 1,
    cell: Annotated[
        int, Query(ge=MIN_CELL, le=MAX_CELL, description="Cell size in pixels (longer side).")
    ] = DEFAULT_CELL,
) -> Response:
    """Columns are the x values, rows the y values; a grey cell says why it has no image yet
    (pending, running, failed, cancelled, missing). 409 when the batch is not a sweep."""
    png = await service.sheet_png(ctx.service, caller, batch_id, z=z, group=group, cell=cell)
    return Response(png, media_type=PNG, headers={"Cache-Control": "no-store"})
