"""A batch's page (``/batches/{id}``): progress to 100 %, pages of tasks, the ZIP, pause /
resume / cancel / retry, per-task retry, "edit" an image, "send to Generate"; and another
user's batch is "not found"."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Browse, Server, axe

#: prompts with this in them fail on the placeholder backend (conftest CONFIG)
FAIL = "[fail]"
SMALL = {"width": 256, "height": 256}  # quick to draw and to thumbnail


def create(server: Server, user: str, tasks: list[dict[str, Any]], name: str = "b") -> int:
    with server.api(user) as api:
        made = api.post("/batches", json={"name": name, "tasks": tasks})
    assert made.status_code == 201, made.text
    batch_id: int = made.json()["id"]
    return batch_id


def row(page: Page, key: str) -> Any:
    return page.locator("#bd-rows tr").filter(has=page.get_by_role("cell", name=key, exact=True))


def test_progress_reaches_100_percent_pages_of_tasks_and_the_zip(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    tasks = [{"prompt": f"tile {i}", "key": f"t{i:02d}", **SMALL} for i in range(55)]
    batch_id = create(server, "alice", tasks, name="fifty-five tiles")
    page, _ = browse("alice")
    page.goto(f"/batches/{batch_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("fifty-five tiles")
    expect(page.locator("#bd-percent")).to_have_text("100 %", timeout=30_000)
    expect(page.locator("#bd-status .badge")).to_have_text("completed")
    expect(page.locator("#bd-said")).to_contain_text("Finished in")
    expect(page.locator('dd[data-count="images"]')).to_have_text("55")
    expect(page.locator("#bd-rows tr")).to_have_count(50)
    expect(page.locator("#bd-range")).to_have_text("Tasks 1–50 of 55")
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    expect(page.get_by_role("button", name="Cancel batch")).to_be_hidden()
    axe(page)
    shot(page, "batch-completed")

    page.get_by_role("button", name="Next").click()
    expect(page.locator("#bd-range")).to_have_text("Tasks 51–55 of 55")
    expect(page.locator("#bd-rows tr")).to_have_count(5)
    expect(row(page, "t54").locator("figure img")).to_have_count(1)
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    page.get_by_role("button", name="Previous").click()
    expect(page.locator("#bd-range")).to_have_text("Tasks 1–50 of 55")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download images (ZIP)").click()
    assert download.value.suggested_filename == f"batch-{batch_id}.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        names = archive.namelist()
        assert len(names) == 55 and all(n.endswith(".png") for n in names)
        assert all(archive.read(n).startswith(b"\x89PNG\r\n\x1a\n") for n in names[:5])


def test_pause_resume_cancel_and_retry_a_running_batch(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    tasks = [{"prompt": f"slow {i}", "key": f"s{i:02d}", **SMALL} for i in range(30)]
    batch_id = create(server, "alice", [{**t, "backend": "slowpoke"} for t in tasks])
    page, _ = browse("alice")
    page.goto(f"/batches/{batch_id}")
    status = page.locator("#bd-status .badge")
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    page.get_by_role("button", name="Pause").click()
    expect(status).to_have_text("paused")
    expect(page.get_by_role("button", name="Resume")).to_be_focused()
    expect(page.locator("#bd-said")).to_contain_text("Paused")
    with server.api("alice") as api:
        assert api.get(f"/batches/{batch_id}").json()["status"] == "paused"
    shot(page, "batch-paused")

    page.get_by_role("button", name="Resume").click()
    expect(status).to_have_text("running")
    page.get_by_role("button", name="Cancel batch").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("Cancel the batch")
    dialog.get_by_role("button", name="Cancel batch").click()
    expect(status).to_have_text(re.compile("cancelled|partial"))
    cancelled = int(page.locator('dd[data-count="cancelled"]').inner_text())
    assert cancelled > 0
    axe(page)

    # one cancelled task again, from its row; then every other one
    first = page.locator('#bd-rows tr[data-status="cancelled"]').first
    key = first.locator("td.key").inner_text()
    first.get_by_role("button", name=f"Retry task {key}").click()
    expect(row(page, key).locator(".badge")).to_have_text("succeeded", timeout=20_000)
    expect(row(page, key).locator("figure img")).to_have_count(1)
    page.get_by_role("button", name="Retry cancelled").click()
    expect(page.get_by_text(f"{cancelled - 1} task(s) back in the queue")).to_be_visible()
    expect(status).to_have_text("completed", timeout=30_000)
    expect(page.locator("#bd-percent")).to_have_text("100 %")
    expect(page.locator('dd[data-count="succeeded"]')).to_have_text("30")


def test_retry_failed_tasks_on_a_phone_in_dark(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    batch_id = create(
        server,
        "alice",
        [{"prompt": "fine", "key": "ok", **SMALL}, {"prompt": f"{FAIL} no", "key": "bad", **SMALL}],
    )
    server.wait_batch("alice", batch_id)
    with server.api("alice") as api:
        before = api.get(f"/batches/{batch_id}").json()["tasks"][1]
    page, _ = browse("alice", color_scheme="dark", viewport={"width": 360, "height": 780})
    page.goto(f"/batches/{batch_id}")
    expect(page.locator("#bd-status .badge")).to_have_text("partial")
    bad = row(page, "bad")
    expect(bad.locator(".badge")).to_have_text("failed")
    expect(bad.locator("td.error")).to_contain_text("rejects prompts containing")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360  # table scrolls
    axe(page)
    shot(page, "batch-phone-dark")
    page.get_by_label("Show tasks").select_option("failed")
    expect(page.locator("#bd-rows tr")).to_have_count(1)
    page.get_by_role("button", name="Retry failed").click()
    expect(page.get_by_text("1 task(s) back in the queue")).to_be_visible()
    server.wait_batch("alice", batch_id)
    with server.api("alice") as api:
        after = api.get(f"/batches/{batch_id}").json()["tasks"][1]
    assert after["status"] == "failed" and after["finished_at"] > before["finished_at"]
    expect(page.locator("#bd-status .badge")).to_have_text("partial")
    expect(bad.get_by_role("button", name="Retry task bad")).to_be_visible()


def test_edit_an_image_and_send_a_task_to_generate(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    batch_id = create(server, "alice", [{"prompt": "a green pear", "key": "pear", **SMALL}])
    server.wait_batch("alice", batch_id)
    page, _ = browse("alice")
    page.goto(f"/batches/{batch_id}")
    pear = row(page, "pear")
    original = pear.locator("figure").first
    expect(original).to_be_visible()
    image_id = int(original.get_attribute("data-image-id") or 0)

    pear.get_by_role("button", name=f"Edit image #{image_id} with a new prompt").click()
    dialog = page.get_by_role("dialog", name="Edit an image: new prompt")
    dialog.get_by_label("New prompt").fill("a golden pear")
    dialog.get_by_label("Strength (denoise, 0–1)").fill("0.5")
    shot(page, "batch-edit-dialog")
    dialog.get_by_role("button", name="Make the edit").click()
    edits = page.get_by_role("region", name="Edits of this batch's images")
    edit = edits.locator("section.result")
    expect(edit.locator(".badge")).to_have_text("completed")
    expect(edit.locator("figure img")).to_have_count(1)
    new_batch = int(edit.get_attribute("data-batch-id") or 0)
    assert new_batch != batch_id
    expect(edit.get_by_role("link", name="Open batch")).to_have_attribute(
        "href", f"/batches/{new_batch}"
    )
    expect(pear.locator(f'figure[data-image-id="{image_id}"]')).to_be_visible()  # kept
    with server.api("alice") as api:
        assert api.get(f"/images/{image_id}").status_code == 200
        made = api.get("/images", params={"batch_id": new_batch}).json()["items"]
    assert made[0]["prompt"] == "a golden pear"
    assert [i["role"] for i in made[0]["inputs"]] == ["init_image"]
    axe(page)
    shot(page, "batch-edited")

    pear.get_by_role("link", name="Send task pear to Generate").click()
    expect(page).to_have_url(re.compile(r"/\?from_task=\d+$"))
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a green pear")


def test_another_users_batch_or_a_bad_id_is_not_found(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    batch_id = create(server, "alice", [{"prompt": "alice only", **SMALL}])
    page, watch = browse("bob")
    watch.allow(r"status of 404")
    page.goto(f"/batches/{batch_id}")
    expect(page.get_by_role("heading", name="Batch not found")).to_be_visible()
    expect(page.get_by_text("alice only")).to_have_count(0)
    axe(page)
    shot(page, "batch-not-found")
    page.goto("/batches/not-a-number")
    expect(page.get_by_role("heading", name="Batch not found")).to_be_visible()

    page, watch = browse("bob", locale="zh-CN")
    watch.allow(r"status of 404")
    page.goto(f"/batches/{batch_id}")
    expect(page.get_by_role("heading", name="未找到批次")).to_be_visible()
