"""``/api/v1/tasks``: one task with its images; retry one task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection

from pixelkiln import service
from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import batch_public, task_public
from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import images_of_tasks
from pixelkiln.db.tasks import get_task
from pixelkiln.models import ImageRecord, Task
from pixelkiln.wire.schemas import RetryResult, TaskPublic

router = APIRouter(prefix="/tasks", tags=["tasks"])


def _owned_task(
    conn: Connection, task_id: int, scope: int | None, history: bool = False
) -> tuple[Task, list[ImageRecord]]:
    """The task, when its batch is the caller's (else NotFoundError, like a missing one)."""
    task = get_task(conn, task_id)
    get_batch(conn, task.batch_id, scope)
    return task, images_of_tasks(conn, [task.id], history)[task.id]


@router.get("/{task_id}", responses=ERRORS, summary="One task with its images")
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


@router.post("/{task_id}/retry", responses=ERRORS, summary="Retry one failed or cancelled task")
async def retry(task_id: IdPath, ctx: CtxDep, caller: CallerDep) -> RetryResult:
    task, _ = await ctx.read(_owned_task, task_id, caller.scope)
    count = await service.retry(
        ctx.service, caller, task.batch_id, task_ids=[task.id], include_cancelled=True
    )
    batch = await ctx.read(get_batch, task.batch_id)
    return RetryResult(retried=count, batch=batch_public(batch))
