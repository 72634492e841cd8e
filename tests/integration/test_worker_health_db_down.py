"""A worker's health port while its database is down: 503 "unhealthy" with the reason,
not a traceback per probe and a connection closed unanswered; 200 again once it is back.

The database is PostgreSQL behind a TCP proxy (tests/tcpproxy.py) that the test cuts:
every connection closed, new ones refused, as when the server goes away.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from pixelkiln.engine.worker import Worker
from pixelkiln.testing import wait_until
from tests.conftest import make_settings
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


async def test_healthz_says_the_database_is_down_and_comes_back(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = make_url(postgres_url)
    with TcpProxy((target.host or "127.0.0.1", target.port or 5432)) as proxy:
        url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        settings = make_settings(
            tmp_path / "data",
            storage={"database_url": url},
            backends=[{"name": "spare", "type": "placeholder"}],
        )
        worker = Worker(settings, health=("127.0.0.1", 0))
        runner = asyncio.create_task(worker.run())
        await wait_until(lambda: worker.ready.is_set() or runner.done())
        assert worker.port is not None
        host, port = worker.port.address
        try:
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as http:
                assert (await http.get("/healthz")).status_code == 200
                proxy.cut()
                with caplog.at_level(logging.INFO):
                    down = await http.get("/healthz")
                    again = await http.get("/healthz")
                assert down.status_code == again.status_code == 503
                body = down.json()
                assert body["status"] == "unhealthy"
                assert body["reason"].startswith("the database cannot be reached")
                assert "answering failed" not in caplog.text
                # (the scheduler logs its own failing steps: not the health port's business)
                assert not any(r.exc_info for r in caplog.records if r.name == "pixelkiln.worker")
                proxy.restore()

                async def healthy() -> bool:
                    return (await http.get("/healthz")).status_code == 200

                await wait_until(healthy, timeout=30)
        finally:
            worker.stop()
            worker.stop()
            await asyncio.wait_for(runner, 60)
