"""Bearer tokens: who may call what, and nobody sees anyone else's batches."""

from __future__ import annotations

import asyncio

import pytest
from apikit import Api, png_bytes, spec
from sqlalchemy import select

from pixelkiln.db.tables import api_tokens

pytestmark = pytest.mark.anyio

EVERY_USER_ROUTE = [
    ("GET", "/api/v1/batches"),
    ("POST", "/api/v1/batches"),
    ("GET", "/api/v1/batches/1"),
    ("GET", "/api/v1/batches/active"),
    ("POST", "/api/v1/batches/1/cancel"),
    ("GET", "/api/v1/images"),
    ("GET", "/api/v1/images/1/file"),
    ("GET", "/api/v1/tasks/1"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/batches/1/events"),
    ("GET", "/api/v1/presets"),
    ("POST", "/api/v1/assets"),
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/admin/stats"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/backends"),
    ("GET", "/api/v1/batches/1/images.zip"),
    ("GET", "/openapi.json"),
]


async def test_every_route_but_healthz_needs_a_valid_token(auth_api: Api) -> None:
    stranger = auth_api.with_token("pk_made-up")
    for method, path in EVERY_USER_ROUTE:
        for client in (auth_api.client, stranger):
            r = await client.request(method, path)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
    basic = await auth_api.client.get("/api/v1/batches", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    health = await auth_api.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_tokens_are_stored_hashed_and_shown_once(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    made = await admin.post("/api/v1/admin/users", json={"name": "carol", "credits": 5})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert token.startswith("pk_") and len(token) > 40
    hashes = await auth_api.ctx.read(lambda c: list(c.execute(select(api_tokens)).all()))
    assert all(token not in str(tuple(row)) for row in hashes)
    me = await auth_api.with_token(token).get("/api/v1/me")
    assert me.json()["name"] == "carol" and me.json()["balance"] == 5
    listed = (await admin.get("/api/v1/admin/users")).json()
    assert {u["name"]: u["balance"] for u in listed} == {"carol": 5, "root": 0}
    assert all("token" not in u for u in listed)
    again = await admin.post(f"/api/v1/admin/users/{me.json()['id']}/tokens")
    assert again.json()["token"] != token
    assert (await auth_api.with_token(again.json()["token"]).get("/api/v1/me")).status_code == 200
    taken = await admin.post("/api/v1/admin/users", json={"name": "carol"})
    assert taken.status_code == 409


async def test_a_disabled_user_is_locked_out(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    dave_id, dave = await auth_api.add_user("dave")
    assert (await dave.get("/api/v1/me")).status_code == 200
    off = await admin.patch(f"/api/v1/admin/users/{dave_id}", json={"active": False})
    assert off.status_code == 200 and off.json()["active"] is False
    assert (await dave.get("/api/v1/me")).status_code == 401


async def test_nobody_sees_or_touches_anyone_elses_batch(auth_api: Api) -> None:
    _, alice = await auth_api.add_user("alice", credits=100)
    _, bob = await auth_api.add_user("bob", credits=100)
    _, admin = await auth_api.add_user("root", admin=True)
    batch = (await alice.post("/api/v1/batches?wait=true", json=spec("mine", "REJECT"))).json()
    task_id = batch["tasks"][0]["id"]
    image_id = batch["tasks"][0]["images"][0]["id"]
    b = batch["id"]
    for method, path in [
        ("GET", f"/api/v1/batches/{b}"),
        ("POST", f"/api/v1/batches/{b}/cancel"),
        ("POST", f"/api/v1/batches/{b}/retry"),
        ("POST", f"/api/v1/batches/{b}/pause"),
        ("DELETE", f"/api/v1/batches/{b}"),
        ("GET", f"/api/v1/batches/{b}/events"),
        ("GET", f"/api/v1/batches/{b}/log"),
        ("GET", f"/api/v1/batches/{b}/images.zip"),
        ("GET", f"/api/v1/tasks/{task_id}"),
        ("POST", f"/api/v1/tasks/{task_id}/retry"),
        ("GET", f"/api/v1/images/{image_id}"),
        ("GET", f"/api/v1/images/{image_id}/file"),
        ("GET", f"/api/v1/images/{image_id}/thumbnail"),
        ("DELETE", f"/api/v1/images/{image_id}"),
        ("GET", f"/api/v1/images/{image_id}/inputs/0"),
        ("POST", f"/api/v1/images/{image_id}/edit"),
    ]:
        body = {"prompt": "x"} if path.endswith("/edit") else None
        r = await bob.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert (await bob.get("/api/v1/batches")).json()["total"] == 0
    assert (await bob.get("/api/v1/images")).json()["total"] == 0
    assert (await bob.get("/api/v1/batches/active")).json()["active"] == 0
    # the owner and an admin still reach it
    assert (await alice.get(f"/api/v1/batches/{b}")).status_code == 200
    assert (await admin.get(f"/api/v1/batches/{b}")).status_code == 200
    every = (await admin.get("/api/v1/admin/batches")).json()
    assert [x["id"] for x in every["items"]] == [b]
    assert (await admin.get("/api/v1/batches")).json()["total"] == 0  # "my" list is the admin's


async def test_admin_routes_need_an_admin(auth_api: Api) -> None:
    _, user = await auth_api.add_user("erin")
    for method, path, body in [
        ("GET", "/api/v1/admin/users", None),
        ("POST", "/api/v1/admin/users", {"name": "x"}),
        ("POST", "/api/v1/admin/users/1/credits", {"amount": 5}),
        ("GET", "/api/v1/admin/concurrency", None),
        ("PUT", "/api/v1/admin/concurrency", {"concurrency": 2}),
        ("GET", "/api/v1/admin/batches", None),
        ("GET", "/api/v1/admin/stats", None),
        ("POST", "/api/v1/presets", {"title": "t", "content": "c"}),
        ("PATCH", "/api/v1/presets/1", {"title": "t"}),
        ("DELETE", "/api/v1/presets/1", None),
        ("POST", "/api/v1/presets/reorder", {"ids": [1]}),
    ]:
        r = await user.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "forbidden"


async def test_users_only_hear_their_own_events(auth_api: Api) -> None:
    from pixelkiln.api.deps import Caller
    from pixelkiln.api.sse import FrameCache, StreamScope, event_stream
    from pixelkiln.db.users import get_user

    alice_id, alice = await auth_api.add_user("alice", credits=10)
    _, bob = await auth_api.add_user("bob", credits=10)
    user = await auth_api.ctx.read(get_user, alice_id)
    scope = StreamScope(None, Caller(user).mine, end_when_done=False)
    stream = event_stream(auth_api.ctx, FrameCache(), scope, 0, heartbeat=0.05)
    assert (await anext(stream)).startswith(b"retry:")
    await bob.post("/api/v1/batches?wait=true", json=spec("bob's"))
    mine = (await alice.post("/api/v1/batches?wait=true", json=spec("alice's"))).json()
    frames = []
    async with asyncio.timeout(10):
        while not frames or b"event: done" not in frames[-1]:
            frame = await anext(stream)
            if not frame.startswith(b":"):
                frames.append(frame)
    await stream.aclose()
    assert all(f'"batch_id":{mine["id"]}'.encode() in f for f in frames)


async def test_uploads_and_presets_work_for_plain_users(auth_api: Api) -> None:
    _, user = await auth_api.add_user("gina", credits=3)
    r = await user.post("/api/v1/assets", files={"files": ("a.png", png_bytes())})
    assert r.status_code == 201
    assert (await user.get("/api/v1/presets")).json() == []


async def test_users_cannot_jump_the_queue_or_buy_extra_attempts(auth_api: Api) -> None:
    _, user = await auth_api.add_user("ivy", credits=10)
    _, admin = await auth_api.add_user("boss", admin=True, credits=10)
    limit = auth_api.settings.scheduler.max_attempts
    greedy = {**spec("a"), "priority": 5, "max_attempts": limit + 1}
    r = await user.post("/api/v1/batches", json=greedy)
    assert r.status_code == 422
    assert sorted(p["field"] for p in r.json()["error"]["problems"]) == ["max_attempts", "priority"]
    assert (await user.get("/api/v1/batches")).json()["total"] == 0
    modest = {**spec("a"), "priority": -3, "max_attempts": limit}
    assert (await user.post("/api/v1/batches", json=modest)).status_code == 201
    assert (await admin.post("/api/v1/batches", json=greedy)).status_code == 201


async def test_with_auth_on_the_schema_needs_a_token_and_metrics_an_admin(auth_api: Api) -> None:
    _, user = await auth_api.add_user("jo")
    _, admin = await auth_api.add_user("boss", admin=True)
    assert (await auth_api.client.get("/docs")).status_code == 404  # no page to fetch it from
    schema = await user.get("/openapi.json")
    assert schema.status_code == 200 and "/api/v1/batches" in schema.json()["paths"]
    assert (await user.get("/metrics")).status_code == 403  # counts of every user's work
    assert "kiln_tasks" in (await admin.get("/metrics")).text


async def test_an_admin_revokes_every_token_of_a_user(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    kim_id, kim = await auth_api.add_user("kim")
    assert (await kim.get("/api/v1/me")).status_code == 200
    assert (await kim.delete(f"/api/v1/admin/users/{kim_id}/tokens")).status_code == 403
    assert (await admin.delete(f"/api/v1/admin/users/{kim_id}/tokens")).status_code == 204
    assert (await kim.get("/api/v1/me")).status_code == 401
    fresh = (await admin.post(f"/api/v1/admin/users/{kim_id}/tokens")).json()["token"]
    assert (await auth_api.with_token(fresh).get("/api/v1/me")).status_code == 200
    assert (await admin.delete("/api/v1/admin/users/999/tokens")).status_code == 404
