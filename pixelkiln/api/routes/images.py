"""``/api/v1/images``: the records search, files, thumbnails, inputs, edit and delete."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import BeforeValidator
from sqlalchemy import Connection

from pixelkiln import service
from pixelkiln.api.deps import (
    CallerDep,
    CtxDep,
    IdPath,
    ImageScopeDep,
    PageDep,
    Pagination,
    page_fields,
    search_text,
)
from pixelkiln.api.errors import ApiError
from pixelkiln.api.media import (
    PRIVATE_CACHE,
    THUMB_TYPE,
    ThumbSize,
    remove_image_files,
    stored_file,
)
from pixelkiln.api.media import thumbnail as cached_thumbnail
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import batch_detail, image_detail
from pixelkiln.db.image_search import find_images
from pixelkiln.db.records import ImageInfo, ImageQuery, delete_image, get_image
from pixelkiln.models import BatchStatus
from pixelkiln.params import check_side
from pixelkiln.service.uploads import edit_input
from pixelkiln.specs import parse_batch
from pixelkiln.wire.schemas import BatchDetail, EditRequest, Id, ImageDetail, Page, stored_id

router = APIRouter(prefix="/images", tags=["images"])
#: an image's file, thumbnail and inputs: readable with a signed link (``exp`` + ``sig``)
#: as well as a token, so this router is mounted without the token dependency and each of
#: its routes asks for :data:`~pixelkiln.api.deps.ImageScopeDep`, which falls back to it
files = APIRouter(prefix="/images", tags=["images"])

PNG = "image/png"


def _page(
    conn: Connection, query: ImageQuery, owner_id: int | None, page: Pagination, count: bool
) -> tuple[list[ImageInfo], int | None]:
    """One page and (when cheap) the number of matches, in one read."""
    limit, offset = page.limit, page.offset
    return find_images(conn, query, owner_id=owner_id, limit=limit, offset=offset, count=count)


_WHEN = "ISO 8601; UTC when it names no time zone"
_Q = (
    "Part of the prompt: case-insensitive, `%` and `_` literal. Three characters or more "
    "are found by the prompt index; shorter ones by a scan."
)
_COUNT = (
    "Also say how many match (`total`) when that is cheap: the counters know it, or the "
    "search looked at every match anyway; else `total` is null (page with the cursor)."
)


def _not_a_number(value: object) -> object:
    """A date and time is written out: a bare number (an epoch?) is refused, not guessed."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError(f"{value!r} is a number; give a date and time ({_WHEN})")
    return value


#: a time in a query: ISO 8601 only (pydantic alone would read a number as epoch seconds)
When = Annotated[datetime, BeforeValidator(_not_a_number)]


def _epoch(when: datetime | None) -> float | None:
    """Seconds since 1970. A naive time is UTC, not the server's local time: converting
    through local time fails for year 1 (and means nothing to a client elsewhere)."""
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@router.get("", responses=ERRORS, summary="Search generated images (records)")
async def search(
    ctx: CtxDep,
    caller: CallerDep,
    page: PageDep,
    response: Response,
    q: Annotated[str | None, search_text(_Q)] = None,
    batch_id: Annotated[Id | None, Query()] = None,
    status: Annotated[BatchStatus | None, Query(description="The batch's status.")] = None,
    backend: Annotated[
        str | None, Query(max_length=100, description="The backend that made the image.")
    ] = None,
    since: Annotated[When | None, Query(description=f"Created at or after ({_WHEN}).")] = None,
    until: Annotated[When | None, Query(description=f"Created before ({_WHEN}).")] = None,
    before: Annotated[Id | None, Query(description="Cursor: ids below this.")] = None,
    count: Annotated[bool, Query(description=_COUNT)] = True,
    history: Annotated[
        bool, Query(description="Also regenerated tasks' earlier images (superseded).")
    ] = False,
) -> Page[ImageDetail]:
    """Newest first; page with ``limit``/``offset``, or with the cursor ``before``.

    ``Server-Timing: search;dur=…`` says how long the server took to find the page (the
    browser's developer tools show it; ``bench/ui.py`` reads it under load)."""
    started = time.perf_counter()
    query = ImageQuery(
        history=history,
        text=q or None,
        backend=backend or None,
        batch_id=None if batch_id is None else stored_id(batch_id, 0),  # past any id: none
        status=status,
        before_id=None if before is None else stored_id(before, None),  # past any: all
        since=_epoch(since),
        until=_epoch(until),
    )
    found, total = await ctx.read(_page, query, caller.mine, page, count)
    fields = page_fields(page, len(found), total)
    cursor = found[-1].image.id if len(found) == page.limit else None
    items = [image_detail(i) for i in found]
    response.headers["Server-Timing"] = f"search;dur={1000 * (time.perf_counter() - started):.1f}"
    return Page[ImageDetail](items=items, next_cursor=cursor, **fields)


