"""Server-Sent Events: replay from the database, then live from the event bus.

A stream first subscribes to the bus, then replays every stored event after
the client's ``Last-Event-ID`` from the database, then forwards live events,
skipping any it already sent (the two overlap by design, so nothing falls in
a gap between them). A subscriber that fell behind the bus (``lagged``) goes
back to the database from the last id it sent. A stream that wrote nothing
for ``heartbeat`` seconds sends a comment line so proxies and clients keep it
open (other users' events, filtered out, do not count as writing).

The caller is checked again every ``heartbeat`` seconds (``StillAllowed``: one indexed
read of the token or the session's token): a stream whose token was revoked, whose user
was disabled or lost admin rights, or whose session cookie expired ends then, as the
next request of that session would be refused (an ``EventSource`` reconnects, gets 401
and stops).

Events that other processes commit (``kiln run``, ``kiln
retry`` beside the server, an API started with ``run_scheduler=False``) never
pass through this process's bus: streams make the bus *follow* the events
table (one shared reader for all streams, see :mod:`pixelkiln.engine.bus`),
so they arrive too, in id order, within ``FOLLOW_INTERVAL`` seconds.

Each event is encoded once, whatever the number of subscribers: the encoded
frames sit in a small shared cache keyed by event id.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pixelkiln.api.deps import ApiContext
from pixelkiln.api.views import event_public
from pixelkiln.db.batches import get_batch
from pixelkiln.db.events import events_after
from pixelkiln.db.records import latest_event_id
from pixelkiln.engine.bus import Subscription
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import Event, EventType

REPLAY_PAGE = 500
RETRY_MS = 2000  #: how long EventSource clients wait before reconnecting
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: how often the bus looks for other processes' events when nothing arrived
FOLLOW_INTERVAL = 0.5
#: PostgreSQL: how long a hole in the event ids may be an open transaction (SQLite has none)
GAP_GRACE = 2.0

#: asked every heartbeat: may the caller who opened the stream still read it?
StillAllowed = Callable[[], Awaitable[bool]]


class FrameCache:
    """Encoded SSE frames by event id, most recent ``size`` kept."""

    def __init__(self, size: int = 4096) -> None:
        self._frames: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._size = size

    def frame(self, event: Event) -> bytes:
        cached = self._frames.get(event.id)
        if cached is None:
            data = event_public(event).model_dump_json()
            cached = f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()
            self._frames[event.id] = cached
            if len(self._frames) > self._size:
                self._frames.popitem(last=False)
        return cached


class DatabaseEvents:
    """The events table as the bus's :class:`~pixelkiln.engine.bus.EventSource`."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def latest_id(self) -> int:
        return await self.ctx.read(latest_event_id)

    async def events_after(self, after_id: int, limit: int) -> list[Event]:
        return await self.ctx.read(events_after, after_id, limit=limit)


def follow_database(ctx: ApiContext) -> None:
    """Make the bus carry other processes' events too (idempotent; the bus stops when idle)."""
    grace = 0.0 if ctx.db.dialect == "sqlite" else GAP_GRACE
    ctx.kiln.bus.follow(DatabaseEvents(ctx), interval=FOLLOW_INTERVAL, gap_grace=grace)


@dataclass
class StreamScope:
    """Which events a stream carries: one batch, or every batch of one owner (None: all)."""

    batch_id: int | None
    owner_id: int | None
    end_when_done: bool  #: a batch stream ends after the batch's ``done``


