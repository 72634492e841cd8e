"""One try of a task on its backend: the attempt is spent, and the task timeout starts, when
its first request actually goes out.

A backend on a server pool may wait before sending: for a server slot (its own, or, with
shared limits, one other processes hold), for an rpm start, for a 429's cooldown. That
wait is queueing, not trying: it costs the task no attempt and no ``task_timeout``. So the
scheduler does not mark the start itself; it hands the pool a hook
(:data:`~pixelkiln.backends.pool.about_to_send`, a context variable of the task's job)
that the pool awaits once it holds a server slot and just before it calls the server.
The hook marks the start (engine.starts, committed before the request goes out) and
starts the timeout. With shared limits the pool's slot take, a write just before, marks
the start itself when it grants the slot with no rpm wait (the hook is an
:class:`~pixelkiln.engine.starts.TryStart` the take reads), and the hook only checks the
task was still held and starts the timeout. A backend without a pool (placeholder,
diffusers) sends at once: its start is marked before it is called, as a queued task's
would be.

A task cancelled, taken away or shut down while it waits has no start mark, so it goes
back to the queue untried (``release_tasks`` gives back only a started try's attempt).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pixelkiln.backends.base import Backend, GeneratedImage, GenerationRequest
from pixelkiln.backends.pool import about_to_send, pool_of
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.engine.starts import StartMarks, TryStart
from pixelkiln.exceptions import BackendTimeoutError

__all__ = ["send"]


class _Start(TryStart):
    """Marks ``task`` started once (later requests of the same try are no new attempt),
    unless the pool's slot take marked it already, and arms the try's timeout from then."""

    def __init__(
        self,
        starts: StartMarks,
        task: ClaimedTask,
        timeout: float,
        deadline: asyncio.Timeout,
        out: Callable[[], None] | None,
    ) -> None:
        super().__init__(task.id, task.paced)
        self._starts = starts
        self._timeout = timeout
        self._deadline = deadline
        self._out = out

    async def __call__(self) -> None:
        # committed before the request goes out; a paced batch's delay runs from here
        if await self.went_out(self._starts):
            self._deadline.reschedule(asyncio.get_running_loop().time() + self._timeout)
            if self._out is not None:
                self._out()


async def send(
    starts: StartMarks,
    task: ClaimedTask,
    backend: Backend,
    request: GenerationRequest,
    timeout: float,
    out: Callable[[], None] | None = None,
) -> list[GeneratedImage]:
    """``backend.generate(request)`` for ``task``, its start marked when the request goes out
    and ``timeout`` seconds from then (BackendTimeoutError past it); ``out`` is called then."""
    try:
        async with asyncio.timeout(None) as deadline:
            start = _Start(starts, task, timeout, deadline, out)
            if pool_of(backend) is None:  # nothing to wait for: it goes out now
                await start()
                return await backend.generate(request)
            token = about_to_send.set(start)
            try:
                return await backend.generate(request)
            finally:
                about_to_send.reset(token)
    except TimeoutError as exc:
        raise BackendTimeoutError(f"no result within {timeout:g} s") from exc