@router.get("/{image_id:int}", responses=ERRORS, summary="An image's metadata")
async def metadata(image_id: IdPath, ctx: CtxDep, caller: CallerDep) -> ImageDetail:
    return image_detail(await ctx.read(get_image, image_id, caller.scope))


@files.get(
    "/{image_id:int}/file", responses=ERRORS, response_class=FileResponse, summary="The PNG file"
)
async def file(image_id: IdPath, ctx: CtxDep, scope: ImageScopeDep) -> Response:
    """With auth on: a bearer token, or a signed link's ``exp`` and ``sig``."""
    info = await ctx.read(get_image, image_id, scope)
    name = info.image.path.rsplit("/", 1)[-1]
    return stored_file(
        ctx.storage, info.image.path, media_type=PNG, filename=name, disposition="inline"
    )


@files.get(
    "/{image_id:int}/thumbnail",
    responses=ERRORS,
    response_class=FileResponse,
    summary="A WebP thumbnail, made on first request and cached",
)
async def thumbnail(
    image_id: IdPath, ctx: CtxDep, scope: ImageScopeDep, size: ThumbSize
) -> Response:
    info = await ctx.read(get_image, image_id, scope)
    path = await ctx.run(cached_thumbnail, ctx.storage, info.image, size)
    cache = {"Cache-Control": PRIVATE_CACHE}
    return stored_file(ctx.storage, path, media_type=THUMB_TYPE, headers=cache)


@files.get(
    "/{image_id:int}/inputs/{n:int}",
    responses=ERRORS,
    response_class=FileResponse,
    summary="An input image of the task that made this image",
)
async def task_input(image_id: IdPath, n: int, ctx: CtxDep, scope: ImageScopeDep) -> Response:
    """``n`` = 0: the init image; 1…4: the reference images."""
    info = await ctx.read(get_image, image_id, scope)
    paths = [info.inputs.get("init_image") or "", *(info.inputs.get("reference_images") or [])]
    if not 0 <= n < len(paths) or not paths[n]:
        raise ApiError(404, "not_found", f"image {image_id} has no input {n}")
    return stored_file(ctx.storage, paths[n])


@router.delete("/{image_id:int}", status_code=204, responses=ERRORS, summary="Delete an image")
async def delete(image_id: IdPath, ctx: CtxDep, caller: CallerDep) -> Response:
    info = await ctx.write(delete_image, image_id, caller.scope)
    await ctx.run(remove_image_files, ctx.storage, info.image)
    return Response(status_code=204)


@router.post(
    "/{image_id:int}/edit",
    status_code=201,
    responses=ERRORS,
    summary="Re-prompt an image: a new img2img batch from it",
)
async def edit(
    image_id: IdPath, body: EditRequest, ctx: CtxDep, caller: CallerDep, response: Response
) -> BatchDetail:
    """The original stays as it is; the result is a new one-task batch (charged as such)."""
    info = await ctx.read(get_image, image_id, caller.scope)
    original = await edit_input(ctx.service, caller, info)  # its bytes, as an upload
    task: dict[str, object] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt
        if body.negative_prompt is not None
        else info.negative_prompt,
        "init_image": f"asset:{original.id}",
        "backend": body.backend or info.backend,
        "model": body.model if body.model is not None else info.params.get("model") or None,
        "denoise": body.denoise,
        "seed": body.seed,
        "n": body.n,
        "key": f"edit-{image_id}",
    }
    task.update(_same_size(info.image.width, info.image.height))
    spec = parse_batch(
        {
            "name": body.name or f"edit of image {image_id}",
            "tasks": [{k: v for k, v in task.items() if v is not None}],
        },
        "edit",
    )
    sub = service.Submission(spec, source="api")
    batch_id, _ = await service.submit(ctx.service, caller, sub)
    response.headers["Location"] = f"/api/v1/batches/{batch_id}"
    return batch_detail(await service.batch_page(ctx.service, caller, batch_id))


def _same_size(width: int, height: int) -> dict[str, int]:
    """The original's size when the generator accepts it; else the default size."""
    try:
        return {"width": check_side(width), "height": check_side(height)}
    except ValueError:
        return {}