class _Stream:
    def __init__(
        self,
        ctx: ApiContext,
        frames: FrameCache,
        scope: StreamScope,
        last: int,
        still_allowed: StillAllowed | None = None,
    ):
        self.ctx = ctx
        self.frames = frames
        self.scope = scope
        self.last = last
        self.still_allowed = still_allowed  #: None: nobody to check (auth off)
        self.done = False
        self.wrote_at = time.monotonic()  #: when this stream last sent anything
        self.checked_at = time.monotonic()  #: when the caller was last found allowed
        self._owned: dict[int, bool] = {}
        # subscribed before the replay reads the database: nothing can fall in between
        self.subscription: Subscription = ctx.kiln.bus.subscribe(scope.batch_id)
        follow_database(ctx)

    async def live(self, heartbeat: float) -> AsyncIterator[bytes]:
        """Events from the bus as they commit; a keep-alive comment when this stream
        sent nothing for ``heartbeat`` seconds, however busy the bus is with others' events.
        Ends when the caller, checked every ``heartbeat`` seconds, may no longer read it."""
        while True:
            if await self._caller_gone(heartbeat):
                yield b": the session has ended\n\n"
                return
            if self.subscription.lagged:  # fell behind the bus: the database has everything
                lagged = self.subscription  # closed after: the bus keeps following meanwhile
                self.subscription = self.ctx.kiln.bus.subscribe(self.scope.batch_id)
                lagged.close()
                async for frame in self.replay():
                    yield frame
            quiet_left = self.wrote_at + heartbeat - time.monotonic()
            if quiet_left <= 0:
                self.wrote_at = time.monotonic()
                yield b": keep-alive\n\n"
                continue
            event = await self.subscription.get(timeout=self._wait(heartbeat))
            if event is None:
                continue
            # what queued up meanwhile goes out in the same write: with many subscribers
            # on a busy batch, one write per event per stream is most of the server's work
            chunk = []
            for each in (event, *self.subscription.drain()):
                if each.id > self.last and await self.allowed(each):
                    chunk.append(self._send(each))
            if chunk:
                yield b"".join(chunk)

    async def _caller_gone(self, heartbeat: float) -> bool:
        """Whether the caller, due for its check (every ``heartbeat`` seconds), may no
        longer read this stream."""
        if self.still_allowed is None or time.monotonic() < self.checked_at + heartbeat:
            return False
        if not await self.still_allowed():
            return True
        self.checked_at = time.monotonic()
        return False

    def _wait(self, heartbeat: float) -> float:
        """Seconds until the next keep-alive or the caller's next check is due."""
        due = self.wrote_at + heartbeat
        if self.still_allowed is not None:
            due = min(due, self.checked_at + heartbeat)
        return due - time.monotonic()

    async def replay(self, *, settled: bool = True) -> AsyncIterator[bytes]:
        """Stored events after ``last``, page by page. ``settled``: only up to the bus's
        watermark; the bus delivers the later ones, in id order. On PostgreSQL an id can
        be visible while a lower one's transaction is still open: a replay that read past
        it would skip that event for good."""
        bound = self.ctx.kiln.bus.watermark if settled else None
        while True:
            events = await self.ctx.read(
                events_after,
                self.last,
                batch_id=self.scope.batch_id,
                owner_id=self.scope.owner_id,
                limit=REPLAY_PAGE,
            )
            for event in events:
                if bound is not None and event.id > bound:
                    return
                yield self._send(event)
            if len(events) < REPLAY_PAGE:
                return

    async def allowed(self, event: Event) -> bool:
        """Whether a live event belongs to this stream's owner (cached per batch)."""
        owner = self.scope.owner_id
        if owner is None or self.scope.batch_id is not None:
            return True
        if event.batch_id not in self._owned:
            try:
                await self.ctx.read(get_batch, event.batch_id, owner)
                self._owned[event.batch_id] = True
            except NotFoundError:
                self._owned[event.batch_id] = False
        return self._owned[event.batch_id]

    def _send(self, event: Event) -> bytes:
        self.last, self.wrote_at = event.id, time.monotonic()
        if event.type == EventType.DONE:
            self.done = True
        return self.frames.frame(event)

    async def batch_finished(self) -> bool:
        if self.scope.batch_id is None or not self.scope.end_when_done:
            return False
        batch = await self.ctx.read(get_batch, self.scope.batch_id)
        return batch.status.finished


async def event_stream(
    ctx: ApiContext,
    frames: FrameCache,
    scope: StreamScope,
    last_id: int,
    heartbeat: float,
    still_allowed: StillAllowed | None = None,
) -> AsyncIterator[bytes]:
    """The bytes of an SSE response; see the module docstring."""
    stream = _Stream(ctx, frames, scope, last_id, still_allowed)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        await ctx.kiln.bus.synced()  # what other processes store from here on reaches the bus
        async for frame in stream.replay():
            yield frame
        if await stream.batch_finished():
            # it may have finished after the replay's read: catch up, then the stream is whole
            async for frame in stream.replay(settled=False):
                yield frame
            return
        stream.done = False  # a replayed "done" of an earlier run does not end the stream
        async for frame in stream.live(heartbeat):
            yield frame
            if scope.end_when_done and stream.done:
                return
    finally:
        stream.subscription.close()
