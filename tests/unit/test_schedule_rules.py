"""Cron schedules: what an expression, a time zone and a project config must be."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pixelkiln.config import load_settings
from pixelkiln.exceptions import ConfigError, SpecError
from pixelkiln.service.schedules import check_project_config, cron_problem, next_slot


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


def test_a_project_config_needs_projects_with_pids(tmp_path: Path) -> None:
    good = tmp_path / "studio.json"
    good.write_text('{"default_settings": {"language": "zh"}, "projects": [{"pid": "p1"}]}')
    check_project_config(good)
    bad = tmp_path / "bad.json"
    bad.write_text('{"projects": [{"pid": "p1"}, {"language": "en"}]}')
    with pytest.raises(SpecError) as caught:
        check_project_config(bad)
    assert [(p.where, p.field) for p in caught.value.problems] == [("projects[1]", "pid")]


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("none.json", None, "file not found"),
        ("broken.json", '{"projects": [', "cannot be read"),
        ("empty.yaml", "projects: []", "non-empty list 'projects'"),
        ("config.txt", "projects", "a project config ends in"),
    ],
)
def test_a_project_config_that_cannot_run_is_refused(
    tmp_path: Path, name: str, text: str | None, why: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(SpecError, match=why):
        check_project_config(path)
