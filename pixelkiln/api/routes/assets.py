"""``/api/v1/assets``: upload input images (init / reference) and fetch them back."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.api.media import StoredFile
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.uploads import IMAGE_FILES, files_of, form_body, read_form, store_images
from pixelkiln.api.views import asset_public
from pixelkiln.db.records import get_asset
from pixelkiln.wire.schemas import AssetPublic

router = APIRouter(prefix="/assets", tags=["assets"])

_BODY = form_body("files", {"files": IMAGE_FILES})


@router.post(
    "", status_code=201, responses=ERRORS, openapi_extra=_BODY, summary="Upload input images"
)
async def upload(request: Request, ctx: CtxDep, caller: CallerDep) -> list[AssetPublic]:
    """Checked by content (PNG, JPEG, GIF, WebP), size and pixel count; use ``ref`` in a batch."""
    form = await read_form(request, ctx.settings.server.max_upload_files)
    try:
        uploads = await store_images(ctx, caller, files_of(form, "files"))
    finally:
        await form.close()
    return [asset_public(u.asset, u.filename) for u in uploads]


@router.get(
    "/{asset_id}/file", responses=ERRORS, response_class=FileResponse, summary="An uploaded image"
)
async def file(asset_id: IdPath, ctx: CtxDep, caller: CallerDep) -> FileResponse:
    asset = await ctx.read(get_asset, asset_id, caller.scope)
    return StoredFile(ctx.storage.absolute(asset.path), media_type=asset.mime)
