"""The batch img2img service's user API, ``/api/batch/*``, over ordinary batches.

Switched on by ``[compat] img2img_service = true``, so the service's existing
web front end can use pixelkiln as its back end unchanged (docs/compat.md):

- ``POST /api/batch/create``: FormData ``images`` (≤ 50), ``prompt``, ``model``,
  ``batchName`` (and a ``presetId``) → ``queueId``, ``totalImages``, ``usedUserKey``
- ``GET /api/batch/queue/{queueId}`` → ``queue`` + ``tasks``; ``GET /api/batch/queues?limit=``
- ``POST /api/batch/queue/{queueId}/cancel``; ``POST /api/batch/task/{taskId}/retry``
- ``GET /api/batch/presets``; ``GET /api/batch/config`` (the global concurrency)

A queue is one of our batches (the same id in ``/api/v1/batches``), a task
one of its tasks; uploads, prices, retries and cancels are the service layer's,
as for ``/api/v1``. What the service itself did differently is said in docs/compat.md.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection

from pixelkiln import service
from pixelkiln.api.compat.envelope import envelope_router
from pixelkiln.api.compat.img2img_shapes import ok, preset_row, queue_row, render_error, task_row
from pixelkiln.api.deps import ApiContext, CallerDep, CtxDep, IdPath
from pixelkiln.api.errors import ApiError
from pixelkiln.api.uploads import files_of, form_body, read_form, store_images
from pixelkiln.api.views import ImageLinks
from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import images_of_tasks, search_batches
from pixelkiln.db.tasks import list_tasks
from pixelkiln.models import Batch, ImageRecord, Task
from pixelkiln.problems import invalid_value
from pixelkiln.service import Caller, Submission, Uploaded, UploadFields
from pixelkiln.service.reading import scoped_task
from pixelkiln.specs import BatchSpec
from pixelkiln.wire.schemas import Id

router = envelope_router(render_error, prefix="/api/batch", tags=["compat: img2img service"])

MAX_TASKS_SHOWN = 1000  #: a queue of the service holds ≤ 50 tasks; ours may hold more


class CreateFields(BaseModel):
    """The text fields of ``POST /api/batch/create`` (camelCase, as its front end sends)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)

    prompt: str = Field("", max_length=20_000)
    model: str | None = Field(None, max_length=200)
    batch_name: str | None = Field(None, alias="batchName", max_length=200)
    preset_id: Id | None = Field(None, alias="presetId")


_CREATE_BODY = form_body(
    "images",
    {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "prompt": {"type": "string"},
        "model": {"type": "string"},
        "batchName": {"type": "string"},
        "presetId": {"type": "integer"},
    },
)


@router.post("/create", openapi_extra=_CREATE_BODY, summary="Create a batch (img2img service)")
async def create(request: Request, ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    """One task per uploaded image, one prompt (or preset) for all; charged as /api/v1 is."""
    form = await read_form(request, ctx.settings.server.max_upload_files, "images")
    try:
        fields = CreateFields.model_validate(
            {k: v for k, v in form.multi_items() if isinstance(v, str) and v != ""}
        )
        if not fields.prompt and fields.preset_id is None:
            raise _invalid("prompt", "a prompt (or a preset) is required")
        uploads = await store_images(ctx, caller, files_of(form, "images"), field="images")
        spec = await _spec(ctx, fields, uploads)
    except ValidationError as exc:
        raise invalid_value(exc) from exc
    finally:
        await form.close()
    sub = Submission(
        spec,
        source=SOURCE,
        fingerprint=service.fingerprint(
            "img2img", fields.model_dump(), [(u.asset.sha256, u.filename) for u in uploads]
        ),
    )
    batch_id, _ = await service.submit(ctx.service, caller, sub)
    used_user_key = await _used_user_key(ctx, caller, batch_id)
    created = {"queueId": batch_id, "totalImages": len(uploads), "usedUserKey": used_user_key}
    return ok(created, message="batch created", **created)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field=field)


