"""The slide-deck image API, ``/api/slide/batch/*``, over one ordinary batch per request.

Switched on by ``[compat] slides = true`` (docs/compat.md). The presentation
tool posts its slides and a style; each slide becomes an item of one batch
(its ``id`` the task key), and the batch's ``template`` (``[compat]
slide_template``) composes each slide's prompt from the slide's fields and the
``style_prompt`` (a batch var). Answers are the tool's documented shapes:

- ``POST /api/slide/batch/generate``: waits for the batch's end → per slide
  ``slide_id, page_num, title, image_url, final_prompt, status, error_message,
  generation_time`` plus ``batch_id, total_slides, successful, failed, total_time``
- ``POST /api/slide/batch/status`` ``{"batch_id"}`` → ``progress`` 0–1,
  ``completed_slides``, ``estimated_remaining_time`` and the results so far
- ``GET /api/slide/batch/active-count`` → ``active_batches``

Errors are FastAPI's ``{"detail": "…"}``, as the tool documents them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, WithJsonSchema, field_validator

from pixelkiln import service
from pixelkiln.api.compat.envelope import envelope_router
from pixelkiln.api.deps import ApiContext, CallerDep, CtxDep
from pixelkiln.api.views import ImageLinks
from pixelkiln.db.records import count_active
from pixelkiln.models import Batch, BatchStatus, ImageRecord, Task, TaskStatus
from pixelkiln.reports import eta_seconds
from pixelkiln.service import BatchPage, Submission
from pixelkiln.specs import MAX_WORKERS, parse_batch
from pixelkiln.wire.schemas import MAX_JSON_INT, Id, JsonBody

MAX_SLIDES = 1000  #: slides one request may carry (a deck, not a catalogue)


def render_error(status: int, error: dict[str, Any]) -> JSONResponse:
    """FastAPI's own error shape, which the slide tool's clients read: ``{"detail": …}``."""
    body: dict[str, Any] = {"detail": error.get("message", "error"), "code": error.get("code")}
    if error.get("problems"):
        body["problems"] = error["problems"]
    return JSONResponse(body, status_code=status)


router = envelope_router(render_error, prefix="/api/slide/batch", tags=["compat: slide API"])


class Slide(JsonBody):
    """One slide as the tool sends it; fields it leaves out are empty in the prompt."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    #: text or a whole number, kept as given (the task key is its text); answered as given
    id: (
        Annotated[str, Field(min_length=1, max_length=200)]
        | Annotated[int, Field(ge=-(2**53), le=2**53)]
    )
    page_num: int | None = Field(None, ge=0, le=100_000)
    type: str = Field("", max_length=100)
    title: str = Field("", max_length=2000)
    content_text: str = Field("", max_length=20_000)
    visual_desc: str = Field("", max_length=20_000)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | int) -> str | int:
        if isinstance(value, bool) or not str(value).strip():
            raise ValueError("a slide id is text or a whole number")
        return value


