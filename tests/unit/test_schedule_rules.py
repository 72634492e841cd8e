"""Cron schedules: what an expression and a time zone must be, and when slots come."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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


# -- clocks that change: the repeated hour runs once, the skipped hour at the jump ---------------

NEW_YORK = "America/New_York"


def test_a_named_zones_repeated_hour_runs_once() -> None:
    """1 Nov 2026, New York: 01:00-01:59 happens twice (EDT, then EST)."""
    first_0131 = utc(2026, 11, 1, 5, 31, 0)  # 01:31 EDT, just after the 01:30 slot ran
    assert next_slot("30 1 * * *", NEW_YORK, first_0131) == utc(2026, 11, 2, 6, 30, 0)
    second_0106 = utc(2026, 11, 1, 6, 6, 0)  # 01:06 EST: its slots were the first hour's
    assert next_slot("*/5 * * * *", NEW_YORK, second_0106) == utc(2026, 11, 1, 7, 0, 0)


def test_a_named_zones_skipped_hour_runs_at_the_jump_once() -> None:
    """8 Mar 2026, New York: 02:00 EST becomes 03:00 EDT (07:00 UTC)."""
    before = utc(2026, 3, 8, 6, 59, 0)  # 01:59 EST
    assert next_slot("30 2 * * *", NEW_YORK, before) == utc(2026, 3, 8, 7, 0, 0)
    assert next_slot("*/5 * * * *", NEW_YORK, before) == utc(2026, 3, 8, 7, 0, 0)
    after_jump = utc(2026, 3, 8, 7, 0, 0) + 0.5
    assert next_slot("30 2 * * *", NEW_YORK, after_jump) == utc(2026, 3, 9, 6, 30, 0)
    assert next_slot("*/5 * * * *", NEW_YORK, after_jump) == utc(2026, 3, 8, 7, 5, 0)


LOCAL_AUTUMN = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from pathlib import Path
from pixelkiln.app import Kiln
from pixelkiln.db.batches import list_batches
from pixelkiln.db.schedules import ScheduleKind
from pixelkiln.service import LOCAL
from pixelkiln.service import schedules as service
from tests.conftest import make_settings

def utc(*args):
    return datetime(*args, tzinfo=UTC).timestamp()

async def main(folder):
    spec = folder / "b.yaml"
    spec.write_text("name: b\\ndefaults: {width: 64, height: 64}\\ntasks: [{prompt: a fox}]\\n")
    async with Kiln(make_settings(folder / "data"), engine=False) as kiln:
        view = await service.add_schedule(kiln.service, LOCAL, "*/5 * * * *",
                                          ScheduleKind.BATCH, spec)
        sid = view.schedule.id
        # the server's passes in the repeated hour: 01:06 EST onwards, each a pass
        await kiln.db.awrite(lambda tx: tx.conn.exec_driver_sql(
            f"UPDATE schedules SET next_run_at = {utc(2026, 11, 1, 6, 5)} WHERE id = {sid}"))
        fired = [len(await service.run_due(kiln.service, utc(2026, 11, 1, 6, m)))
                 for m in (6, 7, 8, 30, 59)]
        fired.append(len(await service.run_due(kiln.service, utc(2026, 11, 1, 7, 0, 1))))
        print(fired, len(await kiln.db.aread(list_batches)))

asyncio.run(main(Path(sys.argv[1])))
"""


def test_local_time_is_the_machines_zone_and_its_repeated_hour_runs_once(tmp_path: Path) -> None:
    """``[schedules] timezone = ""`` on a machine in New York, the night clocks go back."""
    import os
    import subprocess
    import sys

    from tests.processes import env

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_AUTUMN, str(tmp_path)],
        env={**env(), "TZ": NEW_YORK, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # the slot of 01:05 EST (due since the first 01:05) runs once; then none until 02:00 EST
    assert done.stdout.split() == ["[1,", "0,", "0,", "0,", "0,", "1]", "2"]


def test_the_machines_zone_is_read_with_its_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoneinfo import ZoneInfo

    from pixelkiln.hours import local_zone

    monkeypatch.setenv("TZ", NEW_YORK)
    assert local_zone() == ZoneInfo(NEW_YORK)
    monkeypatch.setenv("TZ", ":Asia/Shanghai")
    assert local_zone() == ZoneInfo("Asia/Shanghai")
