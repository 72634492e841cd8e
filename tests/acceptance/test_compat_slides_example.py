"""The slide API called with the example body of docs/compat.md, against `kiln serve`.

Five slides, ``max_workers: 3``, ``16:9``: the answer has the documented shape
with five results, the fake WebUI never has more than three of them in
progress, and a status call made while it holds them reports progress and an
estimated remaining time.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_compat_img2img_session import until
from test_serve import kiln, serving

from pixelkiln.testing import FakeSDWebUI

DOC = Path(__file__).resolve().parents[2] / "docs" / "compat.md"
CONFIG = """
[[backends]]
name = "webui"
type = "sdwebui"
urls = ["{url}"]
concurrency = 5            # the backend would take all five slides at once

[scheduler]
concurrency = 8
poll_interval = 0.05

[auth]
enabled = true

[compat]
slides = true
"""


def documented_body() -> dict[str, Any]:
    """The example request body of docs/compat.md's slide API section."""
    section = DOC.read_text().split("## The slide-deck image API", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "docs/compat.md shows no example body for the slide API"
    body: dict[str, Any] = json.loads(block.group(1))
    return body


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, httpx.Client, FakeSDWebUI]]:
    with FakeSDWebUI() as webui:
        (tmp_path / "kiln.toml").write_text(CONFIG.format(url=webui.url))
        added = kiln(tmp_path, "users", "add", "deck")
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip()
        with serving(tmp_path) as url:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                yield url, client, webui


def test_the_documented_example_runs_three_at_a_time_with_progress(
    served: tuple[str, httpx.Client, FakeSDWebUI],
) -> None:
    url, client, webui = served
    body = documented_body()
    assert (len(body["slides"]), body["max_workers"], body["aspect_ratio"]) == (5, 3, "16:9")
    webui.hold()
    answer: dict[str, httpx.Response] = {}
    caller = threading.Thread(
        target=lambda: answer.setdefault(
            "r", client.post("/api/slide/batch/generate", json=body, timeout=120)
        )
    )
    caller.start()
    try:
        batch_id = _progress_while_held(client, webui)
    finally:
        webui.release()
        caller.join(120)
    done = answer["r"]
    assert done.status_code == 200, done.text
    _check_documented_shape(done.json(), body, batch_id, url, client)
    sizes = {(r.json()["width"], r.json()["height"]) for r in webui.received("/sdapi/v1/txt2img")}
    assert sizes == {(1344, 768)}  # 16:9 at 1K
    final = client.post("/api/slide/batch/status", json={"batch_id": batch_id}).json()
    assert (final["status"], final["progress"], final["estimated_remaining_time"]) == (
        "completed",
        1.0,
        None,
    )
    assert client.get("/api/slide/batch/active-count").json() == {"active_batches": 0}


def _progress_while_held(client: httpx.Client, webui: FakeSDWebUI) -> str:
    """Three slides held in progress; releasing one lets exactly one more start."""
    until(lambda: webui.held == 3, "three slides in progress")
    assert client.get("/api/slide/batch/active-count").json() == {"active_batches": 1}
    batch_id = str(client.get("/api/v1/batches").json()["items"][0]["id"])
    start = client.post("/api/slide/batch/status", json={"batch_id": batch_id}).json()
    assert (start["status"], start["progress"], start["completed_slides"]) == ("processing", 0, 0)
    assert len(webui.received("/sdapi/v1/txt2img")) == 3  # the other two wait for a worker
    for finished in (1, 2):
        webui.release(1)
        until(lambda n=finished: _done(client, batch_id) == n, f"{finished} slide(s) done")
        until(lambda n=finished: webui.held == min(3, 5 - n), "the next slide to start")
        assert webui.held <= 3 and len(webui.received("/sdapi/v1/txt2img")) == 3 + finished
    mid = client.post("/api/slide/batch/status", json={"batch_id": batch_id}).json()
    assert (mid["progress"], mid["completed_slides"], mid["total_slides"]) == (0.4, 2, 5)
    assert mid["estimated_remaining_time"] > 0
    assert [r["status"] for r in mid["results"]].count("done") == 2
    return batch_id


def _done(client: httpx.Client, batch_id: str) -> int:
    status = client.post("/api/slide/batch/status", json={"batch_id": batch_id}).json()
    done: int = status["completed_slides"]
    return done


def _check_documented_shape(
    done: dict[str, Any], body: dict[str, Any], batch_id: str, url: str, client: httpx.Client
) -> None:
    assert done["batch_id"] == batch_id
    assert (done["total_slides"], done["successful"], done["failed"]) == (5, 5, 0)
    assert done["total_time"] > 0
    results = done["results"]
    assert [r["slide_id"] for r in results] == [s["id"] for s in body["slides"]]
    for result, slide in zip(results, body["slides"], strict=True):
        assert set(result) == {
            "slide_id",
            "page_num",
            "title",
            "image_url",
            "final_prompt",
            "status",
            "error_message",
            "generation_time",
        }
        assert (result["page_num"], result["title"], result["status"]) == (
            slide["page_num"],
            slide["title"],
            "done",
        )
        style, title, visual = body["style_prompt"], slide["title"], slide["visual_desc"]
        assert result["final_prompt"] == f"{style}. {title}: {visual}"
        assert result["error_message"] is None and result["generation_time"] >= 0
        assert result["image_url"].startswith(f"{url}/api/v1/images/")
    png = client.get(results[0]["image_url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    batch = client.get(f"/api/v1/batches/{batch_id}").json()  # an ordinary batch
    assert (batch["max_workers"], batch["status"]) == (3, "completed")
