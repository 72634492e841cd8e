"""The img2img service's front end, as its API documents it, against `kiln serve`.

A whole session in the service's own shapes (docs/compat.md): a user creates a
batch of 12 uploads, polls the queue, retries the task that failed, cancels
another batch and lists presets; an admin sets the concurrency to 5 and reads it
back, adds and deletes a preset and reads the stats; credits follow the
service's policy (`refund_failed = false`). `kiln serve` runs as a
subprocess; the generator is a fake WebUI on loopback.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from test_serve import kiln, serving

from pixelkiln.testing import FakeSDWebUI

CONFIG = """
[[backends]]
name = "webui"
type = "sdwebui"
urls = ["{url}"]
concurrency = 4

[scheduler]
poll_interval = 0.05
retry_base_delay = 0.01
retry_max_delay = 0.05

[auth]
enabled = true

[credits]
enabled = true
per_image = 1
refund_failed = false      # the service's policy: failures stay charged, cancels are refunded

[compat]
img2img_service = true
"""


def photo(i: int) -> bytes:
    """Photos of several shapes, as a user's folder holds them."""
    size = [(96, 64), (64, 96), (80, 80)][i % 3]
    out = io.BytesIO()
    Image.new("RGB", size, (20 * i, 100, 50)).save(out, format="PNG")
    return out.getvalue()


def files(count: int, prefix: str = "photo") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{prefix}_{i:02d}.png", photo(i), "image/png")) for i in range(count)]


def until(check: Any, what: str, timeout: float = 60) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def webui() -> Iterator[FakeSDWebUI]:
    with FakeSDWebUI() as server:
        yield server


@pytest.fixture
def served(tmp_path: Path, webui: FakeSDWebUI) -> Iterator[tuple[str, dict[str, str]]]:
    """`kiln serve` with the img2img service's API on; tokens of alice and an admin."""
    (tmp_path / "kiln.toml").write_text(CONFIG.format(url=webui.url))
    tokens = {}
    for name, extra in (("alice", ["--credits", "100"]), ("root", ["--admin"])):
        added = kiln(tmp_path, "users", "add", name, *extra)
        assert added.returncode == 0, added.stderr
        tokens[name] = added.stdout.strip()
    with serving(tmp_path) as url:
        yield url, tokens


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _queue(client: httpx.Client, queue_id: int) -> dict[str, Any]:
    body = client.get(f"/api/batch/queue/{queue_id}").json()
    assert body["success"] is True, body
    data: dict[str, Any] = body["data"]
    return data


def _ended(client: httpx.Client, queue_id: int) -> dict[str, Any] | None:
    data = _queue(client, queue_id)
    busy = {"pending", "processing"}
    return None if data["queue"]["status"] in busy else data


def test_a_whole_session_of_the_img2img_front_end(
    served: tuple[str, dict[str, str]], webui: FakeSDWebUI
) -> None:
    url, tokens = served
    with _client(url, tokens["alice"]) as alice, _client(url, tokens["root"]) as root:
        queue_id = _create_twelve_with_one_failing(alice, webui)
        _retry_the_failed_task(alice, queue_id)
        other = _cancel_another_batch(alice, webui)
        _list_queues_and_presets(alice, queue_id, other)
        _admin_session(root, alice)
        refused = alice.get("/api/admin/batch/stats")
        assert refused.status_code == 403 and refused.json()["success"] is False
        anonymous = httpx.get(f"{url}/api/batch/queues")
        assert anonymous.status_code == 401
        assert anonymous.json()["success"] is False
        # an ordinary batch: /api/v1 sees it under the same id
        assert alice.get(f"/api/v1/batches/{queue_id}").json()["counts"]["succeeded"] == 12
        # 100 - 12 (create; the failure kept its charge) - 1 (retry) - 3 + 3 (cancel refunded)
        assert alice.get("/api/v1/me").json()["balance"] == 87


