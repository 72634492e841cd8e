"""Four `kiln resume` processes on one PostgreSQL database and one WebUI with 2 slots: the
WebUI's own counter never sees more than 2 generations at once, and every task runs once.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import Connection, select

from pixelkiln.app import Kiln
from pixelkiln.config import load_settings
from pixelkiln.db.database import Database
from pixelkiln.db.tables import tasks
from pixelkiln.models import TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import wait_until
from tests.integration.test_shared_limits import TXT2IMG, CountingWebUI
from tests.processes import KILN, env

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
WORKERS, TASKS = 4, 40


def _config(tmp_path: Path, database_url: str, webui: str) -> Path:
    path = tmp_path / "kiln.toml"
    path.write_text(
        f"""
[storage]
data_dir = "{tmp_path / "data"}"
database_url = "{database_url}"

[scheduler]
concurrency = 4
poll_interval = 0.05

[[backends]]
name = "webui"
type = "sdwebui"
urls = ["{webui}"]
concurrency = 2
"""
    )
    return path


def _running_by_owner(conn: Connection) -> Counter[str]:
    """Tasks claimed (waiting to be sent, or sent), per process."""
    rows = conn.execute(select(tasks.c.lease_owner).where(tasks.c.status == TaskStatus.RUNNING))
    return Counter(str(r.lease_owner) for r in rows)


def _generating_by_owner(conn: Connection) -> Counter[str]:
    """Tasks whose attempt started (they are in their backend's hands), per process."""
    rows = conn.execute(
        select(tasks.c.lease_owner).where(
            tasks.c.status == TaskStatus.RUNNING, tasks.c.started_at.is_not(None)
        )
    )
    return Counter(str(r.lease_owner) for r in rows)


def _states(conn: Connection) -> Counter[str]:
    return Counter(str(s) for s in conn.execute(select(tasks.c.status)).scalars())


async def test_four_processes_never_send_a_server_more_than_its_slots(
    tmp_path: Path, postgres_url: str
) -> None:
    with CountingWebUI(latency=0.02) as webui, ExitStack() as stack:
        config = _config(tmp_path, postgres_url, webui.url)
        spec = {
            "name": "shared",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"p {i}", "key": f"k{i}"} for i in range(TASKS)],
        }
        async with Kiln(load_settings(config)) as kiln:
            await kiln.submit(parse_batch(spec))
        webui.hold()  # what runs stays in flight until released: the test looks meanwhile
        logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
        workers = [
            stack.enter_context(
                subprocess.Popen(
                    [*KILN, "resume", "--quiet", "--config", str(config)],
                    cwd=tmp_path,
                    env=env(tmp_path),
                    stdout=stack.enter_context(log.open("w")),
                    stderr=subprocess.STDOUT,
                )
            )
            for log in logs
        ]
        db = Database.open(postgres_url)
        try:
            # every process holds tasks and wants to send two (its share of the server's 2
            # slots as it counts them alone): 8 requests want to go, the server runs 2
            await wait_until(
                lambda: [n >= 2 for n in db.read(_running_by_owner).values()] == [True] * WORKERS,
                timeout=60,
            )
            await wait_until(lambda: webui.held == 2, timeout=60)
            assert (webui.held, webui.peak) == (2, 2)
            # only the 2 sent have spent an attempt: the others wait for a slot untried
            assert sum(db.read(_generating_by_owner).values()) == 2
            webui.release()
            codes = await asyncio.gather(
                *(asyncio.to_thread(w.wait, 120) for w in workers), return_exceptions=True
            )
            assert codes == [0] * WORKERS, [log.read_text()[-2000:] for log in logs]
            states = db.read(_states)
        finally:
            db.close()
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
    assert states == Counter({str(TaskStatus.SUCCEEDED): TASKS})
    assert len(webui.received(TXT2IMG)) == TASKS  # each sent once
    assert webui.peak == 2
