"""Times of day: daily windows (``22:00-07:00``) and the machine's own time zone.

Neutral ground for :mod:`pixelkiln.config` (which checks windows and zones when it
reads kiln.toml) and the engine and service that use them; it imports neither.

A window is ``HH:MM-HH:MM``: from the first minute (included) to the second
(excluded); a window whose end comes before its start crosses midnight
(``22:00-07:00`` holds 23:30 and 06:59, not 07:00).

>>> window = parse_window("22:00-07:00")
>>> window.holds(23 * 60 + 30), window.holds(7 * 60)
(True, False)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: where a Unix machine says its zone: a link into the zone database (or a copy of a file)
LOCALTIME = "/etc/localtime"

MINUTES_PER_DAY = 24 * 60
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """A daily window, in minutes since local midnight; ``end < start`` crosses midnight."""

    start: int  #: first minute inside
    end: int  #: first minute outside

    def holds(self, minute: int) -> bool:
        """Whether the minute of the day ``minute`` (0-1439) lies inside."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    @property
    def edges(self) -> tuple[int, int]:
        return self.start, self.end


def parse_window(text: str) -> Window:
    """``"HH:MM-HH:MM"`` as a :class:`Window`; ValueError saying what is wrong.

    >>> parse_window("9:00-18:30")
    Window(start=540, end=1110)
    """
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not a window HH:MM-HH:MM (e.g. 22:00-07:00)")
    hours_a, minutes_a, hours_b, minutes_b = (int(g) for g in match.groups())
    for hours, minutes in ((hours_a, minutes_a), (hours_b, minutes_b)):
        if hours > 23 or minutes > 59:
            raise ValueError(f"'{text}': {hours:02d}:{minutes:02d} is not a time of day")
    start, end = hours_a * 60 + minutes_a, hours_b * 60 + minutes_b
    if start == end:
        raise ValueError(f"'{text}' starts and ends at the same minute: an empty window")
    return Window(start, end)


def optional_window(text: str) -> Window | None:
    """:func:`parse_window`, with "" meaning no window."""
    return parse_window(text) if text.strip() else None


def zone_named(name: str) -> tzinfo:
    """The IANA zone ``name``, or this machine's own zone for "" (see :func:`local_zone`)."""
    return ZoneInfo(name) if name else local_zone()


def local_zone() -> tzinfo:
    """This machine's time zone, with its rules (summer time): ``$TZ`` when it names an
    IANA zone, else ``/etc/localtime``; a fixed offset (today's) only when neither reads.

    A fixed offset cannot know that clocks change, so the rules are looked for first:
    a naive local time is ambiguous in the hour clocks go back, a zone is not.
    """
    named = os.environ.get("TZ", "").removeprefix(":")
    if named:
        found = _zone_file(named) if named.startswith("/") else _zone(named)
        if found is not None:
            return found
    else:
        try:
            target = os.readlink(LOCALTIME)
        except OSError:
            target = ""
        if "zoneinfo/" in target and (linked := _zone(target.split("zoneinfo/")[-1])):
            return linked
        if (copied := _zone_file(LOCALTIME)) is not None:
            return copied
    offset = datetime.now().astimezone().tzinfo
    assert offset is not None  # astimezone() always sets one
    return offset


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _zone_file(path: str) -> ZoneInfo | None:
    try:
        with open(path, "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return None


__all__ = [
    "MINUTES_PER_DAY",
    "Window",
    "local_zone",
    "optional_window",
    "parse_window",
    "zone_named",
]
