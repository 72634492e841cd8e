"""Presets, runtime concurrency, stats, metrics, backends, health and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from apikit import Api, spec

from pixelkiln.db.settings_store import (
    CONCURRENCY,
    backend_concurrency_key,
    get_setting,
    set_setting,
)

pytestmark = pytest.mark.anyio


async def test_presets_are_managed_by_admins_and_listed_to_users(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    _, user = await auth_api.add_user("ivy")
    made = []
    for title, category in [("Noir", "film"), ("Pastel", "paint"), ("Western", "film")]:
        r = await admin.post(
            "/api/v1/presets",
            json={"title": title, "content": f"{{prompt}}, {title.lower()}", "category": category},
        )
        assert r.status_code == 201, r.text
        made.append(r.json())
    assert [p["position"] for p in made] == [1, 1, 2]  # last within its category
    hidden = await admin.patch(f"/api/v1/presets/{made[1]['id']}", json={"active": False})
    assert hidden.json()["active"] is False and hidden.json()["title"] == "Pastel"
    listed = (await user.get("/api/v1/presets")).json()
    assert [p["title"] for p in listed] == ["Noir", "Western"]
    assert [
        p["title"] for p in (await user.get("/api/v1/presets?include_inactive=true")).json()
    ] == ["Noir", "Western"]
    assert len((await admin.get("/api/v1/presets?include_inactive=true")).json()) == 3
    assert (await user.get(f"/api/v1/presets/{made[1]['id']}")).status_code == 404
    order = await admin.post(
        "/api/v1/presets/reorder", json={"ids": [made[2]["id"], made[0]["id"]]}
    )
    assert [p["title"] for p in order.json() if p["category"] == "film"] == ["Western", "Noir"]
    assert (await admin.post("/api/v1/presets/reorder", json={"ids": [999]})).status_code == 404
    bad = await admin.post(
        "/api/v1/presets", json={"title": "x", "content": "y", "params": {"colour": "red"}}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "params"
    assert (await admin.delete(f"/api/v1/presets/{made[0]['id']}")).status_code == 204
    assert (await admin.delete(f"/api/v1/presets/{made[0]['id']}")).status_code == 404
    assert (await admin.patch("/api/v1/presets/999", json={"title": "x"})).status_code == 404


async def test_concurrency_changes_at_run_time_and_survives_a_restart(
    make_api: Callable[..., AbstractAsyncContextManager[Api]],
) -> None:
    async with make_api() as api:
        assert api.ctx.runner is not None
        now = (await api.client.get("/api/v1/admin/concurrency")).json()
        assert (now["concurrency"], now["max"]) == (api.settings.scheduler.concurrency, 10)
        for wrong in (0, 11, "three"):
            r = await api.client.put("/api/v1/admin/concurrency", json={"concurrency": wrong})
            assert r.status_code == 422, wrong
        r = await api.client.put("/api/v1/admin/concurrency", json={"concurrency": 7})
        assert (r.json()["concurrency"], r.json()["max"]) == (7, 10)
        assert api.ctx.runner.concurrency == 7
        status = await api.ctx.runner.status()
        assert status is not None and status.concurrency == 7
        assert await api.ctx.read(get_setting, CONCURRENCY) == 7
        batch = await api.client.post("/api/v1/batches?wait=true", json=spec("still runs"))
        assert batch.json()["status"] == "completed"
    async with make_api() as again:
        assert again.ctx.runner is not None and again.ctx.runner.concurrency == 7
        assert (await again.client.get("/api/v1/admin/concurrency")).json()["concurrency"] == 7


async def _backends(api: Api) -> dict[str, dict[str, object]]:
    body = (await api.client.get("/api/v1/admin/concurrency")).json()
    return {b["name"]: b for b in body["backends"]}


async def test_a_backends_concurrency_is_what_runs_and_what_an_admin_sees(
    make_api: Callable[..., AbstractAsyncContextManager[Api]],
) -> None:
    async with make_api() as api:
        assert api.ctx.runner is not None
        slow = (await _backends(api))["slow"]
        assert slow == {
            "name": "slow",
            "per_url": 2,
            "configured": 2,
            "overridden": False,
            "servers": 1,
            "servers_up": None,  # a placeholder has no pool to tell
            "cap": 2,
            "effective": 2,
            "limited_by": "backend",
            "running": 0,
        }
        for wrong in (0, 257):
            r = await api.client.put(
                "/api/v1/admin/concurrency/backends/slow", json={"concurrency": wrong}
            )
            assert r.status_code == 422, wrong
        missing = await api.client.put(
            "/api/v1/admin/concurrency/backends/nope", json={"concurrency": 2}
        )
        assert missing.status_code == 404 and "configured: placeholder, slow" in missing.text
        r = await api.client.put("/api/v1/admin/concurrency/backends/slow", json={"concurrency": 3})
        view = {b["name"]: b for b in r.json()["backends"]}["slow"]
        assert (view["per_url"], view["overridden"], view["effective"]) == (3, True, 3)
        assert await api.ctx.read(get_setting, backend_concurrency_key("slow")) == 3

        created = await api.client.post("/api/v1/batches", json=spec(*"abcdef", backend="slow"))
        most = 0
        while not (await api.client.get(f"/api/v1/batches/{created.json()['id']}")).json()[
            "finished"
        ]:
            status = await api.ctx.runner.status()
            assert status is not None
            most = max(most, status.generating["slow"])
            await asyncio.sleep(0.02)
        assert most == 3  # not 2 (configured), not 4 (global): what the admin set

        await api.client.put("/api/v1/admin/concurrency", json={"concurrency": 2})
        view = (await _backends(api))["slow"]
        assert (view["effective"], view["limited_by"]) == (2, "global")
        reset = await api.client.delete("/api/v1/admin/concurrency/backends/slow")
        view = {b["name"]: b for b in reset.json()["backends"]}["slow"]
        assert (view["per_url"], view["overridden"]) == (2, False)

        # `kiln concurrency` writes the database; the running scheduler follows it
        await api.ctx.write(set_setting, backend_concurrency_key("slow"), 5)
        for _ in range(500):
            if (await _backends(api))["slow"]["per_url"] == 5:
                break
            await asyncio.sleep(0.02)
        assert (await _backends(api))["slow"]["per_url"] == 5
    async with make_api() as again:
        assert (await _backends(again))["slow"]["per_url"] == 5  # survives a restart


async def test_stats_and_metrics_describe_the_work(held_api: Api) -> None:
    api = held_api  # its "waiting" batch runs for as long as the test looks
    await api.client.post("/api/v1/batches?wait=true", json=spec("a", "b", "REJECT"))
    await api.client.post("/api/v1/batches", json=spec("waiting", backend="slow"))
    stats = (await api.client.get("/api/v1/admin/stats?days=3")).json()
    assert stats["images_per_day"][-1]["images"] == 2
    assert stats["success_rate"] == round(2 / 3, 4)
    assert stats["tasks"]["failed"] == 1 and stats["active_batches"] == 1
    by_backend = {b["name"]: b for b in stats["backends"]}
    assert by_backend["placeholder"]["succeeded"] == 2
    assert (
        by_backend["placeholder"]["mean_seconds"] is None
        or by_backend["placeholder"]["mean_seconds"] >= 0
    )
    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    text = r.text
    for family in (
        "kiln_queue_depth",
        'kiln_tasks{state="failed"} 1',
        'kiln_task_duration_seconds_bucket{backend="placeholder",le="+Inf"} 2',
        'kiln_task_duration_seconds_count{backend="placeholder"} 2',
        'kiln_backend_failed_tasks_total{backend="placeholder"} 1',
        'kiln_backend_up{backend="slow"} 1',
        "kiln_concurrency 4",
    ):
        assert family in text, family
    buckets = [
        line
        for line in text.splitlines()
        if line.startswith('kiln_task_duration_seconds_bucket{backend="placeholder"')
    ]
    counts = [int(line.rsplit(" ", 1)[1]) for line in buckets]
    assert counts == sorted(counts)  # cumulative


async def test_backends_health_and_openapi(api: Api) -> None:
    backends = (await api.client.get("/api/v1/backends")).json()
    assert [(b["name"], b["type"], b["credits_per_image"]) for b in backends] == [
        ("placeholder", "placeholder", 0),
        ("slow", "placeholder", 0),
    ]
    assert "api_key" not in str(backends)
    # the API knows its backends from the settings; only the scheduler thread builds them
    assert api.ctx.kiln._engine is None and api.ctx.runner is not None
    status = await api.ctx.runner.status()
    assert status is not None and sorted(status.backends) == ["placeholder", "slow"]
    health = (await api.client.get("/healthz")).json()
    assert health["status"] == "ok" and health["version"]
    assert health["scheduler"]["state"] in ("starting", "running")
    assert health["scheduler"]["failing"] == [] and health["scheduler"]["restarts"] == 0
    assert (await api.client.get("/docs")).status_code == 200
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    for path in (
        "/api/v1/batches",
        "/api/v1/batches/upload",
        "/api/v1/batches/import",
        "/api/v1/batches/{batch_id}/events",
        "/api/v1/events",
        "/api/v1/images",
        "/api/v1/presets",
        "/api/v1/admin/concurrency",
        "/api/v1/admin/concurrency/backends/{name}",
        "/api/v1/me/credits",
        "/healthz",
        "/metrics",
    ):
        assert path in paths, path
    create = paths["/api/v1/batches"]["post"]
    assert "422" in create["responses"] and "402" in create["responses"]
    assert (
        "multipart/form-data" in paths["/api/v1/batches/upload"]["post"]["requestBody"]["content"]
    )
