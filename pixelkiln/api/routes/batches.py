"""``/api/v1/batches``: create (JSON, image uploads, batch files), read, list, control, delete."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import SkipValidation, ValidationError

from pixelkiln import service
from pixelkiln.api.deps import (
    ApiContext,
    CallerDep,
    CtxDep,
    IdPath,
    PageDep,
    Pagination,
    page_fields,
    search_text,
)
from pixelkiln.api.media import zip_stream
from pixelkiln.api.plain_text import check_json
from pixelkiln.api.table_template import TEMPLATE_FIELDS, template_of
from pixelkiln.api.uploads import (
    IMAGE_FILES,
    files_of,
    form_body,
    load_table,
    read_form,
    read_one_file,
    saved_table,
    store_images,
    store_pictures,
)
from pixelkiln.api.views import batch_detail, batch_public
from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import count_active, search_batches
from pixelkiln.db.tasks import list_images
from pixelkiln.exceptions import SpecError
from pixelkiln.inputs.sizes import listed_in_json, may_list_more
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.problems import invalid_value
from pixelkiln.service import Caller, Submission, TaskPage, UploadFields, plans
from pixelkiln.service.submission import plan
from pixelkiln.specs import BatchSpec, parse_batch
from pixelkiln.wire.schemas import (
    ActiveCount,
    BatchDetail,
    BatchPlan,
    BatchPublic,
    ErrorBody,
    Offset,
    Page,
    RegenerateRequest,
    RegenerateResult,
    RetryRequest,
    RetryResult,
)

router = APIRouter(prefix="/batches", tags=["batches"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 402, 404, 409, 413, 422)
}
#: a create's other answers: the same batch again (an Idempotency-Key replayed), or
#: still running when ``wait`` ran out
CREATED: dict[int | str, dict[str, Any]] = {
    200: {"model": BatchDetail, "description": "The batch made before with this Idempotency-Key"},
    202: {"model": BatchDetail, "description": "Made; still running when the wait ended"},
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retrying a create with the same key never makes a second batch.",
    ),
]
Wait = Annotated[bool, Query(description="Answer when the batch has ended, with every task.")]
WaitTimeout = Annotated[
    float | None, Query(gt=0, description="Longest wait in seconds (default: the server's).")
]
DryRun = Annotated[
    bool,
    Query(
        description="Check the batch exactly as a create would (same 422 and 402), then "
        "answer 200 with what it would be (BatchPlan): nothing stored, nothing charged."
    ),
]


async def _created(
    ctx: ApiContext,
    caller: Caller,
    sub: Submission,
    response: Response,
    wait: bool,
    timeout: float | None,
) -> BatchDetail:
    batch_id, created = await service.submit(ctx.service, caller, sub)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/v1/batches/{batch_id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    page = TaskPage()
    if wait:
        limit = min(
            timeout or ctx.settings.server.max_wait_seconds, ctx.settings.server.max_wait_seconds
        )
        if not await service.wait_until_finished(ctx.service, batch_id, limit):
            response.status_code = 202  # accepted, still running: poll GET /batches/{id}
        page = TaskPage(limit=service.ALL_TASKS)
    return batch_detail(await service.batch_page(ctx.service, caller, batch_id, page))


@dataclass(frozen=True)
class _SpecJson:
    """A create's JSON body as :class:`_SpecBody` read it (``request.state.spec_json``)."""

    data: Any = None  #: the parsed spec (a JSON object); None when FastAPI reads the body
    listed: int | None = None  #: entries of its tasks and items, when over the limit


def _read_spec_json(data: bytearray, limit: int) -> tuple[_SpecJson, bytes]:
    """The body read (a thread): a spec listing more than ``limit`` tasks counted, never
    built; else parsed. And the bytes FastAPI then reads: none, or the body when it is no
    JSON object (FastAPI answers that as it always did)."""
    if may_list_more(len(data), limit):
        listed = listed_in_json(data)
        if listed is not None and listed > limit:
            return _SpecJson(listed=listed), b"{}"
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return _SpecJson(), bytes(data)
    if not isinstance(parsed, dict):
        return _SpecJson(), bytes(data)
    return _SpecJson(data=parsed), b"{}"


