"""``GET /api/v1/admin/backends/health`` and ``DELETE /api/v1/admin/concurrency``: what the
Admin page's "Backend health" and "Concurrency" sections show, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, api_settings, free_port, running_api, spec

pytestmark = pytest.mark.anyio

HEALTH = "/api/v1/admin/backends/health"


def _settings(tmp_path: Path, database_url: str) -> Any:
    """Auth on; "placeholder" fails a prompt with REJECT; "gone" is a WebUI nobody serves."""
    data = tmp_path / "data"
    gone = {
        "name": "gone",
        "type": "sdwebui",
        "urls": [f"http://user:secret@127.0.0.1:{free_port()}"],
        "concurrency": 3,
        "rpm": 120,
    }
    return api_settings(
        data,
        storage={"data_dir": str(data), "database_url": database_url},
        auth={"enabled": True},
        backends=[
            {
                "name": "placeholder",
                "type": "placeholder",
                "concurrency": 4,
                "options": {"reject_if_prompt_contains": "REJECT"},
            },
            gone,
        ],
    )


@pytest.fixture
def make(tmp_path: Path, database_url: str) -> Callable[..., AbstractAsyncContextManager[Api]]:
    def start(run_scheduler: bool = True) -> AbstractAsyncContextManager[Api]:
        return running_api(_settings(tmp_path, database_url), run_scheduler=run_scheduler)

    return start


@pytest.fixture
async def api(make: Callable[..., AbstractAsyncContextManager[Api]]) -> AsyncIterator[Api]:
    async with make() as running:
        yield running


async def _health(client: httpx.AsyncClient, **query: Any) -> dict[str, dict[str, Any]]:
    r = await client.get(HEALTH, params=query)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return {"": body, **{b["name"]: b for b in body["backends"]}}


async def _until(client: httpx.AsyncClient, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The health answer once ``ok`` holds (the scheduler notices in its own time)."""
    for _ in range(500):
        health = await _health(client)
        if ok(health):
            return health
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {health}")


async def test_only_admins_see_the_health_and_reset_the_concurrency(api: Api) -> None:
    _, user = await api.add_user("ivy")
    for method, path in (("GET", HEALTH), ("DELETE", "/api/v1/admin/concurrency")):
        assert (await user.request(method, path)).status_code == 403, path
        assert (await api.client.request(method, path)).status_code == 401, path
    assert (await user.get(HEALTH, params={"probe": "true"})).status_code == 403


async def test_health_tells_servers_limits_and_recent_errors(api: Api) -> None:
    _, admin = await api.add_user("root", admin=True)
    first = await _health(admin)
    assert first[""]["scheduler"] in ("starting", "running") and first[""]["probed_at"] is None
    quick, gone = first["placeholder"], first["gone"]
    assert (quick["state"], quick["servers"], quick["servers_up"]) == (
        "up",
        [{"url": "", "state": "up", "latency_ms": None, "error": ""}],
        None,  # no pool to count servers in
    )
    assert (gone["type"], gone["per_url"], gone["configured"], gone["rpm"]) == (
        "sdwebui",
        3,
        3,
        120,
    )
    assert gone["state"] == "up" and gone["servers_up"] == 1  # nobody has asked it yet
    assert "secret" not in str(first) and gone["servers"][0]["url"].startswith("http://127.0.0.1:")
    assert quick["recent_errors"] == gone["recent_errors"] == []

    rejected = await admin.post("/api/v1/batches?wait=true", json=spec("a REJECT", "fine"))
    assert rejected.json()["status"] == "partial"
    stuck = (await admin.post("/api/v1/batches", json=spec("lost", backend="gone"))).json()

    # its breaker lets a probe through now and then (half-open): while one is out the
    # backend is not "down since" anything, so wait for an answer taken between probes
    health = await _until(
        admin, lambda h: bool(h["gone"]["recent_errors"]) and h["gone"]["down_since"] is not None
    )
    gone, quick = health["gone"], health["placeholder"]
    assert gone["state"] == "down" and gone["servers_up"] == 0
    assert [s["state"] for s in gone["servers"]] == ["down"]
    assert gone["recent_errors"][0]["batch_id"] == stuck["id"]
    assert "every server is down" in gone["recent_errors"][0]["message"]
    failure = quick["recent_errors"][0]
    assert (failure["kind"], failure["batch_id"]) == ("error", rejected.json()["id"])
    assert failure["task_id"] is not None and failure["message"]
    assert quick["state"] == "up" and len(quick["recent_errors"]) == 1


async def test_a_probe_asks_every_server(api: Api) -> None:
    _, admin = await api.add_user("root", admin=True)
    health = await _health(admin, probe="true")
    assert health[""]["probed_at"] is not None
    (local,) = health["placeholder"]["servers"]
    assert (local["url"], local["state"], local["error"]) == ("", "up", "")
    (server,) = health["gone"]["servers"]
    assert server["state"] == "down" and server["error"] and server["latency_ms"] is None
    assert "secret" not in str(health)


async def test_without_a_scheduler_here_nothing_is_guessed(
    make: Callable[..., AbstractAsyncContextManager[Api]],
) -> None:
    async with make(run_scheduler=False) as api:
        _, admin = await api.add_user("root", admin=True)
        health = await _health(admin)
        assert health[""]["scheduler"] == "unknown"
        for name in ("placeholder", "gone"):
            assert health[name]["state"] == "unknown"
            assert [s["state"] for s in health[name]["servers"]] == ["unknown"]
        probed = await _health(admin, probe="true")
        assert (probed["placeholder"]["state"], probed["gone"]["state"]) == ("up", "down")


async def test_the_global_concurrency_goes_back_to_kiln_toml(api: Api) -> None:
    _, admin = await api.add_user("root", admin=True)
    configured = api.settings.scheduler.concurrency
    changed = await admin.put("/api/v1/admin/concurrency", json={"concurrency": 7})
    assert changed.json()["concurrency"] == 7
    reset = await admin.delete("/api/v1/admin/concurrency")
    assert reset.status_code == 200 and reset.json()["concurrency"] == configured
    assert api.ctx.runner is not None and api.ctx.runner.concurrency == configured
    again = await admin.get("/api/v1/admin/concurrency")
    assert again.json()["concurrency"] == configured
