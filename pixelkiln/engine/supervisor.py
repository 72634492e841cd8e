"""Keeping the scheduler going, and saying how it is.

A scheduler step that fails (a database write refused because the disk is
full, a lost connection) must not stop the scheduler for good while the API
goes on accepting batches. Each part of the scheduler (its main loop, the
committer, the lease keeper) reports here: :meth:`Supervision.failed` logs the
failure, counts it and returns how long to back off before trying again;
:meth:`Supervision.ok` ends the streak. The main loop also beats once per
pass, so a loop that hangs shows too.

:meth:`Supervision.stalled_for` is how long the scheduler has made no
progress: since the oldest unbroken failure streak began, or since the last
beat. ``/healthz`` answers 503 once it passes ``[scheduler] stall_seconds``
while work waits, and ``kiln run`` stops with the reason (exit 1) instead of
hanging.

>>> supervision = Supervision(stall_seconds=60)
>>> delay = supervision.failed("claim", OSError("database or disk is full"))
>>> supervision.report().state
'retrying'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pixelkiln import __version__
from pixelkiln.exceptions import SchedulerStalledError
from pixelkiln.wire.schemas import Health, SchedulerHealth

log = logging.getLogger("pixelkiln.engine")

#: first and longest pause after a failed step, in seconds
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 10.0


@dataclass(frozen=True)
class HealthReport:
    """The scheduler's state, for ``/healthz`` and ``kiln run``."""

    state: str  #: starting, running, retrying (steps fail and are retried) or stopped
    stalled_seconds: float  #: how long no progress has been made (0 when healthy)
    last_error: str  #: the newest failure, "" when none
    failing: tuple[str, ...]  #: the parts whose steps fail now
    restarts: int  #: times the scheduler was started again after it stopped by accident

    def stalled(self, bound: float) -> bool:
        return self.state != "stopped" and self.stalled_seconds >= bound

    def may_be_stuck(self, bound: float) -> bool:
        """Stopped, or no progress for ``bound`` seconds: stuck if work waits (ask then)."""
        return self.state == "stopped" or self.stalled(bound)

    def unhealthy(self, bound: float, work_waiting: bool) -> bool:
        """A scheduler that has stopped, or that made no progress for ``bound`` seconds
        while work waits, cannot go on: ``/healthz`` (the API's, a worker's) answers 503."""
        return self.state == "stopped" or (work_waiting and self.stalled(bound))


def health_answer(report: HealthReport, *, unhealthy: bool, work_waiting: bool) -> Health:
    """The ``/healthz`` body of a process with a scheduler (the API's, a worker's port)."""
    return Health(
        status="unhealthy" if unhealthy else "ok",
        version=__version__,
        scheduler=SchedulerHealth(
            state=report.state,
            stalled_seconds=report.stalled_seconds,
            last_error=report.last_error,
            failing=list(report.failing),
            restarts=report.restarts,
            work_waiting=work_waiting,
        ),
    )


class Companion(Protocol):
    """A long-running part that runs beside a scheduler (the webhook deliverer): started
    with the scheduler's own helpers, started again should it die, and given a last,
    bounded chance to :meth:`finish` its work when the scheduler stops."""

    name: str

    async def run(self) -> None:
        """Work until cancelled."""

    async def finish(self) -> None:
        """Last work before the scheduler stops; must end on its own, promptly."""


class Supervision:
    """Failure streaks and beats of one scheduler; see the module docstring."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.restarts = 0
        self._clock = clock
        self._started = clock()
        self._beat: float | None = None
        self._failing: dict[str, tuple[float, int]] = {}  #: part → (since, failures in a row)
        self._last_error = ""
        self._stopped = False

    def beat(self) -> None:
        """The main loop finished a pass."""
        self._beat = self._clock()
        self._stopped = False

    def ok(self, part: str) -> None:
        """``part`` succeeded: its failure streak, if any, is over."""
        if self._failing.pop(part, None) is not None:
            log.warning("scheduler: %s works again", part)

    def failed(self, part: str, exc: BaseException) -> float:
        """Record a failure of ``part``; returns the seconds to wait before trying again."""
        now = self._clock()
        since, count = self._failing.get(part, (now, 0))
        count += 1
        self._failing[part] = (since, count)
        self._last_error = f"{part}: {type(exc).__name__}: {exc}"
        if count == 1:
            log.error("scheduler: %s failed; retrying", part, exc_info=exc)
        elif count & (count - 1) == 0:  # 2, 4, 8…: the log says it goes on, without a flood
            log.warning("scheduler: %s failed %d times in a row: %s", part, count, exc)
        return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (count - 1)))

    def stopped(self) -> None:
        self._stopped = True

    def stalled_for(self) -> float:
        """Seconds without progress: the oldest failure streak, or the time since the last beat."""
        now = self._clock()
        # a copy first: /healthz reads this from another thread while the loop writes
        streaks = list(self._failing.values())
        since = min((s for s, _ in streaks), default=now)
        last = self._beat if self._beat is not None else self._started
        return max(now - since, now - last)

    def raise_if_stalled(self) -> None:
        """SchedulerStalledError once no progress was made for ``stall_seconds`` (kiln run)."""
        stalled = self.stalled_for()
        if stalled >= self.stall_seconds:
            reason = self._last_error or "no progress"
            raise SchedulerStalledError(
                f"the scheduler could not go on for {stalled:.0f} s: {reason}"
            )

    def report(self) -> HealthReport:
        if self._stopped:
            state = "stopped"
        elif self._failing:
            state = "retrying"
        else:
            state = "running" if self._beat is not None else "starting"
        return HealthReport(
            state,
            round(self.stalled_for(), 3) if state != "stopped" else 0.0,
            self._last_error,
            tuple(self._failing),
            self.restarts,
        )
