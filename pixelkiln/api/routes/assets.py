"""``/api/v1/assets``: upload input images (init / reference), list them, fetch them back;
make one of my generated images an upload (``from-image``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from pixelkiln.api.deps import CallerDep, CtxDep, IdPath, PageDep, page_fields
from pixelkiln.api.media import (
    PRIVATE_CACHE,
    THUMB_TYPE,
    ThumbSize,
    asset_thumbnail,
    stored_file,
)
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.uploads import IMAGE_FILES, files_of, form_body, read_form, store_images
from pixelkiln.api.views import asset_public
from pixelkiln.db.records import get_asset, list_assets
from pixelkiln.service.uploads import asset_from_image
from pixelkiln.wire.schemas import AssetFromImage, AssetPublic, Page

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


@router.post("/from-image", responses=ERRORS, summary="Make one of my generated images an upload")
async def from_image(body: AssetFromImage, ctx: CtxDep, caller: CallerDep) -> AssetPublic:
    """A past result as a reference for a new batch: batch specs name inputs only as
    ``asset:<id>``. Asking again (or for bytes already uploaded) answers the same asset;
    another user's image is 404."""
    return asset_public(await asset_from_image(ctx.service, caller, body.image_id))


@router.get("", responses=ERRORS, summary="List my uploaded images")
async def list_uploads(ctx: CtxDep, caller: CallerDep, page: PageDep) -> Page[AssetPublic]:
    """Newest first, each with its name, size, file and thumbnail URLs (an admin: their own)."""
    found, total = await ctx.read(list_assets, caller.mine, limit=page.limit, offset=page.offset)
    return Page[AssetPublic].model_construct(
        items=[asset_public(a) for a in found], **page_fields(page, len(found), total)
    )


@router.get("/{asset_id:int}", responses=ERRORS, summary="One uploaded image's record")
async def one(asset_id: IdPath, ctx: CtxDep, caller: CallerDep) -> AssetPublic:
    return asset_public(await ctx.read(get_asset, asset_id, caller.scope))


@router.get(
    "/{asset_id:int}/file",
    responses=ERRORS,
    response_class=FileResponse,
    summary="An uploaded image",
)
async def file(asset_id: IdPath, ctx: CtxDep, caller: CallerDep) -> Response:
    asset = await ctx.read(get_asset, asset_id, caller.scope)
    return stored_file(ctx.storage, asset.path, media_type=asset.mime)


@router.get(
    "/{asset_id:int}/thumbnail",
    responses=ERRORS,
    response_class=FileResponse,
    summary="A WebP thumbnail of an uploaded image, made on first request and cached",
)
async def thumbnail(asset_id: IdPath, ctx: CtxDep, caller: CallerDep, size: ThumbSize) -> Response:
    asset = await ctx.read(get_asset, asset_id, caller.scope)
    path = await ctx.run(asset_thumbnail, ctx.storage, asset, size)
    cache = {"Cache-Control": PRIVATE_CACHE}
    return stored_file(ctx.storage, path, media_type=THUMB_TYPE, headers=cache)
