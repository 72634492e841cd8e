"""Every endpoint of the OpenAPI schema, once, against a real `kiln serve` with auth on.

The ASGI tests check each endpoint's behaviour in depth; this one proves the
whole surface works through uvicorn, the body limit and real sockets, and
fails when an endpoint is added without being exercised here.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from test_serve import CONFIG, kiln, serving

SLOW = """
[[backends]]
name = "slow"
type = "placeholder"
concurrency = 1
latency = 5.0  # its batch must still run when pause, resume and cancel reach a loaded server

[auth]
enabled = true

[credits]
enabled = true
per_image = 1
"""
SMALL = {"width": 64, "height": 64}


def png(color: tuple[int, int, int] = (200, 100, 50)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(out, format="PNG")
    return out.getvalue()


class Recorder:
    """Requests as (method, path template) so coverage can be compared with the schema."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.reached: set[tuple[str, str]] = set()

    def call(self, method: str, template: str, expect: int, **kwargs: Any) -> httpx.Response:
        ids = kwargs.pop("ids", {})
        response = self.http.request(method, template.format(**ids), **kwargs)
        assert response.status_code == expect, (method, template, response.text)
        self.reached.add((method.lower(), template))
        return response

    def stream_until(self, template: str, event: str, **ids: Any) -> list[str]:
        """Read an SSE stream until a line ``event: <event>``; the lines read."""
        lines: list[str] = []
        with self.http.stream("GET", template.format(**ids)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                lines.append(line)
                if line == f"event: {event}" or (event == "" and line.startswith("retry:")):
                    break
        self.reached.add(("get", template))
        return lines


def test_every_endpoint_answers_through_a_real_server(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG + SLOW)
    root = kiln(tmp_path, "users", "add", "root", "--admin").stdout.strip()
    alice = kiln(tmp_path, "users", "add", "alice", "--credits", "100").stdout.strip()
    with serving(tmp_path) as url:
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "ok" and health["scheduler"]["state"] in ("starting", "running")
        admin, user = Recorder(url, root), Recorder(url, alice)
        try:
            user.reached.add(("get", "/healthz"))
            _account(admin, user)
            _session(user, alice)
            batch_id, task_ids, image_id = _batches(user)
            _images(user, image_id)
            _control(user, batch_id, task_ids)
            _presets(admin, user)
            _admin(admin)
            schema = admin.call("GET", "/openapi.json", 200).json()
        finally:
            admin.http.close()
            user.http.close()
    expected = {(m, p) for p, ops in schema["paths"].items() for m in ops}
    assert expected - (admin.reached | user.reached) == set()


def _session(user: Recorder, token: str) -> None:
    """A browser's sign-in: the cookie it sets opens the API without the header."""
    signed = user.call("POST", "/api/v1/session", 200, json={"token": token})
    cookie = signed.cookies["kiln_session"]
    me = httpx.get(f"{user.http.base_url}/api/v1/me", cookies={"kiln_session": cookie})
    assert me.json()["name"] == "alice"
    user.call("DELETE", "/api/v1/session", 204)


def _account(admin: Recorder, user: Recorder) -> None:
    assert "kiln_tasks" in admin.call("GET", "/metrics", 200).text
    names = [b["name"] for b in user.call("GET", "/api/v1/backends", 200).json()]
    assert names == ["placeholder", "slow"]
    assert user.call("GET", "/api/v1/me", 200).json()["balance"] == 100
    assert user.call("GET", "/api/v1/me/credits", 200).json()["balance"] == 100
    assert user.call("GET", "/api/v1/me/provider-keys", 200).json() == []
    key = "/api/v1/me/provider-keys/{backend}"
    ids = {"backend": "placeholder"}
    user.call("PUT", key, 422, ids=ids, json={"api_key": "sk-0123456789"})  # local generator
    user.call("DELETE", key, 404, ids=ids)
    secret = user.call("GET", "/api/v1/me/webhook-secret", 200).json()
    rotated = user.call("POST", "/api/v1/me/webhook-secret/rotate", 200).json()
    assert rotated != secret


def _batches(user: Recorder) -> tuple[int, list[int], int]:
    asset = user.call("POST", "/api/v1/assets", 201, files={"files": ("in.png", png())}).json()[0]
    ids = {"asset_id": asset["id"]}
    assert user.call("GET", "/api/v1/assets/{asset_id}/file", 200, ids=ids).content == png()
    assert user.call("GET", "/api/v1/assets/{asset_id}", 200, ids=ids).json()["name"] == "in.png"
    assert [a["id"] for a in user.call("GET", "/api/v1/assets", 200).json()["items"]] == [
        asset["id"]
    ]
    thumb = user.call("GET", "/api/v1/assets/{asset_id}/thumbnail", 200, ids=ids)
    assert thumb.headers["content-type"] == "image/webp"
    template = user.call("GET", "/api/v1/templates/batch.xlsx", 200)
    assert template.content[:2] == b"PK"
    spec = {
        "name": "night",
        "defaults": SMALL,
        "tasks": [
            {"key": "a", "prompt": "a moth", "init_image": asset["ref"]},
            {"key": "r", "prompt": "REJECT this"},
        ],
    }
    made = user.call("POST", "/api/v1/batches", 201, params={"wait": "true"}, json=spec).json()
    assert made["status"] == "partial"
    ids = {"batch_id": made["id"]}  # not a sweep: no contact sheets (docs/sheets.md)
    assert user.call("GET", "/api/v1/batches/{batch_id}/sheets", 200, ids=ids).json() == {
        "sheets": []
    }
    user.call("GET", "/api/v1/batches/{batch_id}/sheet.png", 409, ids=ids)
    uploaded = user.call(
        "POST",
        "/api/v1/batches/upload",
        201,
        files=[("files", ("a.png", png())), ("files", ("b.png", png((1, 2, 3))))],
        data={"prompt": "as a watercolour", **{k: str(v) for k, v in SMALL.items()}},
    ).json()
    assert uploaded["counts"]["total"] == 2
    table = "prompt,key,width,height\na heron,h1,64,64\na crane,c1,64,64\n"
    imported = user.call(
        "POST", "/api/v1/batches/import", 201, files={"file": ("birds.csv", table.encode())}
    ).json()
    assert imported["counts"]["total"] == 2
    listed = user.call("GET", "/api/v1/batches", 200).json()
    assert listed["total"] == 3
    user.call("GET", "/api/v1/batches/active", 200)
    one = {"batch_id": made["id"]}
    detail = user.call("GET", "/api/v1/batches/{batch_id}", 200, ids=one).json()
    assert [t["key"] for t in detail["tasks"]] == ["a", "r"]
    assert user.call("GET", "/api/v1/batches/{batch_id}/log", 200, ids=one).json()
    archive = user.call("GET", "/api/v1/batches/{batch_id}/images.zip", 200, ids=one)
    assert len(zipfile.ZipFile(io.BytesIO(archive.content)).namelist()) == 1
    table_ids = {**one, "kind": "csv"}
    exported = user.call("GET", "/api/v1/batches/{batch_id}/export.{kind}", 200, ids=table_ids)
    assert "a moth" in exported.text
    assert user.call("GET", "/api/v1/batches/{batch_id}/webhooks", 200, ids=one).json() == []
    lines = user.stream_until("/api/v1/batches/{batch_id}/events", "done", **one)
    assert "event: image_generated" in lines
    user.stream_until("/api/v1/events", "")
    image_id = detail["tasks"][0]["images"][0]["id"]
    return made["id"], [t["id"] for t in detail["tasks"]], image_id


def _images(user: Recorder, image_id: int) -> None:
    ids = {"image_id": image_id}
    records = user.call("GET", "/api/v1/images", 200, params={"q": "moth"}).json()
    assert [r["id"] for r in records["items"]] == [image_id]
    assert user.call("GET", "/api/v1/images/{image_id}", 200, ids=ids).json()["id"] == image_id
    assert user.call("GET", "/api/v1/images/{image_id}/file", 200, ids=ids).content[:4] == (
        b"\x89PNG"
    )
    thumb = user.call("GET", "/api/v1/images/{image_id}/thumbnail", 200, ids=ids)
    assert thumb.headers["content-type"] == "image/webp"
    assert user.call("GET", "/api/v1/images/{image_id}/inputs/{n}", 200, ids={**ids, "n": 0})
    made = user.call("POST", "/api/v1/assets/from-image", 200, json={"image_id": image_id})
    assert made.json()["ref"].startswith("asset:")
    rows = [{"prompt": "a moth", "reference_images": [made.json()["ref"]], "n": 2}]
    sheet = user.call("POST", "/api/v1/tables/export", 200, json={"rows": rows}).content
    parsed = user.call("POST", "/api/v1/tables/parse", 200, files={"file": ("t.xlsx", sheet)})
    assert parsed.json()["rows"] == rows
    edit = user.call(
        "POST", "/api/v1/images/{image_id}/edit", 201, ids=ids, json={"prompt": "at night"}
    )
    assert edit.json()["counts"]["total"] == 1
    user.call("DELETE", "/api/v1/images/{image_id}", 204, ids=ids)


def _control(user: Recorder, batch_id: int, task_ids: list[int]) -> None:
    task = {"task_id": task_ids[1]}
    assert user.call("GET", "/api/v1/tasks/{task_id}", 200, ids=task).json()["status"] == "failed"
    assert user.call("GET", "/api/v1/tasks/{task_id}/references", 200, ids=task).json() == []
    user.call("POST", "/api/v1/tasks/{task_id}/retry", 200, ids=task)
    _until_failed_again(user, task["task_id"])  # the batch retry needs a failed task
    user.call("POST", "/api/v1/batches/{batch_id}/retry", 200, ids={"batch_id": batch_id})
    _until_failed_again(user, task["task_id"])  # a regenerate needs finished tasks
    again = user.call(
        "POST",
        "/api/v1/batches/{batch_id}/regenerate",
        200,
        ids={"batch_id": batch_id},
        json={"keys": ["a"]},
    )
    assert again.json()["regenerated"] == 1
    spec = {
        "name": "slow",
        "defaults": {**SMALL, "backend": "slow"},
        "tasks": [{"prompt": "x"}] * 6,
    }
    slow = {"batch_id": user.call("POST", "/api/v1/batches", 201, json=spec).json()["id"]}
    user.call("POST", "/api/v1/batches/{batch_id}/pause", 200, ids=slow)
    queued = [b["id"] for b in user.call("GET", "/api/v1/queue", 200).json()["items"]]
    assert slow["batch_id"] in queued
    user.call("PUT", "/api/v1/queue", 200, json={"batch_ids": [slow["batch_id"]]})
    user.call("POST", "/api/v1/batches/{batch_id}/resume", 200, ids=slow)
    cancelled = user.call("POST", "/api/v1/batches/{batch_id}/cancel", 200, ids=slow).json()
    assert cancelled["status"] == "cancelled"
    user.call("DELETE", "/api/v1/batches/{batch_id}", 204, ids=slow)
    user.call("GET", "/api/v1/batches/{batch_id}", 404, ids=slow)


def _until_failed_again(user: Recorder, task_id: int) -> None:
    """Wait for a retried task to be rejected again: a deadline, not a timing assertion."""
    deadline = time.monotonic() + 60
    while user.http.get(f"/api/v1/tasks/{task_id}").json()["status"] != "failed":
        assert time.monotonic() < deadline, f"task {task_id} was not rejected again"
        time.sleep(0.05)


def _presets(admin: Recorder, user: Recorder) -> None:
    body = {"title": "Noir", "content": "{prompt}, film noir", "category": "style"}
    made = admin.call("POST", "/api/v1/presets", 201, json=body).json()
    second = admin.call("POST", "/api/v1/presets", 201, json={**body, "title": "Pop"}).json()
    ids = {"preset_id": made["id"]}
    assert [p["title"] for p in user.call("GET", "/api/v1/presets", 200).json()] == ["Noir", "Pop"]
    assert user.call("GET", "/api/v1/presets/{preset_id}", 200, ids=ids).json()["title"] == "Noir"
    admin.call("PATCH", "/api/v1/presets/{preset_id}", 200, ids=ids, json={"title": "Noir 2"})
    admin.call("POST", "/api/v1/presets/reorder", 200, json={"ids": [second["id"], made["id"]]})
    assert [p["title"] for p in user.call("GET", "/api/v1/presets", 200).json()] == [
        "Pop",
        "Noir 2",
    ]
    admin.call("DELETE", "/api/v1/presets/{preset_id}", 204, ids=ids)


def _admin(admin: Recorder) -> None:
    assert len(admin.call("GET", "/api/v1/admin/users", 200).json()) == 2
    bob = admin.call("POST", "/api/v1/admin/users", 201, json={"name": "bob"}).json()
    ids = {"user_id": bob["id"]}
    admin.call("PATCH", "/api/v1/admin/users/{user_id}", 200, ids=ids, json={"active": False})
    admin.call("POST", "/api/v1/admin/users/{user_id}/tokens", 201, ids=ids)
    admin.call("DELETE", "/api/v1/admin/users/{user_id}/tokens", 204, ids=ids)
    admin.call("POST", "/api/v1/admin/users/{user_id}/credits", 200, ids=ids, json={"amount": 5})
    assert admin.call("GET", "/api/v1/admin/concurrency", 200).json()
    admin.call("PUT", "/api/v1/admin/concurrency", 200, json={"concurrency": 3})
    assert admin.call("GET", "/api/v1/admin/concurrency", 200).json()["concurrency"] == 3
    admin.call("DELETE", "/api/v1/admin/concurrency", 200)
    health = admin.call("GET", "/api/v1/admin/backends/health", 200).json()
    assert {"placeholder", "slow"} <= {b["name"] for b in health["backends"]}
    slow = {"name": "slow"}
    path = "/api/v1/admin/concurrency/backends/{name}"
    raised = admin.call("PUT", path, 200, ids=slow, json={"concurrency": 2}).json()
    view = {b["name"]: b for b in raised["backends"]}["slow"]
    assert (view["per_url"], view["effective"], view["limited_by"]) == (2, 2, "backend")
    reset = admin.call("DELETE", path, 200, ids=slow).json()
    assert {b["name"]: b for b in reset["backends"]}["slow"]["per_url"] == 1
    assert admin.call("GET", "/api/v1/admin/batches", 200).json()["total"] >= 4
    assert "queue_depth" in admin.call("GET", "/api/v1/admin/stats", 200).json()