def _create_twelve_with_one_failing(alice: httpx.Client, webui: FakeSDWebUI) -> int:
    webui.faults.fail_next(400)  # the first generation fails for good (a 4xx is not retried)
    created = alice.post(
        "/api/batch/create",
        data={"prompt": "in watercolour", "model": "webui", "batchName": "holiday"},
        files=files(12),
    )
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["success"] is True
    assert (body["totalImages"], body["usedUserKey"]) == (12, False)
    queue_id: int = body["queueId"]
    data = until(lambda: _ended(alice, queue_id), "the first batch to end")
    queue, tasks = data["queue"], data["tasks"]
    assert (queue["batch_name"], queue["prompt"], queue["total_images"]) == (
        "holiday",
        "in watercolour",
        12,
    )
    assert (queue["completed_images"], queue["failed_images"], queue["status"]) == (
        11,
        1,
        "completed",
    )
    names = sorted(t["original_filename"] for t in tasks)
    assert names == [f"photo_{i:02d}.png" for i in range(12)]
    failed = [t for t in tasks if t["status"] == "failed"]
    assert (
        len(failed) == 1 and failed[0]["error_message"] and failed[0]["generated_image_url"] is None
    )
    done = next(t for t in tasks if t["status"] == "completed")
    png = alice.get(done["generated_image_url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert alice.get(done["original_image_url"]).content.startswith(b"\x89PNG")
    assert len(webui.received("/sdapi/v1/img2img")) == 12
    return queue_id


def _retry_the_failed_task(alice: httpx.Client, queue_id: int) -> None:
    failed = next(t for t in _queue(alice, queue_id)["tasks"] if t["status"] == "failed")
    retried = alice.post(f"/api/batch/task/{failed['id']}/retry")
    assert retried.status_code == 200 and retried.json()["success"] is True
    data = until(
        lambda: (d := _ended(alice, queue_id)) and d["queue"]["failed_images"] == 0 and d,
        "the retried task to succeed",
    )
    assert data["queue"]["completed_images"] == 12
    again = alice.post(f"/api/batch/task/{failed['id']}/retry")  # nothing failed any more
    assert again.status_code == 409 and again.json()["success"] is False


def _cancel_another_batch(alice: httpx.Client, webui: FakeSDWebUI) -> int:
    webui.hold()  # its generations stay in progress until the cancel
    try:
        created = alice.post(
            "/api/batch/create",
            data={"prompt": "as a sketch", "model": "webui"},
            files=files(3, "scan"),
        ).json()
        other: int = created["queueId"]
        until(lambda: webui.held > 0, "a generation of the second batch to start")
        cancelled = alice.post(f"/api/batch/queue/{other}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["success"] is True
    finally:
        webui.release()
    data = until(lambda: _ended(alice, other), "the cancelled batch to end")
    assert data["queue"]["status"] == "cancelled"
    assert {t["status"] for t in data["tasks"]} == {"failed"}  # as the service marks them
    assert all(t["error_message"] for t in data["tasks"])
    return other


def _list_queues_and_presets(alice: httpx.Client, queue_id: int, other: int) -> None:
    listed = alice.get("/api/batch/queues", params={"limit": 1}).json()
    assert listed["success"] is True and [q["id"] for q in listed["data"]] == [other]
    both = alice.get("/api/batch/queues").json()["data"]
    assert [q["id"] for q in both] == [other, queue_id]
    presets = alice.get("/api/batch/presets").json()
    assert presets == {"success": True, "data": []}


def _admin_session(root: httpx.Client, alice: httpx.Client) -> None:
    changed = root.post("/api/admin/config/concurrency", json={"concurrency": 5})
    assert changed.status_code == 200 and changed.json()["success"] is True
    read = root.get("/api/admin/config/concurrency").json()
    assert read == {"success": True, "data": {"concurrency": 5}}
    assert root.get("/api/v1/admin/concurrency").json()["concurrency"] == 5
    too_many = root.post("/api/admin/config/concurrency", json={"concurrency": 11})
    assert too_many.status_code == 422 and too_many.json()["success"] is False

    added = root.post(
        "/api/admin/presets",
        json={"title": "Ink", "content": "ink drawing, {prompt}", "category": "style"},
    )
    assert added.status_code == 200 and added.json()["success"] is True
    preset = added.json()["data"]
    shown = alice.get("/api/batch/presets").json()["data"]
    assert [(p["id"], p["title"], p["category"]) for p in shown] == [(preset["id"], "Ink", "style")]
    gone = root.delete(f"/api/admin/presets/{preset['id']}")
    assert gone.status_code == 200 and gone.json()["success"] is True
    assert root.get("/api/admin/presets").json() == {"success": True, "data": []}

    stats = root.get("/api/admin/batch/stats").json()["data"]
    assert (stats["total_queues"], stats["completed_queues"], stats["cancelled_queues"]) == (
        2,
        1,
        1,
    )
    assert (stats["total_images"], stats["completed_images"]) == (15, 12)
    queues = root.get("/api/admin/batch/queues").json()["data"]
    assert {q["username"] for q in queues} == {"alice"}
