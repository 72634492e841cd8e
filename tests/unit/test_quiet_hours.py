"""Backends' active and quiet hours: the window maths, with an injected clock."""

from __future__ import annotations

from datetime import datetime

import pytest

from pixelkiln.config import load_settings
from pixelkiln.engine.hours import BackendHours, Hours, parse_window
from pixelkiln.exceptions import ConfigError

DAY = datetime(2026, 3, 10)


def minute(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("09:00-18:00", ["09:00", "12:30", "17:59"], ["08:59", "18:00", "23:00", "00:00"]),
        ("22:00-07:00", ["22:00", "23:59", "00:00", "06:59"], ["07:00", "12:00", "21:59"]),
        ("0:00-1:30", ["00:00", "01:29"], ["01:30", "23:59"]),
    ],
)
def test_a_window_holds_its_start_not_its_end_and_may_cross_midnight(
    window: str, inside: list[str], outside: list[str]
) -> None:
    parsed = parse_window(window)
    assert [parsed.holds(minute(t)) for t in inside] == [True] * len(inside)
    assert [parsed.holds(minute(t)) for t in outside] == [False] * len(outside)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("9-18", "is not a window HH:MM-HH:MM"),
        ("24:00-07:00", "24:00 is not a time of day"),
        ("22:60-07:00", "22:60 is not a time of day"),
        ("08:00-08:00", "an empty window"),
        ("night", "is not a window"),
    ],
)
def test_a_malformed_window_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_window(text)


def test_the_config_refuses_a_bad_window_naming_the_backend_key() -> None:
    backend = {"name": "sd", "type": "placeholder", "quiet_hours": "25:00-07:00"}
    with pytest.raises(ConfigError) as caught:
        load_settings(None, backends=[backend])
    assert "quiet_hours" in str(caught.value)
    assert "25:00 is not a time of day" in str(caught.value)


def test_active_and_quiet_hours_combine() -> None:
    hours = BackendHours(active=parse_window("20:00-08:00"), quiet=parse_window("02:00-03:00"))
    opened = {t: hours.open_at(minute(t)) for t in ("21:00", "01:59", "02:30", "03:00", "12:00")}
    assert opened == {
        "21:00": True,
        "01:59": True,
        "02:30": False,
        "03:00": True,
        "12:00": False,
    }


class FakeLocal:
    """Local wall-clock time for a timestamp: ``DAY`` plus the timestamp's seconds."""

    def __call__(self, timestamp: float) -> datetime:
        return datetime.fromtimestamp(DAY.timestamp() + timestamp)


def hours_of(**windows: tuple[str, str]) -> Hours:
    settings = [(name, active, quiet) for name, (active, quiet) in windows.items()]
    built = Hours.of(settings)
    return Hours(built.windows, local=FakeLocal())


def at(text: str) -> float:
    """Seconds from ``DAY``'s midnight to ``text`` (the fake clock's timestamp)."""
    return minute(text) * 60.0


def test_closed_backends_follow_the_clock_across_midnight() -> None:
    hours = hours_of(sd=("", "22:00-07:00"), api=("09:00-17:00", ""), always=("", ""))
    assert hours.closed(at("12:00")) == frozenset()
    assert hours.closed(at("23:30")) == {"sd", "api"}
    assert hours.closed(at("06:59")) == {"sd", "api"}
    assert hours.closed(at("07:00")) == {"api"}
    assert "always" not in hours.windows  # no window: never looked at


def test_the_next_opening_is_the_nearest_edge_of_a_closed_backend() -> None:
    hours = hours_of(sd=("", "22:00-07:00"))
    assert hours.next_opening(at("12:00")) is None  # nothing closed: nothing to wait for
    # closed at 23:30: it opens at 07:00 the next day, 7.5 hours later
    assert hours.next_opening(at("23:30")) == at("23:30") + 7.5 * 3600
    assert hours.next_opening(at("06:59")) == at("06:59") + 60


def test_a_run_waiting_on_a_closed_backend_is_told_until_when() -> None:
    hours = hours_of(sd=("", "22:00-07:00"), api=("09:00-17:00", ""), other=("", "01:00-02:00"))
    notes = hours.waiting_notes({"sd", "api", "unused"}, at("23:30"))
    assert notes == [
        "backend 'api' is outside its hours: its tasks wait until 09:00",
        "backend 'sd' is outside its hours: its tasks wait until 07:00",
    ]
    assert hours.waiting_notes({"sd", "api"}, at("12:00")) == []  # both open at noon