async def _spec(ctx: ApiContext, fields: CreateFields, uploads: list[Uploaded]) -> BatchSpec:
    """The /api/v1 upload batch (:func:`pixelkiln.service.upload_spec`): presets, task keys
    (the files' names) and output shapes alike.

    ``model`` names a configured backend, or else the model to ask the default one for.
    """
    backends = ctx.service.backends.names
    choice = {"backend": fields.model} if fields.model in backends else {"model": fields.model}
    upload = UploadFields.model_validate(
        {
            "name": fields.batch_name or f"batch_{int(time.time() * 1000)}",
            "prompt": fields.prompt,
            "preset_id": fields.preset_id,
            **{k: v for k, v in choice.items() if v},
        }
    )
    return await service.upload_spec(ctx.service, upload, uploads)


async def _used_user_key(ctx: ApiContext, caller: Caller, batch_id: int) -> bool:
    """Whether the batch runs on the owner's own provider key (then it costs no credits)."""
    page = await service.batch_page(ctx.service, caller, batch_id, service.TaskPage(limit=1))
    pricing = await service.pricing_for(ctx.service, page.batch.owner_id)
    return bool(page.tasks) and page.tasks[0].backend in pricing.own_keys


def _queue(
    conn: Connection, batch_id: int, scope: int | None
) -> tuple[Batch, list[Task], dict[int, list[ImageRecord]]]:
    batch = get_batch(conn, batch_id, scope)
    tasks = list_tasks(conn, batch_id, limit=MAX_TASKS_SHOWN)
    return batch, tasks, images_of_tasks(conn, [t.id for t in tasks])


@router.get("/queue/{queue_id}", summary="A queue and its tasks (img2img service)")
async def queue(queue_id: IdPath, ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    batch, tasks, images = await ctx.read(_queue, queue_id, caller.scope)
    # the uploaded image is served through the image made from it (none before that)
    links = ImageLinks.of(ctx.settings, ctx.keys, "")
    rows = [task_row(t, batch.owner_id, images.get(t.id, []), links) for t in tasks]
    return ok({"success": True, "queue": queue_row(batch), "tasks": rows})


Limit = Annotated[int, Query(ge=1, le=500, description="Newest first.")]
#: ``batches.source`` of the queues made here: the service's lists show only those
SOURCE = "img2img"


@router.get("/queues", summary="My queues (img2img service)")
async def queues(ctx: CtxDep, caller: CallerDep, limit: Limit = 20) -> dict[str, Any]:
    found, _ = await ctx.read(search_batches, owner_id=caller.mine, limit=limit, source=SOURCE)
    return ok([queue_row(b) for b in found])


@router.post("/queue/{queue_id}/cancel", summary="Cancel a queue (img2img service)")
async def cancel(queue_id: IdPath, ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    batch = await service.cancel(ctx.service, caller, queue_id)
    return ok(queue_row(batch), message="queue cancelled")


def _owned_task(conn: Connection, task_id: int, scope: int | None) -> Task:
    return scoped_task(conn, task_id, scope)[0]  # another's: "no task N", as a missing one


@router.post("/task/{task_id}/retry", summary="Retry a failed task (img2img service)")
async def retry(task_id: IdPath, ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    """A failed (or cancelled) task goes back in the queue, charged like a new create."""
    task = await ctx.read(_owned_task, task_id, caller.scope)
    await service.retry(
        ctx.service, caller, task.batch_id, task_ids=[task.id], include_cancelled=True
    )
    return ok(message="task re-queued")


@router.get("/presets", summary="Active presets (img2img service)")
async def presets(ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    return ok([preset_row(p) for p in await service.list_presets(ctx.service, caller)])


@router.get("/config", summary="The global concurrency (img2img service)")
async def config(ctx: CtxDep, _: CallerDep) -> dict[str, Any]:
    return ok({"concurrency": await concurrency_now(ctx)})


async def concurrency_now(ctx: ApiContext) -> int:
    """Tasks that may run at once over all backends: what an admin set, else configured."""
    return (await service.concurrency_view(ctx.service, ctx.runner)).concurrency
