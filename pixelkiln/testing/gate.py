"""A gate a test closes to hold a fake's generations, and opens one by one.

Timing a test by latencies (``latency=1.0`` and hope the cancel lands while
the first prompt still runs) fails on a loaded machine. A :class:`Gate` makes
the state explicit instead: while it holds, every generation that starts waits
at the gate (on a GPU: sampling), and the test lets them go when it is ready::

    comfy.hold()                                   # generations wait once started
    first = asyncio.create_task(backend.generate(request))
    await wait_until(lambda: comfy.held == 1)      # running, and staying so
    ...                                            # a second prompt now stays queued
    comfy.release(1)                               # exactly one finishes
    comfy.release()                                # stop holding: all go on

The test and the fake run on different threads (the fake serves from its own
loop), so the gate is thread-safe; waiters are woken on their own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Gate:
    """Holds generations until released; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holding = False
        self._passes = 0  # generations let through ahead, before they arrive
        self._waiting: deque[_Waiter] = deque()

    @property
    def held(self) -> int:
        """How many generations wait at the gate now."""
        with self._lock:
            return len(self._waiting)

    def hold(self) -> None:
        """From now on every generation waits at the gate once it has started."""
        with self._lock:
            self._holding, self._passes = True, 0

    def release(self, count: int | None = None) -> None:
        """Let ``count`` generations go on (those waiting first, then the next to arrive).

        Without ``count`` the gate stops holding and everything waiting goes on.
        """
        with self._lock:
            if count is None:
                self._holding, self._passes = False, 0
                woken = list(self._waiting)
                self._waiting.clear()
            else:
                woken = [self._waiting.popleft() for _ in range(min(count, len(self._waiting)))]
                if self._holding:
                    self._passes += count - len(woken)
        for loop, opened in woken:
            with contextlib.suppress(RuntimeError):  # that server's loop is gone (down)
                loop.call_soon_threadsafe(_open, opened)

    async def passage(self, interrupted: asyncio.Event | None = None) -> bool:
        """Wait here while the gate holds; True when ``interrupted`` was set meanwhile."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._holding:
                return False
            if self._passes:
                self._passes -= 1
                return False
            waiter: _Waiter = (loop, loop.create_future())
            self._waiting.append(waiter)
        try:
            return await _first_of(waiter[1], interrupted)
        finally:
            with self._lock, contextlib.suppress(ValueError):  # released: already gone
                self._waiting.remove(waiter)


async def _first_of(opened: asyncio.Future[None], interrupted: asyncio.Event | None) -> bool:
    """Wait for the gate to open or for an interrupt; True when interrupted."""
    if interrupted is None:
        await opened
        return False
    stop = asyncio.ensure_future(_until(interrupted))
    try:
        await asyncio.wait({opened, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    return interrupted.is_set()


async def _until(event: asyncio.Event) -> None:
    await event.wait()


def _open(opened: asyncio.Future[None]) -> None:
    if not opened.done():
        opened.set_result(None)
