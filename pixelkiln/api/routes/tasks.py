"""``/api/v1/tasks``: one task with its images, its reference images; retry one task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection

from pixelkiln import service
from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import asset_public, batch_public, task_public
from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import Asset, asset_ids_at, get_asset, images_of_tasks
from pixelkiln.models import ImageRecord, Task
from pixelkiln.service.reading import scoped_task
from pixelkiln.wire.schemas import AssetPublic, RetryResult, TaskPublic

router = APIRouter(prefix="/tasks", tags=["tasks"])


def _owned_task(
    conn: Connection, task_id: int, scope: int | None, history: bool = False
) -> tuple[Task, list[ImageRecord]]:
    """The task, when its batch is the caller's (else NotFoundError, like a missing one)."""
    task, _ = scoped_task(conn, task_id, scope)
    return task, images_of_tasks(conn, [task.id], history)[task.id]


@router.get("/{task_id:int}", responses=ERRORS, summary="One task with its images")
async def get_one(
    task_id: IdPath,
    ctx: CtxDep,
    caller: CallerDep,
    history: Annotated[
        bool, Query(description="Every run's images (regenerated), each with its run.")
    ] = False,
) -> TaskPublic:
    task, images = await ctx.read(_owned_task, task_id, caller.scope, history)
    return task_public(task, images)


def _references(conn: Connection, task_id: int, scope: int | None) -> list[Asset]:
    """The task's reference images that are its batch owner's uploads, in the task's order."""
    task, batch = scoped_task(conn, task_id, scope)
    owner_id = batch.owner_id
    paths = [str(p) for p in task.inputs.get("reference_images") or []]
    ids = asset_ids_at(conn, paths, owner_id)
    return [get_asset(conn, ids[p]) for p in paths if p in ids]


@router.get(
    "/{task_id:int}/references", responses=ERRORS, summary="A task's reference images, as uploads"
)
async def references(task_id: IdPath, ctx: CtxDep, caller: CallerDep) -> list[AssetPublic]:
    """Each as ``asset:<id>`` to use again (the web UI's "send to Generate" fills its form
    from :func:`get_one` and these); a reference that is no upload of the owner is left out."""
    found = await ctx.read(_references, task_id, caller.scope)
    return [asset_public(a) for a in found]


@router.post("/{task_id:int}/retry", responses=ERRORS, summary="Retry one failed or cancelled task")
async def retry(task_id: IdPath, ctx: CtxDep, caller: CallerDep) -> RetryResult:
    task, _ = await ctx.read(_owned_task, task_id, caller.scope)
    count = await service.retry(
        ctx.service, caller, task.batch_id, task_ids=[task.id], include_cancelled=True
    )
    batch = await ctx.read(get_batch, task.batch_id)
    return RetryResult(retried=count, batch=batch_public(batch))
