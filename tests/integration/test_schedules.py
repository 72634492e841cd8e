"""Cron schedules on a real database (SQLite and PostgreSQL): add, the claim of a slot,
missed slots, firing a batch file, failures recorded, the server's runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.batches import get_batch, list_batches
from pixelkiln.db.runs import get_run
from pixelkiln.db.schedules import (
    NewSchedule,
    ScheduleKind,
    add_schedule,
    claim_slot,
    due_schedules,
    get_schedule,
)
from pixelkiln.engine.housekeeping import server_companions
from pixelkiln.engine.schedules import ScheduleRunner
from pixelkiln.exceptions import NotFoundError, PermissionDeniedError, SpecError
from pixelkiln.service import LOCAL, Caller, ServiceContext
from pixelkiln.service import schedules as service
from pixelkiln.testing import wait_until
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio
BATCH = "name: nightly\ndefaults: {width: 64, height: 64}\ntasks:\n  - prompt: a fox\n"
EVERY_TEN_SECONDS = "* * * * * */10"


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        schedules={"poll_interval": 0.05},  # the runner test moves its clock: look often
    )
    async with Kiln(settings, engine=False) as opened:
        yield opened


@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    path = tmp_path / "nightly.yaml"
    path.write_text(BATCH)
    return path


def slot_after(now: float, every: int = 10) -> float:
    return (int(now) // every + 1) * every


async def test_two_claims_of_one_slot_have_one_winner(kiln: Kiln) -> None:
    slot = 1_000_000.0
    new = NewSchedule(None, EVERY_TEN_SECONDS, ScheduleKind.BATCH, "/x.yaml", slot)
    schedule_id = await kiln.db.awrite(add_schedule, new)
    claims = [
        kiln.db.awrite(claim_slot, schedule_id, seen=slot, following=slot + 10) for _ in range(5)
    ]
    assert sorted(await asyncio.gather(*claims)) == [False] * 4 + [True]
    stored = await kiln.db.aread(get_schedule, schedule_id)
    assert stored.next_run_at == slot + 10 and stored.last_run_at is not None
    assert await kiln.db.aread(due_schedules, slot + 5) == []


async def test_a_claim_from_another_database_connection_sees_the_winner(
    kiln: Kiln, database_url: str
) -> None:
    """Two processes are two writers: the loser's compare-and-set updates no row."""
    from pixelkiln.db.database import Database

    slot = 2_000_000.0
    new = NewSchedule(None, EVERY_TEN_SECONDS, ScheduleKind.BATCH, "/x.yaml", slot)
    schedule_id = await kiln.db.awrite(add_schedule, new)
    other = await asyncio.to_thread(Database.open, database_url)
    try:
        first = await other.awrite(claim_slot, schedule_id, seen=slot, following=slot + 10)
        second = await kiln.db.awrite(claim_slot, schedule_id, seen=slot, following=slot + 10)
    finally:
        await asyncio.to_thread(other.close)
    assert (first, second) == (True, False)


