"""Events as Server-Sent Events (``Last-Event-ID`` resumes) and as a JSON log.

A stream checks its caller again every heartbeat (:func:`_still_allowed`), so revoking a
token, disabling a user or a session cookie's expiry ends the streams it opened too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from pixelkiln.api.deps import ApiContext, CallerDep, CtxDep, IdPath, get_caller
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.sse import HEADERS, StillAllowed, StreamScope, event_stream
from pixelkiln.api.views import event_public
from pixelkiln.db.batches import get_batch
from pixelkiln.db.events import events_after
from pixelkiln.db.records import latest_event_id
from pixelkiln.models import parse_id
from pixelkiln.service import Caller
from pixelkiln.wire.schemas import MAX_STORED_ID, EventPublic, Offset, Page, stored_id

router = APIRouter(tags=["events"])

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "An event stream."}
}


def _after(header: str | None, query: int | None) -> int | None:
    """The id to resume after: the header (what EventSource sends), else the query.

    A header that is no event id (not ASCII digits, or past 64 bits) is 422: checked
    here, before the stream starts, since a failure inside it could no longer be a 4xx.
    """
    if header:
        after = parse_id(header, low=0)
        if after is None:
            raise ApiError(
                422,
                "invalid_request",
                "Last-Event-ID must be an event id (a number)",
                field="Last-Event-ID",
            )
        return stored_id(after, MAX_STORED_ID)  # past any event id: none after it
    return None if query is None else stored_id(query, MAX_STORED_ID)


@router.get(
    "/batches/{batch_id:int}/events",
    responses=ERRORS | SSE_RESPONSE,
    response_class=StreamingResponse,
    summary="A batch's events, live (SSE)",
)
async def batch_events(
    batch_id: IdPath,
    request: Request,
    ctx: CtxDep,
    caller: CallerDep,
    last_event_id: LastEventId = None,
    after: Annotated[Offset | None, Query(description="Resume after this event id.")] = None,
) -> StreamingResponse:
    """Every event of the batch from the start (or after ``Last-Event-ID``); ends after ``done``."""
    await ctx.read(get_batch, batch_id, caller.scope)
    scope = StreamScope(batch_id, None, end_when_done=True)
    start = _after(last_event_id, after) or 0
    return _response(request, caller, scope, start)


@router.get(
    "/events",
    responses=ERRORS | SSE_RESPONSE,
    response_class=StreamingResponse,
    summary="Events of all my batches, live (SSE)",
)
async def my_events(
    request: Request,
    ctx: CtxDep,
    caller: CallerDep,
    last_event_id: LastEventId = None,
    after: Annotated[Offset | None, Query(description="Replay after this id (0: all).")] = None,
) -> StreamingResponse:
    """From now on (or after ``Last-Event-ID`` / ``after``); never ends by itself."""
    start = _after(last_event_id, after)
    if start is None:
        start = await ctx.read(latest_event_id)
    scope = StreamScope(None, caller.mine, end_when_done=False)
    return _response(request, caller, scope, start)


def _response(
    request: Request, caller: Caller, scope: StreamScope, start: int
) -> StreamingResponse:
    ctx: ApiContext = request.app.state.ctx
    stream = event_stream(
        ctx,
        request.app.state.frames,
        scope,
        start,
        ctx.settings.server.heartbeat_seconds,
        _still_allowed(request, ctx, caller),
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


def _still_allowed(request: Request, ctx: ApiContext, caller: Caller) -> StillAllowed | None:
    """The stream's check of its caller: the request's bearer token or session cookie
    authenticated again, exactly as a new request would be (one indexed read of the token),
    and still with the reach it opened the stream with (a stream an admin opened ends when
    they are an admin no more). None with auth off: there is nobody to check."""
    if not ctx.settings.auth.enabled:
        return None

    async def check() -> bool:
        try:
            again = await get_caller(request, ctx)
        except ApiError:
            return False
        return again.user_id == caller.user_id and again.scope == caller.scope

    return check


@router.get("/batches/{batch_id:int}/log", responses=ERRORS, summary="A batch's events as JSON")
async def batch_log(
    batch_id: IdPath,
    ctx: CtxDep,
    caller: CallerDep,
    after: Annotated[Offset, Query()] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Page[EventPublic]:
    """The per-batch log, oldest first; page on with ``after`` = the last id seen."""
    await ctx.read(get_batch, batch_id, caller.scope)
    after = stored_id(after, MAX_STORED_ID)  # past any event id: none after it
    events = await ctx.read(events_after, after, batch_id=batch_id, limit=limit)
    return Page[EventPublic].model_construct(
        items=[event_public(e) for e in events],
        limit=limit,
        next_cursor=events[-1].id if len(events) == limit else None,
    )