class _Read(Request):
    """The request with its body already read: FastAPI's own reading gets ``content``."""

    def __init__(self, request: Request, content: bytes) -> None:
        super().__init__(request.scope, request.receive)
        self._content = content

    async def body(self) -> bytes:
        return self._content


class _SpecBody(APIRoute):
    """A create's JSON body read in a thread, not on the event loop by FastAPI: a spec over
    ``[limits] max_tasks_per_batch`` is counted without being built (and refused once the
    caller is known), and the raw JSON is dropped as soon as the spec is validated, so a
    large spec is not held three times over (bytes, JSON, spec) while it is submitted."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def read_first(request: Request) -> Response:
            media = request.headers.get("content-type", "application/json")
            media = media.split(";")[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                return await handler(request)
            data = bytearray()
            async for chunk in request.stream():  # not kept by the request, as body() would
                data += chunk
            ctx: ApiContext = request.app.state.ctx
            limit = ctx.settings.limits.max_tasks_per_batch
            read, content = await ctx.run(_read_spec_json, data, limit)
            del data
            forward = _Read(request, content)
            forward.state.spec_json = read
            del read
            return await handler(forward)

        return read_first


def _spec_json(request: Request, body: Any) -> Any:
    """The spec data :class:`_SpecBody` read (taken off the request, so that nothing holds
    it once validated), or the body FastAPI read; SpecError for one over the task limit."""
    read: _SpecJson | None = getattr(request.state, "spec_json", None)
    if read is None:
        return body
    del request.state.spec_json
    if read.listed is not None:
        limits = request.app.state.ctx.settings.limits
        over = plans.too_many_tasks(read.listed, limits, "")
        if over is not None:
            raise SpecError([over])
    return read.data if read.data is not None else body


async def create_batch(
    request: Request,
    body: Annotated[BatchSpec, SkipValidation],  # documented as a BatchSpec, checked below
    ctx: CtxDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = False,
    timeout: WaitTimeout = None,
    dry_run: DryRun = False,
) -> BatchDetail | BatchPlan:
    """Queue a batch (``{"name", "defaults", "tasks": [...]}``); 402 when credits do not cover it.

    Input images must be uploads (``asset:<id>`` from ``POST /api/v1/assets``).
    Every problem (values, uploads, backends) is answered at once in one 422.
    With ``dry_run=true`` nothing is queued: 200 and a BatchPlan (tasks, images, credits,
    estimated seconds and money, per backend; see docs/plans.md).
    """
    data = _spec_json(request, body)
    del body
    await ctx.run(check_json, data)  # read by the route, not FastAPI: the text guard's rule
    spec = await ctx.run(parse_batch, data, partial=True)
    del data  # the spec holds what is needed: its raw JSON goes now
    if dry_run:
        response.status_code = 200
        found = await plan(ctx.service, caller, Submission(spec))
        found.refuse()  # over a limit or the balance: the very 422 or 402 of a create
        return BatchPlan.model_validate(found, from_attributes=True)
    sub = Submission(
        spec,
        idempotency_key=idempotency_key,
        fingerprint=service.fingerprint("json", spec),
    )
    return await _created(ctx, caller, sub, response, wait, timeout)


router.add_api_route(
    "",
    create_batch,
    methods=["POST"],
    status_code=201,
    responses=ERRORS
    | CREATED
    | {200: {"model": BatchDetail | BatchPlan, "description": "A replay, or the dry run's plan"}},
    summary="Create a batch from a spec",
    route_class_override=_SpecBody,
)


_UPLOAD_BODY = form_body(
    "files", {"files": IMAGE_FILES, **UploadFields.model_json_schema()["properties"]}
)


@router.post(
    "/upload",
    status_code=201,
    responses=ERRORS | CREATED,
    openapi_extra=_UPLOAD_BODY,
    summary="Create an img2img batch from uploaded images",
)
async def create_from_uploads(
    request: Request,
    ctx: CtxDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = False,
    timeout: WaitTimeout = None,
) -> BatchDetail:
    """Up to 50 images (JPG/PNG/GIF/WebP, 10 MB each), one prompt (or a preset) for all."""
    form = await read_form(request, ctx.settings.server.max_upload_files)
    try:
        fields = UploadFields.model_validate(
            {k: v for k, v in form.multi_items() if isinstance(v, str) and v != ""}
        )
        uploads = await store_images(ctx, caller, files_of(form, "files"))
    except ValidationError as exc:
        raise invalid_value(exc) from exc
    finally:
        await form.close()
    spec = await service.upload_spec(ctx.service, fields, uploads)
    sub = Submission(
        spec,
        source="api",
        idempotency_key=idempotency_key,
        fingerprint=service.fingerprint(
            "upload", fields.model_dump(), [(u.asset.sha256, u.filename) for u in uploads]
        ),
    )
    return await _created(ctx, caller, sub, response, wait, timeout)


@router.post(
    "/import",
    status_code=201,
    responses=ERRORS | CREATED | {415: {"model": ErrorBody}},
    summary="Create a batch from an uploaded batch file (XLSX, CSV, JSON, YAML, TOML)",
    openapi_extra=form_body(
        "file",
        {
            "file": {"type": "string", "format": "binary"},
            "name": {"type": "string"},
            **TEMPLATE_FIELDS,
        },
    ),
)
async def create_from_file(
    request: Request,
    ctx: CtxDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = False,
    timeout: WaitTimeout = None,
) -> BatchDetail:
    """Rows carry the batch spec's parameter names as columns; errors name row and column.

    With a ``template`` field each row is an item, its other columns the item's fields.
    """
    upload = await read_one_file(request, ctx)
    name = upload.form.get("name")
    template = template_of(upload.form)
    with saved_table(upload) as path:
        loaded = await ctx.run(
            load_table,
            path,
            name if isinstance(name, str) and name else None,
            template,
            max_tasks=ctx.settings.limits.max_tasks_per_batch,
        )
        loaded = await store_pictures(ctx, caller, loaded)  # while their files exist
    sub = Submission(
        loaded.spec,
        source="api",
        source_name=loaded.source,
        where=loaded.where,
        idempotency_key=idempotency_key,
        fingerprint=service.fingerprint("file", loaded.spec),
    )
    return await _created(ctx, caller, sub, response, wait, timeout)


StatusFilter = Annotated[list[BatchStatus] | None, Query(alias="status")]


@router.get("", responses=ERRORS, summary="List my batches")
async def list_batches(
    ctx: CtxDep,
    caller: CallerDep,
    page: PageDep,
    status: StatusFilter = None,
    q: Annotated[str | None, search_text("Part of name or prompt.")] = None,
) -> Page[BatchPublic]:
    return await search_page(ctx, page, caller.mine, status, q)


async def search_page(
    ctx: ApiContext,
    page: Pagination,
    owner_id: int | None,
    status: list[BatchStatus] | None,
    q: str | None,
) -> Page[BatchPublic]:
    """A page of the batches that match (one owner's, or with ``None`` everyone's)."""
    batches, total = await ctx.read(
        search_batches,
        owner_id=owner_id,
        statuses=status,
        text=q,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[BatchPublic].model_construct(
        items=[batch_public(b) for b in batches], **page_fields(page, len(batches), total)
    )


@router.get("/active", responses=ERRORS, summary="Count my unfinished batches")
async def active_batches(ctx: CtxDep, caller: CallerDep) -> ActiveCount:
    return ActiveCount(active=await ctx.read(count_active, caller.mine))


@router.get("/{batch_id:int}", responses=ERRORS, summary="One batch with a page of its tasks")
async def get_one(
    batch_id: IdPath,
    ctx: CtxDep,
    caller: CallerDep,
    task_status: Annotated[list[TaskStatus] | None, Query()] = None,
    task_limit: Annotated[int, Query(ge=0, le=1000)] = 50,
    task_offset: Annotated[Offset, Query()] = 0,
) -> BatchDetail:
    """Status, counters, progress 0–1, estimated remaining seconds, and tasks (paginated)."""
    page = TaskPage(task_status, task_limit, task_offset)
    return batch_detail(await service.batch_page(ctx.service, caller, batch_id, page))


@router.post("/{batch_id:int}/cancel", responses=ERRORS, summary="Cancel a batch")
async def cancel(batch_id: IdPath, ctx: CtxDep, caller: CallerDep) -> BatchPublic:
    """Pending tasks stop at once (refunded), running ones at their next lease check."""
    return batch_public(await service.cancel(ctx.service, caller, batch_id))


@router.post("/{batch_id:int}/retry", responses=ERRORS, summary="Retry failed tasks")
async def retry(
    batch_id: IdPath, ctx: CtxDep, caller: CallerDep, body: RetryRequest | None = None
) -> RetryResult:
    """Every failed task (or only ``task_ids``); charged again like a new create."""
    body = body or RetryRequest()
    count = await service.retry(
        ctx.service,
        caller,
        batch_id,
        task_ids=body.task_ids,
        include_cancelled=body.include_cancelled,
    )
    batch = await ctx.read(get_batch, batch_id)
    return RetryResult(retried=count, batch=batch_public(batch))


@router.post(
    "/{batch_id:int}/regenerate", responses=ERRORS, summary="Run chosen tasks again, succeeded too"
)
async def regenerate(
    batch_id: IdPath, body: RegenerateRequest, ctx: CtxDep, caller: CallerDep
) -> RegenerateResult:
    """The tasks named by ``keys`` or ``task_ids`` run again; charged like a retry.

    Their earlier images stay as history (``?history=true``) once the new ones are
    recorded, or are deleted then with ``replace``. 404 names unknown keys or ids,
    409 tasks still pending or running.
    """
    count = await service.regenerate(
        ctx.service,
        caller,
        batch_id,
        keys=body.keys,
        task_ids=body.task_ids,
        replace=body.replace,
    )
    batch = await ctx.read(get_batch, batch_id)
    return RegenerateResult(regenerated=count, batch=batch_public(batch))


@router.post("/{batch_id:int}/pause", responses=ERRORS, summary="Pause a batch")
async def pause(batch_id: IdPath, ctx: CtxDep, caller: CallerDep) -> BatchPublic:
    return batch_public(await service.pause(ctx.service, caller, batch_id))


@router.post("/{batch_id:int}/resume", responses=ERRORS, summary="Resume a paused batch")
async def resume(batch_id: IdPath, ctx: CtxDep, caller: CallerDep) -> BatchPublic:
    return batch_public(await service.resume(ctx.service, caller, batch_id))


@router.delete("/{batch_id:int}", status_code=204, responses=ERRORS, summary="Delete a batch")
async def delete(batch_id: IdPath, ctx: CtxDep, caller: CallerDep) -> Response:
    """A finished batch with its tasks, events and image files; 409 while it runs."""
    await service.delete(ctx.service, caller, batch_id)
    return Response(status_code=204)


@router.get(
    "/{batch_id:int}/images.zip",
    responses=ERRORS | {200: {"content": {"application/zip": {}}}},
    response_class=StreamingResponse,
    summary="Every image of a batch as a ZIP",
)
async def images_zip(batch_id: IdPath, ctx: CtxDep, caller: CallerDep) -> StreamingResponse:
    """Streamed while it is written: memory does not grow with the batch."""
    batch = await ctx.read(get_batch, batch_id, caller.scope)
    images = await ctx.read(list_images, batch_id)
    filename = f"batch-{batch.id}.zip"
    return StreamingResponse(
        zip_stream(ctx.storage, images),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
