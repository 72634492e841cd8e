"""Reading a batch for a face: one page of its tasks with their images; waiting for its end."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection

from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import images_of_tasks
from pixelkiln.db.tasks import get_task, list_tasks
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import Batch, ImageRecord, Task, TaskStatus
from pixelkiln.service.context import Caller, ServiceContext

ALL_TASKS = 1_000_000  # "every task" for a face that waited for the batch's end


@dataclass(frozen=True)
class TaskPage:
    """Which tasks of a batch to show."""

    statuses: list[TaskStatus] | None = None  #: only these (None: every status)
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class BatchPage:
    """A batch, one page of its tasks, and their images, read in one snapshot."""

    batch: Batch
    tasks: list[Task]
    images: dict[int, list[ImageRecord]]  #: by task id
    task_total: int  #: tasks in the batch with the page's statuses
    task_offset: int  #: tasks of those skipped before this page


def scoped_task(conn: Connection, task_id: int, scope: int | None) -> tuple[Task, Batch]:
    """The task and its batch when the batch is the caller's (``scope``: their user id,
    None for an admin); else the very NotFoundError of a missing task ("no task 7"):
    another user's task must not say that it exists, nor which batch it is in."""
    task = get_task(conn, task_id)
    try:
        return task, get_batch(conn, task.batch_id, scope)
    except NotFoundError:
        raise NotFoundError(f"no task {task_id}") from None


def _read_page(conn: Connection, batch_id: int, scope: int | None, page: TaskPage) -> BatchPage:
    batch = get_batch(conn, batch_id, scope)
    tasks = list_tasks(conn, batch_id, statuses=page.statuses, limit=page.limit, offset=page.offset)
    counts = batch.counts
    if page.statuses is None:
        total = counts.total
    else:
        total = sum(getattr(counts, str(s)) for s in page.statuses)
    images = images_of_tasks(conn, [t.id for t in tasks])
    return BatchPage(batch, tasks, images, total, page.offset)


async def batch_page(
    ctx: ServiceContext, caller: Caller, batch_id: int, page: TaskPage | None = None
) -> BatchPage:
    """The batch (NotFoundError when the caller may not see it) with a page of tasks."""
    return await ctx.read(_read_page, batch_id, caller.scope, page or TaskPage())


async def wait_until_finished(ctx: ServiceContext, batch_id: int, timeout: float) -> bool:
    """Wait for the batch's final status (or the timeout); True when it finished."""
    deadline = time.monotonic() + timeout
    subscription = ctx.bus.subscribe(batch_id)
    try:
        while True:
            batch = await ctx.read(get_batch, batch_id)
            if batch.status.finished:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # any event of the batch (or a second's pause) is a reason to look again
            await subscription.get(timeout=min(left, 1.0))
    finally:
        subscription.close()
