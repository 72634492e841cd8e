"""In-process event bus: committed events fan out to live subscribers.

The database is the record; the bus only makes it live. The writer thread
publishes after each commit; delivery happens on the event loop, costs
O(subscribers) per event, and never blocks the scheduler: a subscriber that
falls more than ``maxsize`` events behind is marked ``lagged`` and should
re-read from the database (SSE does, using the last id it sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pixelkiln.models import Event


class Subscription:
    """A queue of events for one listener; iterate it with ``async for``."""

    def __init__(self, bus: EventBus, batch_id: int | None, maxsize: int) -> None:
        self.batch_id = batch_id
        self.lagged = False
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)

    def _offer(self, event: Event) -> None:
        if self.batch_id is not None and event.batch_id != self.batch_id:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def drain(self) -> list[Event]:
        """Every event already queued, without waiting."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()


class EventBus:
    """Fan-out of committed events to subscribers on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subscriptions: set[Subscription] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, batch_id: int | None = None, maxsize: int = 10_000) -> Subscription:
        """Events of one batch (or all) from now on; call ``close()`` when done."""
        sub = Subscription(self, batch_id, maxsize)
        self._subscriptions.add(sub)
        return sub

    def publish(self, events: list[Event]) -> None:
        """Deliver ``events``; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not self._subscriptions:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, events)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _deliver(self, events: list[Event]) -> None:
        for sub in list(self._subscriptions):
            for event in events:
                sub._offer(event)
