"""`kiln status` shows project runs as they are: a finished run's stored report (even once
the retention rules deleted its batches), and a run no process drives as waiting."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from typer.testing import CliRunner

from pixelkiln.app import Kiln
from pixelkiln.cli import app
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import runs
from tests.conftest import make_settings

REPORT: dict[str, Any] = {
    "run": {"id": 1, "name": "nightly", "status": "partial"},
    "time_range": {"start": "2026-11-29T00:00:00+08:00", "end": "2026-11-29T00:40:00+08:00"},
    "total_duration_seconds": 2400.0,
    "projects_total": 2,
    "projects_succeeded": 1,
    "projects_failed": 1,
    "success_rate": 0.5,
    "images_total": 30,
    "projects": [
        {
            "pid": "p1",
            "status": "succeeded",
            "images": 30,
            "seconds": 2000.0,
            "batch_id": 7,
            "reason": "",
        },
        {
            "pid": "p2",
            "status": "failed",
            "images": 0,
            "seconds": 0.0,
            "batch_id": None,
            "reason": "missing p2_zh.srt",
        },
    ],
    "files": {},
}


def _runs(data: Path) -> None:
    async def store() -> None:
        async with Kiln(make_settings(data), engine=False) as kiln:

            def write(tx: Tx) -> None:
                common = {"kind": "projects", "source": "cli", "created_at": time.time()}
                stored = {"name": "nightly", "status": "partial", "config": {"projects": []}}
                tx.conn.execute(insert(runs), {**common, **stored, "report": REPORT})
                left = {"name": "left", "status": "running", "config": {"projects": []}}
                tx.conn.execute(
                    insert(runs),
                    {
                        **common,
                        **left,
                        "lease_owner": "gone:1",
                        "lease_expires_at": time.time() - 60,
                    },
                )

            await kiln.db.awrite(write)

    asyncio.run(store())


def test_a_finished_runs_stored_report_is_shown_though_its_batches_are_gone(
    tmp_path: Path,
) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n')
    _runs(tmp_path / "data")
    shown = CliRunner().invoke(app, ["status", "--run", "1", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "Run 1 'nightly': partial" in shown.output
    assert "1 succeeded, 1 failed of 2" in shown.output and "missing p2_zh.srt" in shown.output
    listed = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "waiting" in listed.output  # run 2: its process died, nobody drives it