class SlideBatch(JsonBody):
    """``POST /api/slide/batch/generate``; ``resolution``, ``backend`` and ``name`` are ours."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    slides: list[Slide] = Field(min_length=1, max_length=MAX_SLIDES)
    style_prompt: str = Field("", max_length=20_000)
    max_workers: int = Field(3, ge=1)  #: above 10 is taken as 10 (the tool's other servers cap)
    aspect_ratio: str = "16:9"
    resolution: str | None = None
    backend: str | None = None
    name: str | None = Field(None, min_length=1, max_length=200)


class StatusRequest(JsonBody):
    model_config = ConfigDict(extra="ignore")

    #: the tool sends back the ``batch_id`` it got, a string; a number is taken too
    batch_id: Annotated[
        Id,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_JSON_INT},
                    {"type": "string", "pattern": r"^\s*0*[1-9][0-9]{0,14}\s*$"},
                ]
            }
        ),
    ]

    @field_validator("batch_id", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20:
            return int(value.strip())
        return value


def batch_spec(body: SlideBatch, template: str) -> dict[str, Any]:
    """The one batch a request becomes: its slides as items, fed to ``template``."""
    items = []
    for number, slide in enumerate(body.slides, start=1):
        item = slide.model_dump()
        item["page_num"] = number if slide.page_num is None else slide.page_num
        items.append(item)
    defaults = {"aspect_ratio": body.aspect_ratio, "resolution": body.resolution}
    if body.backend:
        defaults["backend"] = body.backend
    return {
        "name": body.name or f"slides ({len(items)})",
        "items": items,
        "template": template,
        "vars": {"style_prompt": body.style_prompt},
        "max_workers": min(body.max_workers, MAX_WORKERS),
        "defaults": {k: v for k, v in defaults.items() if v is not None},
    }


@router.post("/generate", summary="Generate every slide's image and wait (slide API)")
async def generate(
    body: SlideBatch, request: Request, ctx: CtxDep, caller: CallerDep
) -> dict[str, Any]:
    """One batch; answers when it has ended (or after ``[server] max_wait_seconds``)."""
    spec = parse_batch(batch_spec(body, ctx.settings.compat.slide_template), partial=True)
    sub = Submission(
        spec, source=SOURCE, fingerprint=service.fingerprint("slides", spec.model_dump(mode="json"))
    )
    batch_id, _ = await service.submit(ctx.service, caller, sub)
    await service.wait_until_finished(ctx.service, batch_id, ctx.settings.server.max_wait_seconds)
    page = await _page(ctx, caller, batch_id)
    return {**_summary(page, request), "total_time": _total_time(page.batch)}


@router.post("/status", summary="Progress, ETA and the results so far (slide API)")
async def status(
    body: StatusRequest, request: Request, ctx: CtxDep, caller: CallerDep
) -> dict[str, Any]:
    page = await _page(ctx, caller, body.batch_id)
    batch = page.batch
    eta = None if batch.status.finished else eta_seconds(batch, time.time())
    return {
        **_summary(page, request),
        "progress": round(batch.counts.progress, 4),
        "completed_slides": batch.counts.done,
        "estimated_remaining_time": round(eta, 1) if eta is not None else None,
        "total_time": _total_time(batch),
    }


@router.get("/active-count", summary="Batches not finished yet (slide API)")
async def active_count(ctx: CtxDep, caller: CallerDep) -> dict[str, int]:
    """The caller's unfinished slide batches (everyone's without auth)."""
    return {"active_batches": await ctx.read(count_active, caller.mine, SOURCE)}


async def _page(ctx: ApiContext, caller: service.Caller, batch_id: int) -> BatchPage:
    every = service.TaskPage(limit=service.ALL_TASKS)
    return await service.batch_page(ctx.service, caller, batch_id, every)


#: our batch status → the tool's; it polls until ``completed`` or ``failed``
BATCH_STATUS = {
    BatchStatus.QUEUED: "pending",
    BatchStatus.PAUSED: "pending",
    BatchStatus.RUNNING: "processing",
    BatchStatus.COMPLETED: "completed",
    BatchStatus.PARTIAL: "completed",
    BatchStatus.FAILED: "failed",
    BatchStatus.CANCELLED: "failed",
}
#: our task status → a slide's (pending generating done error)
#: ``batches.source`` of the batches made here: ``active-count`` counts only those
SOURCE = "slides"

SLIDE_STATUS = {
    TaskStatus.PENDING: "pending",
    TaskStatus.RUNNING: "generating",
    TaskStatus.SUCCEEDED: "done",
    TaskStatus.FAILED: "error",
    TaskStatus.CANCELLED: "error",
}


def _summary(page: BatchPage, request: Request) -> dict[str, Any]:
    batch = page.batch
    ctx: ApiContext = request.app.state.ctx
    links = ImageLinks.of(ctx.settings, ctx.keys, str(request.base_url))
    return {
        "batch_id": str(batch.id),
        "status": BATCH_STATUS[batch.status],
        "total_slides": batch.counts.total,
        "successful": batch.counts.succeeded,
        "failed": batch.counts.failed + batch.counts.cancelled,
        "results": [_result(t, page.images.get(t.id, []), links) for t in page.tasks],
    }


def _result(task: Task, images: list[ImageRecord], links: ImageLinks) -> dict[str, Any]:
    item = task.item or {}
    error = task.last_error if task.status != TaskStatus.SUCCEEDED else None
    if task.status == TaskStatus.CANCELLED:
        error = error or "cancelled"
    return {
        "slide_id": item.get("id", task.key),  # as the caller gave it: text or a number
        "page_num": item.get("page_num", task.position),
        "title": item.get("title", ""),
        "image_url": links.file(images[0].id) if images else None,
        "final_prompt": task.prompt,
        "status": SLIDE_STATUS[task.status],
        "error_message": error,
        "generation_time": round(task.duration, 3) if task.duration is not None else None,
    }


def _total_time(batch: Batch) -> float:
    """Seconds from the request to the batch's end (or now)."""
    return round((batch.finished_at or time.time()) - batch.created_at, 3)
