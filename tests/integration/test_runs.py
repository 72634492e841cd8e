"""Project runs through the service: planned, stored, driven one project after another,
taken over when their driver dies, reported. Real SQLite and PostgreSQL, the
placeholder generator, the real scheduler."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.batches import get_batch, list_batches
from pixelkiln.db.presets import PresetFields
from pixelkiln.db.runs import RunStatus, claim_run, get_run, list_runs, orphan_runs
from pixelkiln.db.tasks import list_tasks
from pixelkiln.db.users import add_user
from pixelkiln.exceptions import PermissionDeniedError, SpecError
from pixelkiln.service import LOCAL, Caller, create_preset
from pixelkiln.service.runs import (
    RunDriver,
    RunKeeper,
    RunStopped,
    create_projects_run,
    plan_projects_run,
)
from tests.conftest import make_settings
from tests.unit.test_projects_config import make_project, scenes, write_config

pytestmark = pytest.mark.anyio

CONFIG = {
    "description": "tonight",
    "projects_dir": "data",
    "prompt_field": "image_prompt",
    "prompt_template": "{description}. {prompt}, {style}",
    "output": "project",
    "default_settings": {
        "language": "zh",
        "channel": "world",
        "description": "still",
        "width": 64,
        "height": 64,
        "delay_between_projects": 0.3,
    },
    "projects": [{"pid": "p1"}, {"pid": "p2"}, {"pid": "p3"}],
}


def studio(tmp_path: Path, database_url: str, **scheduler: Any) -> tuple[Settings, Path]:
    config = write_config(tmp_path / "studio" / "nightly.json", CONFIG)
    data = tmp_path / "studio" / "data"
    make_project(data, "p1", scenes(2))
    make_project(data, "p2", scenes(1), skip=("p2_zh.srt",))
    make_project(data, "p3", scenes(3))
    settings = make_settings(
        tmp_path / "kiln-data",
        storage={"database_url": database_url},
        backends=[{"name": "placeholder", "type": "placeholder", "latency": 0.01}],
        channels={"world": {"style": "ink", "cfg_scale": 9}},
        scheduler=scheduler,
    )
    return settings, config


def one(kiln: Kiln) -> Callable[[int], Awaitable[None]]:
    """Runs one batch to its end in this process (as `kiln projects run` does)."""

    async def run_batch(batch_id: int) -> None:
        await kiln.run_until_done([batch_id])

    return run_batch


async def test_a_run_drives_its_projects_in_turn_and_reports_them(
    tmp_path: Path, database_url: str
) -> None:
    settings, config = studio(tmp_path, database_url)
    async with Kiln(settings) as kiln:
        run_id = await create_projects_run(kiln.service, LOCAL, config, {}, source="cli")

        lines: list[str] = []
        report = await RunDriver(
            kiln.service, run_id, run_batch=one(kiln), notes=lines.append
        ).drive()
        run = kiln.db.read(get_run, run_id)
        batches = sorted(kiln.db.read(list_batches), key=lambda b: b.id)
        tasks = kiln.db.read(list_tasks, batches[0].id)
    assert report is not None and run.status == RunStatus.PARTIAL and run.report == report
    assert [(b.name, b.source, b.run_id, str(b.status)) for b in batches] == [
        ("p1", "project", run_id, "completed"),
        ("p3", "project", run_id, "completed"),
    ]
    # one after another, delay_between_projects apart
    assert batches[1].started_at is not None and batches[0].finished_at is not None
    assert batches[1].started_at >= batches[0].finished_at + 0.3
    assert [t.prompt for t in tasks] == ["still. scene 1, ink", "still. scene 2, ink"]
    assert tasks[0].params["cfg_scale"] == 9
    assert report["projects_total"] == 3 and report["projects_succeeded"] == 2
    assert report["images_per_project"] == {"p1": 2, "p2": 0, "p3": 3}
    assert report["images_total"] == 5 and report["success_rate"] == round(2 / 3, 4)
    assert report["failed_projects"] == [
        {"pid": "p2", "reason": "missing p2_zh.srt", "missing": ["p2_zh.srt"]}
    ]
    images = tmp_path / "studio" / "data" / "p3" / "images"
    assert sorted(p.name for p in images.iterdir()) == [f"p3_s{i}_0.png" for i in (1, 2, 3)]
    saved = json.loads(Path(report["files"]["report"]).read_text(encoding="utf-8"))
    assert saved == report
    log = Path(report["files"]["log"]).read_text(encoding="utf-8")
    assert "project p2 failed: missing p2_zh.srt" in log
    assert "project p3 succeeded: 3 image(s)" in log
    assert any("project p1 started" in line for line in lines)


async def test_a_run_whose_driver_died_is_taken_over_without_a_second_batch(
    tmp_path: Path, database_url: str
) -> None:
    settings, config = studio(tmp_path, database_url, lease_seconds=0.5)
    async with Kiln(settings) as kiln:
        run_id = await create_projects_run(kiln.service, LOCAL, config, {}, source="schedule")

        async def dies(batch_id: int) -> None:  # the process goes away mid-project
            raise RunStopped("killed")

        with pytest.raises(RunStopped):
            await RunDriver(kiln.service, run_id, run_batch=dies, owner="gone:1:x").drive()
        await kiln.db.awrite(claim_run, run_id, "gone:1:x", 0.2)  # as if it had not let go
        assert kiln.db.read(get_run, run_id).lease_owner == "gone:1:x"
        # a server: a scheduler over every batch, and its run driver
        scheduler = kiln.new_scheduler(None)
        serving = asyncio.create_task(scheduler.run())
        keeper = RunKeeper(kiln.service, poll=0.05)
        driving = asyncio.create_task(keeper.run())
        deadline = time.monotonic() + 60
        while not kiln.db.read(get_run, run_id).status.finished:
            assert time.monotonic() < deadline, "the run was not taken over"
            await asyncio.sleep(0.05)
        await keeper.finish()
        driving.cancel()
        scheduler.stop()
        await asyncio.gather(serving, driving, return_exceptions=True)
        run = kiln.db.read(get_run, run_id)
        names = [b.name for b in kiln.db.read(list_batches)]
    assert sorted(names) == ["p1", "p3"]  # p1 was started once, by the first driver
    assert run.status == RunStatus.PARTIAL and run.report is not None
    assert run.report["projects_succeeded"] == 2 and run.lease_owner is None


async def test_a_live_drivers_run_is_not_taken(tmp_path: Path, database_url: str) -> None:
    settings, config = studio(tmp_path, database_url)
    async with Kiln(settings) as kiln:
        run_id = await create_projects_run(
            kiln.service, LOCAL, config, {}, source="cli", lease_owner="me"
        )
        other = RunDriver(kiln.service, run_id, run_batch=one(kiln), owner="other")
        assert not await other.claim()
        assert await other.drive() is None
        assert kiln.db.read(orphan_runs, time.time()) == []
        assert kiln.db.read(orphan_runs, time.time() + 3600) == [run_id]  # once it lapses


async def test_a_channel_can_be_an_active_preset(tmp_path: Path, database_url: str) -> None:
    settings, config = studio(tmp_path, database_url)
    settings = settings.model_copy(update={"channels": {}})
    async with Kiln(settings) as kiln:
        fields = PresetFields(
            title="world", content="oil painting, {prompt}", negative_prompt="dull", params={}
        )
        await create_preset(kiln.service, LOCAL, fields)
        planned = await plan_projects_run(kiln.service, LOCAL, config, {"pid": "p1"})
    [p1] = planned.projects
    assert p1.spec is not None and p1.spec.tasks[0].prompt == "still. scene 1, oil painting"
    assert p1.spec.defaults.negative_prompt == "dull"


async def test_a_config_that_cannot_run_stores_nothing(tmp_path: Path, database_url: str) -> None:
    settings, config = studio(tmp_path, database_url)
    bad = write_config(
        tmp_path / "studio" / "bad.json",
        {**CONFIG, "default_settings": {**CONFIG["default_settings"], "backend": "nope"}},
    )
    async with Kiln(settings) as kiln:
        with pytest.raises(SpecError) as caught:
            await create_projects_run(kiln.service, LOCAL, bad, {})
        user, _ = await kiln.db.awrite(add_user, "ann", is_admin=False)
        with pytest.raises(PermissionDeniedError):
            await create_projects_run(kiln.service, Caller(user), config, {})
        assert kiln.db.read(list_runs) == []
    assert {p.where.split(",")[0] for p in caught.value.problems} == {
        "project 'p1'",
        "project 'p3'",
    }
    assert any("nope" in p.message for p in caught.value.problems)
    assert caught.value.problems[0].field == "backend"


async def test_a_run_without_a_driver_waits_for_one_and_a_drivers_batch_ends_it(
    tmp_path: Path, database_url: str
) -> None:
    settings, config = studio(tmp_path, database_url)
    async with Kiln(settings) as kiln:
        run_id = await create_projects_run(kiln.service, LOCAL, config, {"pid": ["p3"]})
        assert kiln.db.read(orphan_runs, time.time()) == [run_id]
        report = await RunDriver(kiln.service, run_id, run_batch=one(kiln)).drive()
        batch = kiln.db.read(get_batch, 1)
    assert report is not None and report["run"]["status"] == "completed"
    assert batch.name == "p3" and report["projects_total"] == 1


async def test_every_project_refused_at_its_start_keeps_its_reason(
    tmp_path: Path, database_url: str
) -> None:
    """p1 and p3 are planned, then refused when they start (the limits were lowered
    meanwhile): each reason is kept, and the run ends failed with all three reported."""
    settings, config = studio(tmp_path, database_url)
    async with Kiln(settings) as kiln:
        run_id = await create_projects_run(kiln.service, LOCAL, config, {}, source="cli")
    lowered = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"max_tasks_per_batch": 1})}
    )
    async with Kiln(lowered) as kiln:
        report = await RunDriver(kiln.service, run_id, run_batch=one(kiln)).drive()
        run = kiln.db.read(get_run, run_id)
    assert report is not None and run.status == RunStatus.FAILED
    assert (report["projects_failed"], report["projects_unfinished"]) == (3, 0)
    reasons = {p["pid"]: p["reason"] for p in report["failed_projects"]}
    assert "max_tasks_per_batch" in reasons["p1"] and "max_tasks_per_batch" in reasons["p3"]
    assert [p["problem"] != "" for p in run.config["projects"]] == [True, True, True]
