"""``/api/v1/queue``: my unfinished batches in the order the scheduler claims them, and
a new order for them (the rule is :mod:`pixelkiln.service.queue`'s)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from pixelkiln.api.deps import CallerDep, CtxDep, OffsetQuery
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import batch_fields
from pixelkiln.service import queue as queues
from pixelkiln.wire.schemas import Page, QueuedBatch, QueueOrder

router = APIRouter(prefix="/queue", tags=["queue"])

AllUsers = Annotated[
    bool, Query(description="Admins: every user's unfinished batches, not only mine.")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Batches per page.")]


def _page(found: queues.QueuePage, limit: int) -> Page[QueuedBatch]:
    items = [
        QueuedBatch.model_construct(**batch_fields(batch), position=position)
        for position, batch in found.numbered()
    ]
    end = found.offset + len(items)
    return Page[QueuedBatch].model_construct(
        items=items,
        total=found.total,
        limit=limit,
        offset=found.offset,
        next_offset=end if end < found.total and items else None,
    )


@router.get("", responses=ERRORS, summary="My queued, running and paused batches, in order")
async def get_queue(
    ctx: CtxDep,
    caller: CallerDep,
    all_users: AllUsers = False,
    limit: Limit = 500,
    offset: OffsetQuery = 0,
) -> Page[QueuedBatch]:
    """In the order the scheduler claims them (priority, then place), numbered from 1."""
    found = await queues.queue(ctx.service, caller, all_users=all_users, limit=limit, offset=offset)
    return _page(found, limit)


@router.put("", responses=ERRORS, summary="Reorder my unfinished batches")
async def put_queue(
    body: QueueOrder, ctx: CtxDep, caller: CallerDep, limit: Limit = 500
) -> Page[QueuedBatch]:
    """The listed batches take the places they already hold, in the order listed (others'
    batches keep theirs); answers the queue as it is now. 404 for an id that is not one
    of my batches, 409 for a finished batch, 422 for an id listed twice."""
    await queues.reorder(ctx.service, caller, body.batch_ids, all_users=body.all_users)
    found = await queues.queue(ctx.service, caller, all_users=body.all_users, limit=limit)
    return _page(found, limit)
