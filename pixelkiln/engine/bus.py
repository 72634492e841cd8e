"""In-process event bus: committed events fan out to live subscribers.

The database is the record; the bus only makes it live. The writer thread
publishes after each commit; delivery happens on the event loop, costs
O(subscribers) per event, and never blocks the scheduler: a subscriber that
falls more than ``maxsize`` events behind is marked ``lagged`` and should
re-read from the database (SSE does, using the last id it sent).

Events committed by *other* processes (``kiln run``, a CLI
``kiln retry`` beside ``kiln serve``) never pass through this process's
writer. :meth:`EventBus.follow` makes the bus find them in the database too,
with one shared reader for all subscribers, and keeps delivery in id order:

- it remembers the highest id delivered (``watermark``); an event committed
  here whose id is the next one is delivered at once, with no query, so a
  bus that carries only this process's events costs nothing extra;
- any other id means someone else wrote in between: the reader is woken and
  delivers everything after the watermark from the database, in order;
- when nothing was delivered for ``interval`` seconds it looks anyway (what
  another process committed last); on PostgreSQL other processes' commits are
  announced (:mod:`pixelkiln.db.notify`): :meth:`EventBus.poke` reads at once, and
  while announcements arrive (``pushed``) the look is only a fallback, every
  ``PUSHED_INTERVAL`` seconds;
- on PostgreSQL an id can become visible before a lower one whose
  transaction is still open; a hole in the ids is held back for up to
  ``gap_grace`` seconds before it is taken for a rolled-back one.

>>> bus.follow(source, interval=0.5)   # doctest: +SKIP
>>> await bus.synced()                  # then replay from the database, then go live
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from pixelkiln.models import Event

log = logging.getLogger(__name__)

#: ids delivered lately, to tell one the reader already delivered from one it passed over
#: (PostgreSQL: committed here after its hole in the ids was given up on)
RECENT_IDS = 4096
#: how soon a held-back hole in the ids is looked at again
GAP_RECHECK = 0.05
#: events read at once by a follower
FOLLOW_PAGE = 500
#: seconds between a follower's looks while other processes' commits are announced to it
PUSHED_INTERVAL = 30.0


class EventSource(Protocol):
    """Where the bus finds events that other processes committed: the events table."""

    async def latest_id(self) -> int:
        """The newest stored event's id (0 when none)."""
        ...

    async def events_after(self, after_id: int, limit: int) -> list[Event]:
        """Stored events with id > ``after_id``, oldest first, at most ``limit``."""
        ...


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
        out: list[Event] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        """Stop receiving; call on the bus's event loop."""
        self._bus._unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()


