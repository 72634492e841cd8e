"""A batch's own limits: ``max_workers`` and ``delay``, decided in the claim.

They are kept by the database, not by one scheduler, so they hold across every
runner sharing it. ``max_workers`` caps the batch's running tasks: its
``n_running`` counter counts those claimed ahead too, so at most that many can
generate at once, wherever they run. ``delay`` spaces its starts: a task of the
batch is claimed only ``delay`` seconds after ``last_start_at`` (the claim of
the one before, moved on to its real start when its request goes out:
``transitions.start``), one per claim, and only by a runner with a slot free for
it now, which starts it at once (see ``transition_claim`` and the scheduler).

>>> BatchLimits(1, max_workers=3, n_running=2, delay=None, last_start_at=None).allowance(0.0)
1
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from pixelkiln.db.tables import batches

#: the batch columns these limits are made of, in BatchLimits' order
LIMIT_COLUMNS = (
    batches.c.id,
    batches.c.max_workers,
    batches.c.n_running,
    batches.c.delay,
    batches.c.last_start_at,
)


@dataclass(frozen=True)
class BatchLimits:
    """One batch's own limits and what they are measured against."""

    id: int
    max_workers: int | None  #: at most this many of its tasks claimed (so generating) at once
    n_running: int  #: its tasks claimed now, by any runner
    delay: float | None  #: seconds between starting two of its tasks; None or 0: no spacing
    last_start_at: float | None  #: when the latest of its tasks was claimed to start

    @property
    def limited(self) -> bool:
        """Whether the claim must count this batch's tasks at all."""
        return self.max_workers is not None or self.paced

    @property
    def paced(self) -> bool:
        return bool(self.delay and self.delay > 0)

    def next_start(self, started: float | None = None) -> float | None:
        """When its next task may start (``started``: a claim just now); None: no wait."""
        started = self.last_start_at if started is None else started
        if not self.paced or started is None:
            return None
        return started + (self.delay or 0.0)

    def allowance(self, now: float) -> int | None:
        """How many of its tasks may be claimed now; None: as many as the runner wants."""
        due = self.next_start()
        if due is not None and due > now:
            return 0
        room = None if self.max_workers is None else max(0, self.max_workers - self.n_running)
        if self.paced:
            return 1 if room is None else min(1, room)
        return room


def wake_at(limits: Iterable[BatchLimits], now: float, claimed: Collection[int]) -> float | None:
    """The earliest time a batch waiting out its ``delay`` may start its next task.

    ``claimed``: the batches that just had a task claimed (their wait starts now).
    None when no batch waits: a scheduler then needs no timer of its own.
    """
    dues = (b.next_start(now if b.id in claimed else None) for b in limits)
    return min((due for due in dues if due is not None and due > now), default=None)
