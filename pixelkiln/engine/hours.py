"""Backends' daily hours: ``active_hours`` and ``quiet_hours`` windows, in local time.

Windows are parsed by :mod:`pixelkiln.hours` (re-exported here): ``HH:MM-HH:MM``,
the first minute included, the second excluded; ``22:00-07:00`` crosses midnight.
A backend is *closed* outside its ``active_hours`` and inside its ``quiet_hours``:
the scheduler claims and starts none of its tasks then (tasks already generating
finish). Its tasks wait in the queue, spending no attempt, and it is no fallback
target while closed; the scheduler wakes itself when a window opens.

The maths takes the time as a value (an injected clock), so tests need not wait.

>>> window = parse_window("22:00-07:00")
>>> window.holds(23 * 60 + 30), window.holds(7 * 60)
(True, False)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pixelkiln.hours import MINUTES_PER_DAY, Window, optional_window, parse_window

log = logging.getLogger("pixelkiln.engine")


@dataclass(frozen=True)
class BackendHours:
    """One backend's windows; None where it has none."""

    active: Window | None = None  #: outside it the backend takes no new task
    quiet: Window | None = None  #: inside it the backend takes no new task

    def open_at(self, minute: int) -> bool:
        if self.active is not None and not self.active.holds(minute):
            return False
        return self.quiet is None or not self.quiet.holds(minute)

    def edges(self) -> list[int]:
        return [e for w in (self.active, self.quiet) if w is not None for e in w.edges]


def local_time(timestamp: float) -> datetime:
    """This machine's local wall-clock time at ``timestamp`` (naive)."""
    return datetime.fromtimestamp(timestamp)


class Hours:
    """Which backends are closed now, and when the next one opens; see the module.

    ``local`` turns a timestamp into local wall-clock time (injected by tests).
    """

    def __init__(
        self,
        windows: dict[str, BackendHours],
        local: Callable[[float], datetime] = local_time,
    ) -> None:
        self.windows = {name: w for name, w in windows.items() if w.edges()}
        self._local = local
        self._closed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Iterable[tuple[str, str, str]]) -> Hours:
        """From (name, active_hours, quiet_hours) of each backend (validated by the config)."""
        return cls(
            {
                name: BackendHours(optional_window(active), optional_window(quiet))
                for name, active, quiet in settings
            }
        )

    def __bool__(self) -> bool:
        return bool(self.windows)

    def closed(self, now: float) -> frozenset[str]:
        """The backends that take no new task at ``now``."""
        if not self.windows:
            return frozenset()
        minute = _minute_of(self._local(now))
        found = frozenset(n for n, w in self.windows.items() if not w.open_at(minute))
        if found != self._closed:
            self._say(found)
        return found

    def _say(self, found: frozenset[str]) -> None:
        for name in sorted(found - self._closed):
            log.info("backend '%s' is outside its hours: its tasks wait", name)
        for name in sorted(self._closed - found):
            log.info("backend '%s' is inside its hours again", name)
        self._closed = found

    def waiting_notes(self, names: Iterable[str], now: float) -> list[str]:
        """A line for each of ``names`` closed at ``now``: why its tasks wait, and until
        when (what a face prints so that a run that waits is not a silent spinner)."""
        local = self._local(now)
        notes = []
        for name in sorted(set(names) & self.closed(now)):
            window = self.windows[name]
            opening = min(
                (_seconds_until(local, e) for e in window.edges() if window.open_at(e)),
                default=None,
            )
            until = "" if opening is None else f" until {local + timedelta(seconds=opening):%H:%M}"
            notes.append(f"backend '{name}' is outside its hours: its tasks wait{until}")
        return notes

    def next_opening(self, now: float) -> float | None:
        """When a backend closed at ``now`` may open (the next edge of its windows), or None."""
        closed = self.closed(now)
        if not closed:
            return None
        local = self._local(now)
        return min(
            now + _seconds_until(local, edge)
            for name in closed
            for edge in self.windows[name].edges()
        )


def _minute_of(moment: datetime) -> int:
    return moment.hour * 60 + moment.minute


def _seconds_until(moment: datetime, edge: int) -> float:
    """Seconds from ``moment`` to the next time the clock shows minute ``edge`` (0 < s ≤ 1 day)."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    target = midnight + timedelta(minutes=edge)
    if target <= moment:
        target += timedelta(days=1)
    return (target - moment).total_seconds()


__all__ = [
    "MINUTES_PER_DAY",
    "BackendHours",
    "Hours",
    "Window",
    "local_time",
    "optional_window",
    "parse_window",
]
