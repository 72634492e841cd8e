"""The batch img2img service's admin API, ``/api/admin/*``, over pixelkiln's own admin.

- ``GET|POST /api/admin/config/concurrency``: the global concurrency (1–10 by
  default: ``[server] max_concurrency``), the one ``/api/v1/admin/concurrency`` sets
- ``GET|POST /api/admin/presets``, ``PUT|DELETE /api/admin/presets/{id}``: presets
- ``GET /api/admin/batch/queues``: every user's batches; ``GET /api/admin/batch/stats``

Each calls the service function that the ``/api/v1`` route calls
(:mod:`pixelkiln.service.admin`, :mod:`pixelkiln.service.presets`), so a rule
(what concurrency may be, what a preset must hold) stays in one place.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ConfigDict, Field, ValidationError
from sqlalchemy import Connection

from pixelkiln import service
from pixelkiln.api.compat.envelope import envelope_router
from pixelkiln.api.compat.img2img import SOURCE, concurrency_now
from pixelkiln.api.compat.img2img_shapes import ok, preset_row, queue_row, render_error
from pixelkiln.api.deps import AdminDep, CtxDep, IdPath
from pixelkiln.db.presets import PresetFields
from pixelkiln.db.records import search_batches
from pixelkiln.db.stats import task_counts
from pixelkiln.db.users import get_user
from pixelkiln.models import BatchStatus
from pixelkiln.wire.schemas import MAX_POSITION, JsonBody, PresetCreate, PresetUpdate

router = envelope_router(render_error, prefix="/api/admin", tags=["compat: img2img service"])

ADMIN_QUEUES = 50  #: the service's admin page lists the newest 50


class ConcurrencyBody(JsonBody):
    model_config = ConfigDict(extra="ignore")

    concurrency: int = Field(ge=1)


@router.get("/config/concurrency", summary="The global concurrency (img2img service)")
async def get_concurrency(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    return ok({"concurrency": await concurrency_now(ctx)})


@router.post("/config/concurrency", summary="Change the global concurrency (img2img service)")
async def set_concurrency(body: ConcurrencyBody, ctx: CtxDep, caller: AdminDep) -> dict[str, Any]:
    """At once, and kept over a restart (as ``PUT /api/v1/admin/concurrency``)."""
    now = await service.set_concurrency(ctx.service, caller, body.concurrency, ctx.runner)
    return ok({"concurrency": now.concurrency}, message="concurrency updated")


class PresetBody(JsonBody):
    """A preset as the service's admin page sends it (camelCase sortOrder, isActive)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    # the bounds of our own presets (PresetCreate), so that the schema says them
    title: str | None = Field(None, min_length=1, max_length=200)
    content: str | None = Field(None, min_length=1, max_length=20_000)
    category: str | None = Field(None, max_length=100)
    negative_prompt: str | None = Field(None, max_length=20_000)
    sort_order: int | None = Field(None, alias="sortOrder", ge=0, le=MAX_POSITION)
    is_active: bool | None = Field(None, alias="isActive")

    def ours(self) -> dict[str, Any]:
        values = {
            "title": self.title,
            "content": self.content,
            "category": self.category,
            "negative_prompt": self.negative_prompt,
            "position": self.sort_order,
            "active": self.is_active,
        }
        return {k: v for k, v in values.items() if v is not None}


def _fields(model: type[PresetCreate | PresetUpdate], values: dict[str, Any]) -> PresetFields:
    """``values`` checked as ``/api/v1/presets`` checks them: a bad one is a 422 naming it."""
    try:
        body = model.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    return PresetFields(**body.model_dump(exclude_unset=True))


@router.get("/presets", summary="Every preset (img2img service)")
async def all_presets(ctx: CtxDep, caller: AdminDep) -> dict[str, Any]:
    found = await service.list_presets(ctx.service, caller, include_inactive=True)
    return ok([preset_row(p) for p in found])


@router.post("/presets", summary="Add a preset (img2img service)")
async def add_preset(body: PresetBody, ctx: CtxDep, caller: AdminDep) -> dict[str, Any]:
    values = {"category": "general", **body.ours()}
    made = await service.create_preset(ctx.service, caller, _fields(PresetCreate, values))
    return ok(preset_row(made), message="preset added")


@router.put("/presets/{preset_id}", summary="Change a preset (img2img service)")
async def change_preset(
    preset_id: IdPath, body: PresetBody, ctx: CtxDep, caller: AdminDep
) -> dict[str, Any]:
    fields = _fields(PresetUpdate, body.ours())
    changed = await service.change_preset(ctx.service, caller, preset_id, fields)
    return ok(preset_row(changed), message="preset updated")


@router.delete("/presets/{preset_id}", summary="Delete a preset (img2img service)")
async def delete_preset(preset_id: IdPath, ctx: CtxDep, caller: AdminDep) -> dict[str, Any]:
    await service.delete_preset(ctx.service, caller, preset_id)
    return ok(message="preset deleted")


def _all_queues(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The newest batches of every user, with the owner's name."""
    found, _ = search_batches(conn, owner_id=None, limit=limit, source=SOURCE)
    owners = {b.owner_id for b in found if b.owner_id is not None}
    names = {i: get_user(conn, i).name for i in owners}
    return [queue_row(b, names.get(b.owner_id) if b.owner_id else None) for b in found]


@router.get("/batch/queues", summary="Every user's queues (img2img service)")
async def all_queues(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    return ok(await ctx.read(_all_queues, ADMIN_QUEUES))


#: the service's queue counters → our batch statuses they count
_QUEUE_COUNTS = {
    "pending_queues": (BatchStatus.QUEUED, BatchStatus.PAUSED),
    "processing_queues": (BatchStatus.RUNNING,),
    "completed_queues": (BatchStatus.COMPLETED, BatchStatus.PARTIAL),
    "failed_queues": (BatchStatus.FAILED,),
    "cancelled_queues": (BatchStatus.CANCELLED,),
}


def _stats(conn: Connection) -> dict[str, Any]:
    def queues(statuses: tuple[BatchStatus, ...] | None = None) -> int:
        return search_batches(conn, owner_id=None, statuses=statuses, limit=1, source=SOURCE)[1]

    figures: dict[str, Any] = {"total_queues": queues()}
    for name, statuses in _QUEUE_COUNTS.items():
        figures[name] = queues(statuses)
    tasks = task_counts(conn)
    figures["total_images"] = sum(tasks.values())
    figures["completed_images"] = tasks.get("succeeded", 0)
    figures["failed_images"] = tasks.get("failed", 0) + tasks.get("cancelled", 0)
    return figures


@router.get("/batch/stats", summary="Queue and image counts (img2img service)")
async def stats(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    return ok(await ctx.read(_stats))