class EventBus:
    """Fan-out of committed events to subscribers on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subscriptions: set[Subscription] = set()
        self._follower: _Follower | None = None
        #: other processes' commits are announced (LISTEN/NOTIFY): looking is only a fallback
        self.pushed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, batch_id: int | None = None, maxsize: int = 10_000) -> Subscription:
        """Events of one batch (or all) from now on; call ``close()`` when done."""
        sub = Subscription(self, batch_id, maxsize)
        self._subscriptions.add(sub)
        return sub

    def follow(self, source: EventSource, *, interval: float = 0.5, gap_grace: float = 0.0) -> None:
        """Deliver other processes' events too, while anyone is subscribed; see the module
        docstring. Call on the bus's loop, after ``subscribe``; calling again changes nothing.
        """
        if self._follower is None:
            self._follower = _Follower(self, source, interval, gap_grace)
        self._follower.start()

    @property
    def watermark(self) -> int | None:
        """While following: every stored event up to this id has been delivered (or will
        never be); later ones will be, in order. None when not following."""
        follower = self._follower
        return follower.watermark if follower is not None and follower.running else None

    async def synced(self) -> None:
        """Wait until a follower knows where the database stands; anything stored
        after that reaches subscribers. Returns at once when not following."""
        if self._follower is not None:
            await self._follower.ready.wait()

    def poke(self) -> None:
        """Another process committed events: a follower reads them now. Call on the loop."""
        if self._follower is not None and self._follower.running:
            self._follower.kick()

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
        if self._follower is not None and self._follower.running:
            events = self._follower.in_order(events)
        self._fan_out(events)

    def _fan_out(self, events: list[Event]) -> None:
        for sub in list(self._subscriptions):
            for event in events:
                sub._offer(event)

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
        if not self._subscriptions and self._follower is not None:
            self._follower.stop()


class _Follower:
    """The one database reader of a following bus; runs while anyone is subscribed."""

    def __init__(
        self, bus: EventBus, source: EventSource, interval: float, gap_grace: float
    ) -> None:
        self.bus = bus
        self.source = source
        self.interval = interval
        self.gap_grace = gap_grace
        self.ready = asyncio.Event()
        self.watermark: int | None = None  #: every event up to this id was delivered
        self._recent: collections.deque[int] = collections.deque(maxlen=RECENT_IDS)
        self._recent_set: set[int] = set()
        self._kick = asyncio.Event()
        self._active_at = 0.0  #: loop time of the last delivery or read
        self._hole_since: tuple[int, float] | None = None  #: (watermark, loop time) of a hole
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.ready.clear()
        self.watermark, self._hole_since = None, None
        self._kick.clear()
        self._recent.clear()
        self._recent_set.clear()

    def kick(self) -> None:
        self._kick.set()

    def in_order(self, events: list[Event]) -> list[Event]:
        """Of events committed here, those that can go out now; the reader fetches the rest."""
        if self.watermark is None:  # not synced yet: streams replay from the database anyway
            return events
        out: list[Event] = []
        for event in events:
            if event.id in self._recent_set:
                continue  # the reader got it first
            if event.id <= self.watermark:  # committed after its hole was given up: late, not lost
                self._remember(event.id)
                out.append(event)
            elif event.id == self.watermark + 1:
                self._advance(event.id)
                out.append(event)
            else:  # another process wrote in between: the database has it all, in order
                self._kick.set()
                break
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.watermark is None:
                await self._sync()
                if self.watermark is None:
                    await asyncio.sleep(self.interval)
                    continue
            interval = max(self.interval, PUSHED_INTERVAL) if self.bus.pushed else self.interval
            due = self._active_at + (GAP_RECHECK if self._hole_since else interval)
            if not self._kick.is_set() and loop.time() < due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), due - loop.time())
                continue
            self._kick.clear()
            try:
                events = await self.source.events_after(self.watermark, FOLLOW_PAGE)
            except Exception:
                log.exception("could not read new events from the database")
                events = []
            self._active_at = loop.time()
            self.bus._fan_out(self._take(events, loop.time()))

    async def _sync(self) -> None:
        try:
            self.watermark = await self.source.latest_id()
        except Exception:
            log.exception("could not read the latest event id; following only this process")
        self._active_at = asyncio.get_running_loop().time()
        self.ready.set()  # without a watermark, events committed here go out as before

    def _take(self, events: list[Event], now: float) -> list[Event]:
        """The fetched events that extend the delivered run of ids without a hole."""
        out: list[Event] = []
        for event in events:
            mark = self.watermark
            if mark is None or event.id <= mark:
                continue  # delivered by the bus while the read ran
            if event.id != mark + 1 and not self._hole_expired(mark, now):
                return out  # a lower id may still commit (PostgreSQL): look again soon
            self._hole_since = None
            self._advance(event.id)
            out.append(event)
        if len(events) == FOLLOW_PAGE:
            self._kick.set()  # a full page: read on
        return out

    def _hole_expired(self, mark: int, now: float) -> bool:
        if self.gap_grace <= 0:
            return True
        if self._hole_since is None or self._hole_since[0] != mark:
            self._hole_since = (mark, now)
        return now - self._hole_since[1] >= self.gap_grace

    def _advance(self, event_id: int) -> None:
        self.watermark = event_id
        self._active_at = asyncio.get_running_loop().time()
        self._remember(event_id)

    def _remember(self, event_id: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(event_id)
        self._recent_set.add(event_id)