async def test_add_checks_everything_now_and_lists_the_next_run(
    kiln: Kiln, batch_file: Path, tmp_path: Path
) -> None:
    ctx = kiln.service
    with pytest.raises(SpecError, match="cron"):
        await service.add_schedule(ctx, LOCAL, "0 0 * *", ScheduleKind.BATCH, batch_file)
    with pytest.raises(SpecError, match="unknown time zone"):
        await service.add_schedule(
            ctx, LOCAL, "0 0 * * *", ScheduleKind.BATCH, batch_file, timezone="Nowhere/City"
        )
    with pytest.raises(SpecError, match="file not found"):
        await service.add_schedule(ctx, LOCAL, "0 0 * * *", ScheduleKind.BATCH, tmp_path / "x.yaml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(BATCH.replace("width: 64", "backend: nosuch, width: 64"))
    with pytest.raises(SpecError, match="nosuch"):  # checked as a submit would check it
        await service.add_schedule(ctx, LOCAL, "0 0 * * *", ScheduleKind.BATCH, unknown)
    view = await service.add_schedule(
        ctx, LOCAL, "30 2 * * *", ScheduleKind.BATCH, batch_file, timezone="UTC"
    )
    assert view.next_run is not None and (view.next_run.hour, view.next_run.minute) == (2, 30)
    assert view.zone == "UTC" and view.schedule.target == str(batch_file.absolute())
    listed = await service.list_schedules(ctx, LOCAL)
    assert [v.schedule.id for v in listed] == [view.schedule.id]
    await service.remove_schedule(ctx, LOCAL, view.schedule.id)
    assert await service.list_schedules(ctx, LOCAL) == []
    with pytest.raises(NotFoundError):
        await service.remove_schedule(ctx, LOCAL, view.schedule.id)


async def test_only_admins_schedule_files_of_the_server(kiln: Kiln, batch_file: Path) -> None:
    from pixelkiln.db.users import User

    user = User(id=7, name="u", is_admin=False, active=True, created_at=0.0)
    with pytest.raises(PermissionDeniedError):
        await service.add_schedule(
            kiln.service, Caller(user), "0 0 * * *", ScheduleKind.BATCH, batch_file
        )


async def _due_every_ten_seconds(ctx: ServiceContext, batch_file: Path) -> tuple[int, float]:
    view = await service.add_schedule(
        ctx, LOCAL, EVERY_TEN_SECONDS, ScheduleKind.BATCH, batch_file, timezone="UTC"
    )
    slot = view.schedule.next_run_at
    assert slot is not None
    return view.schedule.id, slot


async def test_a_due_slot_starts_the_batch_file_once(kiln: Kiln, batch_file: Path) -> None:
    ctx = kiln.service
    schedule_id, slot = await _due_every_ten_seconds(ctx, batch_file)
    assert await service.run_due(ctx, slot - 1) == []  # not yet due
    fired = await service.run_due(ctx, slot + 1)
    assert [(f.schedule_id, f.slot, f.error) for f in fired] == [(schedule_id, slot, None)]
    assert await service.run_due(ctx, slot + 1) == []  # the slot is taken
    assert fired[0].run_id is not None
    batch = await kiln.db.aread(get_batch, fired[0].run_id)
    assert (batch.name, batch.source, batch.counts.total) == ("nightly", "schedule", 1)
    stored = await kiln.db.aread(get_schedule, schedule_id)
    assert (stored.last_run_id, stored.last_error) == (batch.id, None)
    assert stored.next_run_at == slot + 10


async def test_slots_missed_while_no_process_ran_collapse_into_one_run(
    kiln: Kiln, batch_file: Path
) -> None:
    ctx = kiln.service
    schedule_id, slot = await _due_every_ten_seconds(ctx, batch_file)
    back = slot + 35  # three more slots passed while nothing ran
    assert len(await service.run_due(ctx, back)) == 1
    assert await service.run_due(ctx, back) == []
    assert len(await kiln.db.aread(list_batches)) == 1
    stored = await kiln.db.aread(get_schedule, schedule_id)
    assert stored.next_run_at == slot_after(back)  # the next slot after now, not a missed one


async def test_a_start_that_fails_is_recorded_and_the_next_slot_still_comes(
    kiln: Kiln, batch_file: Path
) -> None:
    ctx = kiln.service
    schedule_id, slot = await _due_every_ten_seconds(ctx, batch_file)
    batch_file.write_text("name: broken\ntasks: [{prompt: a fox, n: 99}]\n")
    fired = await service.run_due(ctx, slot + 1)
    assert fired[0].run_id is None and fired[0].error and "'n'" in fired[0].error
    stored = await kiln.db.aread(get_schedule, schedule_id)
    assert stored.last_error == fired[0].error and stored.next_run_at == slot + 10
    with pytest.raises(SpecError):  # run-now says it to the one who asked
        await service.run_now(ctx, LOCAL, schedule_id)
    batch_file.write_text(BATCH)
    done = await service.run_now(ctx, LOCAL, schedule_id)
    stored = await kiln.db.aread(get_schedule, schedule_id)
    assert (stored.last_run_id, stored.last_error) == (done.run_id, None)
    assert stored.next_run_at == slot + 10  # run-now leaves the slots alone


async def test_the_servers_runner_fires_due_slots_and_survives_failures(
    kiln: Kiln, batch_file: Path
) -> None:
    ctx = kiln.service
    assert "schedules" in [c.name for c in server_companions(ctx)]
    schedule_id, slot = await _due_every_ten_seconds(ctx, batch_file)
    now = [slot - 1.0]
    runner = ScheduleRunner(ctx, clock=lambda: now[0])
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(0)  # its first pass: nothing due
        batch_file.unlink()  # the next start fails: recorded, the loop goes on
        now[0] = slot + 0.5
        await wait_until(lambda: kiln.db.read(get_schedule, schedule_id).last_error is not None)
        batch_file.write_text(BATCH)
        now[0] = slot + 10.5
        await wait_until(lambda: kiln.db.read(get_schedule, schedule_id).last_error is None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(kiln.db.read(list_batches)) == 1


async def test_schedules_can_be_turned_off_for_a_process(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", schedules={"enabled": False})
    async with Kiln(settings, engine=False) as kiln:
        assert "schedules" not in [c.name for c in server_companions(kiln.service)]


def studio(tmp_path: Path, config: str) -> Path:
    """A project config and one complete project folder, p1."""
    folder = tmp_path / "projects" / "p1"
    folder.mkdir(parents=True)
    for name in ("p1_scenes.json", "p1_paragraphs.json", "p1.aac", "p1_zh.srt"):
        (folder / name).write_text('[{"prompt": "a fox"}]' if "scenes" in name else "x")
    path = tmp_path / "studio.json"
    path.write_text(config)
    return path


async def test_a_project_config_is_checked_when_added(kiln: Kiln, tmp_path: Path) -> None:
    bad = studio(tmp_path, '{"default_settings": {"language": "zh", "cfg_scale": "high"}}')
    with pytest.raises(SpecError) as caught:
        await service.add_schedule(kiln.service, LOCAL, "0 0 * * *", ScheduleKind.PROJECTS, bad)
    assert "studio.json" in str(caught.value) and "projects" in str(caught.value)
    assert await service.list_schedules(kiln.service, LOCAL) == []


async def test_a_projects_schedule_starts_a_run_of_the_config(kiln: Kiln, tmp_path: Path) -> None:
    config = studio(
        tmp_path, '{"default_settings": {"language": "zh"}, "projects": [{"pid": "p1"}]}'
    )
    ctx = kiln.service
    view = await service.add_schedule(
        ctx, LOCAL, EVERY_TEN_SECONDS, ScheduleKind.PROJECTS, config, options={"pid": ["p1"]}
    )
    slot = view.schedule.next_run_at
    assert slot is not None
    fired = await service.run_due(ctx, slot + 1)
    assert fired[0].error is None and fired[0].run_id is not None
    run = await kiln.db.aread(get_run, fired[0].run_id)
    assert (run.source, run.schedule_id, run.name) == ("schedule", view.schedule.id, "studio")
    stored = await kiln.db.aread(get_schedule, view.schedule.id)
    assert (stored.last_run_id, stored.last_error) == (run.id, None)


async def test_a_claim_left_unstarted_is_started_once_by_a_later_pass(
    kiln: Kiln, batch_file: Path
) -> None:
    """A process claimed the slot and died before starting it: once the claim is older
    than a lease, the next pass (of any process) starts the slot, once."""
    ctx = kiln.service
    schedule_id, slot = await _due_every_ten_seconds(ctx, batch_file)
    later = slot + 3600.0  # the next slot: far enough not to be due in this test
    assert await kiln.db.awrite(claim_slot, schedule_id, seen=slot, following=later)
    assert await service.run_due(ctx, slot + 1) == []  # the claim is fresh: its holder may live
    stale = time.time() + ctx.settings.scheduler.lease_seconds + 1
    fired = await service.run_due(ctx, stale)
    assert [(f.schedule_id, f.slot, f.error) for f in fired] == [(schedule_id, slot, None)]
    assert await service.run_due(ctx, stale) == []
    assert len(await kiln.db.aread(list_batches)) == 1
    stored = await kiln.db.aread(get_schedule, schedule_id)
    assert stored.last_run_id == fired[0].run_id and stored.next_run_at == later


async def test_a_start_whose_claim_was_taken_over_makes_nothing(kiln: Kiln, tmp_path: Path) -> None:
    """A slow start lost its claim to another process: the run it was storing is rolled
    back (the other one starts the slot), and it records nothing."""
    from pixelkiln.db.runs import list_runs
    from pixelkiln.db.schedules import take_over

    config = studio(tmp_path, '{"projects": [{"pid": "p1"}]}')
    ctx = kiln.service
    view = await service.add_schedule(ctx, LOCAL, "0 0 * * *", ScheduleKind.PROJECTS, config)
    slot = view.schedule.next_run_at
    assert slot is not None
    await kiln.db.awrite(claim_slot, view.schedule.id, seen=slot, following=None, owner="slow")
    claimed = await kiln.db.aread(get_schedule, view.schedule.id)
    assert await kiln.db.awrite(take_over, claimed, "other")
    fired = await service.fire(ctx, claimed, claim=("slow", slot))
    assert fired.run_id is None and fired.error and "taken over" in fired.error
    assert await kiln.db.aread(list_runs) == []
    stored = await kiln.db.aread(get_schedule, view.schedule.id)
    assert (stored.claimed_by, stored.last_error) == ("other", None)


async def test_run_now_creates_the_project_run_held_by_the_one_who_follows_it(
    kiln: Kiln, tmp_path: Path
) -> None:
    """`kiln schedule run-now --wait` drives the run itself: no server may take it first."""
    from pixelkiln.db.runs import orphan_runs

    config = studio(tmp_path, '{"projects": [{"pid": "p1"}]}')
    ctx = kiln.service
    view = await service.add_schedule(ctx, LOCAL, "0 0 * * *", ScheduleKind.PROJECTS, config)
    fired = await service.run_now(ctx, LOCAL, view.schedule.id, lease_owner="cli:1:x")
    assert fired.run_id is not None
    run = await kiln.db.aread(get_run, fired.run_id)
    assert run.lease_owner == "cli:1:x"
    assert await kiln.db.aread(orphan_runs, time.time()) == []
