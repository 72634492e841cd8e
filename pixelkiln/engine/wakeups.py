"""Wake-ups from other processes: what a PostgreSQL LISTEN hears, handed to this process.

A :class:`~pixelkiln.db.notify.Listener` hears, in its own thread, that another
process made work claimable, appended events, gave back server slots or changed
what schedulers re-read (stored limits, servers found down). :class:`Wakeups` carries that
onto the event loop of this process's :class:`~pixelkiln.app.Kiln`: work wakes
every scheduler of the process (``Kiln.schedulers``: the in-process one, the
API's scheduler thread), events poke the event bus, whose follower reads them
for SSE streams at once. A burst of notifications costs one call on the loop:
a hop already on its way is not sent again.

Without PostgreSQL (or while the listening connection is down) nothing arrives
here and the schedulers and the bus poll, as they always do as a fallback.

>>> wakeups = Wakeups(loop, kiln.schedulers.wake, kiln.bus)        # doctest: +SKIP
>>> Listener(url, wakeups.heard, wakeups.live).start()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from pixelkiln.db.notify import EVENTS, SLOTS, STATE, WORK
from pixelkiln.engine.bus import EventBus


class Wakeups:
    """Fans LISTEN notifications out to the schedulers and the bus, on ``loop``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        bus: EventBus,
        slots_freed: Callable[[], None] | None = None,
        state_changed: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.wake = wake  #: wakes every scheduler of the process (called on ``loop``)
        self.bus = bus
        #: tells the schedulers' waiters for server slots to look again (on ``loop``)
        self.slots_freed = slots_freed
        #: tells the schedulers to read stored limits and servers' health again (on ``loop``)
        self.state_changed = state_changed
        self.heard_work = 0  #: work notifications handed on so far (tests, metrics)
        self.heard_events = 0
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # kinds whose hop to the loop is on its way

    def heard(self, kind: str) -> None:
        """A notification of ``kind`` (listener thread)."""
        if self._handler(kind) is None:
            return
        with self._lock:
            if kind in self._pending:
                return
            self._pending.add(kind)
        self._call(self._deliver, kind)

    def live(self, live: bool) -> None:
        """Listening started or stopped (listener thread): the bus polls less or as before."""
        self._call(self._set_pushed, live)

    def _handler(self, kind: str) -> Callable[[], None] | None:
        """What ``kind`` news sets off here (None: nobody here needs it)."""
        return {
            WORK: self._work,
            EVENTS: self._events,
            SLOTS: self.slots_freed,
            STATE: self.state_changed,
        }.get(kind)

    def _deliver(self, kind: str) -> None:
        with self._lock:
            self._pending.discard(kind)
        handler = self._handler(kind)
        if handler is not None:
            handler()

    def _work(self) -> None:
        self.heard_work += 1
        self.wake()

    def _events(self) -> None:
        self.heard_events += 1
        self.bus.poke()

    def _set_pushed(self, live: bool) -> None:
        self.bus.pushed = live
        self.bus.poke()  # a follower waiting out the long interval looks at its pace again

    def _call(self, fn: Callable[[Any], None], arg: object) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop closed between the check and the call
            pass
