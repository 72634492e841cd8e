"""Cron schedules: what an expression and a time zone must be, and when slots come."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pixelkiln.config import load_settings
from pixelkiln.exceptions import ConfigError
from pixelkiln.service.schedules import cron_problem, next_slot


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("cron", ["0 0 * * *", "*/5 9-17 * * 1-5", "* * * * * */3", "0 0 1 1 *"])
def test_five_fields_or_six_with_seconds_last_are_cron(cron: str) -> None:
    assert cron_problem(cron) is None


@pytest.mark.parametrize("cron", ["0 0 * *", "nightly", "61 0 * * *", "* * * * * * 2030", ""])
def test_anything_else_is_refused_naming_the_field(cron: str) -> None:
    problem = cron_problem(cron)
    assert problem is not None and problem.field == "cron"
    assert "5 fields" in problem.message


def test_the_next_slot_is_read_in_the_schedules_zone() -> None:
    after = utc(2026, 1, 1, 12, 0, 0)
    assert next_slot("0 0 * * *", "UTC", after) == utc(2026, 1, 2, 0, 0, 0)
    # midnight in Shanghai is 16:00 UTC
    assert next_slot("0 0 * * *", "Asia/Shanghai", after) == utc(2026, 1, 1, 16, 0, 0)


def test_the_sixth_field_is_seconds_and_a_slot_is_always_after_the_time_given() -> None:
    after = utc(2026, 1, 1, 0, 0, 3)
    assert next_slot("* * * * * */3", "UTC", after) == utc(2026, 1, 1, 0, 0, 6)
    assert next_slot("* * * * * */3", "UTC", after + 0.5) == utc(2026, 1, 1, 0, 0, 6)


def test_the_settings_refuse_an_unknown_time_zone() -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_settings(None, schedules={"timezone": "Mars/Olympus"})
