"""The batch table (/batch) and the reference library it shares with Generate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Browse, Server, axe, settled
from tests.sheets import ZH_HEADER, png, sheet_rows, workbook_bytes

EN_COLUMNS = [
    "prompt",
    "negative_prompt",
    "aspect_ratio",
    "resolution",
    "reference_images",
    "n",
    "filename_prefix",
]

OPEN_LIBRARY = """(max) => { window.picked = import('/static/js/library.js')
  .then((m) => m.openLibrary({ max })); }"""


def _a_result(server: Server, user: str, prompt: str) -> dict[str, Any]:
    """One finished image of ``user``'s."""
    spec = {"name": "earlier", "tasks": [{"prompt": prompt, "width": 64, "height": 64}]}
    with server.api(user) as api:
        made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
    batch = server.wait_batch(user, made.json()["id"])
    with server.api(user) as api:
        image: dict[str, Any] = api.get(f"/batches/{batch['id']}").json()["tasks"][0]["images"][0]
    return image


def test_the_library_picks_uploads_and_past_results_by_keyboard(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    image = _a_result(server, "bob", "a lighthouse at dusk")
    with server.api("bob") as api:
        files = [
            ("files", (f"ref{i}.png", png(color=(i * 60, 90, 40)), "image/png")) for i in (1, 2)
        ]
        uploads = api.post("/assets", files=files).json()
    page, _ = browse("bob")
    page.goto("/batch")
    page.evaluate(OPEN_LIBRARY, 2)
    dialog = page.get_by_role("dialog", name="Reference library")
    expect(dialog).to_be_visible()
    tiles = dialog.get_by_role("checkbox")
    expect(tiles).to_have_count(2)
    tiles.first.focus()
    page.keyboard.press("Space")
    expect(dialog.get_by_text("1 of 2 chosen")).to_be_visible()
    dialog.get_by_role("tab", name="My uploads").focus()
    page.keyboard.press("ArrowRight")
    expect(dialog.get_by_role("tab", name="Past results")).to_have_attribute(
        "aria-selected", "true"
    )
    result = dialog.get_by_role("checkbox", name="a lighthouse at dusk")
    result.check()
    expect(dialog.get_by_text("2 of 2 chosen")).to_be_visible()
    dialog.get_by_role("tab", name="My uploads").click()
    expect(dialog.get_by_role("checkbox", name=uploads[0]["name"])).to_be_disabled()  # full
    axe(page)
    shot(page, "library")
    dialog.get_by_role("button", name="Use selected").click()
    expect(dialog).to_be_hidden()
    picked = page.evaluate("() => window.picked")
    assert len(picked) == 2 and picked[0]["name"] == uploads[1]["name"]  # the one chosen first
    assert all(p["ref"] == f"asset:{p['assetId']}" for p in picked)
    with server.api("bob") as api:
        made = api.get(f"/assets/{picked[1]['assetId']}").json()
        file = api.get(f"/images/{image['id']}/file").content
        assert api.get(made["url"].removeprefix("/api/v1")).content == file


def test_import_edit_check_export_start_and_watch_the_rows(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path], tmp_path: Path
) -> None:
    _a_result(server, "alice", "a harbour in fog")
    with server.api("alice") as api:
        api.post("/assets", files=[("files", ("mood.png", png(color=(10, 120, 200)), "image/png"))])
    rows = [
        ZH_HEADER,
        ["a paper crane on a desk", "blurry", "3:4", "1K", None, 2, "crane"],
        ["a teapot", None, "1:1", "2K", None, 1, None],
    ]
    sheet = tmp_path / "镜头.xlsx"
    sheet.write_bytes(workbook_bytes(rows, {"E2": png(24, 24)}, formulas=False))

    page, watch = browse("alice")
    page.goto("/batch")
    settled(page)
    page.locator("#import-file").set_input_files(sheet)
    expect(page.get_by_label("Prompt, row 1", exact=True)).to_have_value("a paper crane on a desk")
    expect(page.get_by_label("Resolution, row 2", exact=True)).to_have_value("2K")
    expect(page.get_by_label("Batch name")).to_have_value("镜头")
    expect(page.get_by_role("img", name="Reference 1: asset:", exact=False)).to_have_count(1)

    # edit row 2 by keyboard: prompt, then Tab on to the ratio and the count
    page.get_by_label("Prompt, row 2", exact=True).fill("a teapot, steam rising")
    page.keyboard.press("Tab")  # negative prompt
    page.keyboard.press("Tab")
    expect(page.get_by_label("Aspect ratio, row 2", exact=True)).to_be_focused()
    page.get_by_label("Aspect ratio, row 2", exact=True).select_option("16:9")
    page.get_by_label("Count, row 2", exact=True).fill("3")
    page.get_by_label("File-name prefix, row 2", exact=True).fill("teapot")

    # two references from the library: an upload and a past result
    page.get_by_role("button", name="Choose references, row 2").click()
    dialog = page.get_by_role("dialog", name="Reference library")
    dialog.get_by_role("checkbox", name="mood.png").check()
    dialog.get_by_role("tab", name="Past results").click()
    dialog.get_by_role("checkbox", name="a harbour in fog").check()
    dialog.get_by_role("button", name="Use selected").click()
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("button", name="Choose references, row 2 (2 of 4)")).to_be_visible()

    # add a row (the focus goes to it), duplicate it, delete both again
    page.get_by_role("button", name="Add row").click()
    expect(page.get_by_label("Prompt, row 3", exact=True)).to_be_focused()
    page.keyboard.type("a third row")
    page.get_by_role("button", name="Duplicate row 3").click()
    expect(page.get_by_label("Prompt, row 4", exact=True)).to_have_value("a third row")
    expect(page.get_by_label("Prompt, row 4", exact=True)).to_be_focused()
    page.get_by_role("button", name="Delete row 4").click()
    page.get_by_role("button", name="Delete row 3").click()
    expect(page.locator("#rows tr")).to_have_count(2)

    # a reload keeps the table (localStorage)
    page.reload()
    settled(page)
    expect(page.get_by_label("Prompt, row 2", exact=True)).to_have_value("a teapot, steam rising")
    expect(page.get_by_label("Aspect ratio, row 2", exact=True)).to_have_value("16:9")

    # a problem is shown on its row, and the check passes once it is fixed
    watch.allow(r"status of 422")
    # (two of them: listed in table order, the first focused, whatever the server's order)
    page.get_by_label("Count, row 2", exact=True).fill("0")
    page.get_by_label("Count, row 1", exact=True).fill("11")
    page.get_by_role("button", name="Check").click()
    count = page.get_by_label("Count, row 1", exact=True)
    expect(count).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#r1-n-error")).to_contain_text("10")
    expect(count).to_be_focused()
    alert = page.get_by_role("alert").filter(has_text="problem")
    expect(alert).to_contain_text("Row 1, Count")
    listed = alert.inner_text()
    assert listed.index("Row 1, Count") < listed.index("Row 2, Count")
    axe(page)
    shot(page, "problem")
    page.get_by_label("Count, row 2", exact=True).fill("3")
    count.fill("2")
    expect(count).not_to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#plan")).to_have_text("Ready: 2 task(s), 5 image(s), 5 credit(s).")

    # export the table as it is and read it back
    with page.expect_download() as download:
        page.get_by_role("button", name="Export Excel").click()
    exported = tmp_path / "out.xlsx"
    download.value.save_as(exported)
    assert download.value.suggested_filename == "镜头.xlsx"
    header, first, second = sheet_rows(exported)
    assert header[:8] == ["key", *EN_COLUMNS]
    cells = dict(zip(header, second, strict=True))
    assert cells["prompt"] == "a teapot, steam rising"
    assert (cells["aspect_ratio"], cells["resolution"], cells["n"]) == ("16:9", "2K", 3)
    assert cells["filename_prefix"] == "teapot"
    assert len(cells["reference_images"].split("\n")) == 2
    assert dict(zip(header, first, strict=True))["n"] == 2

    # start; every row's badge ends succeeded, the log shows the events
    page.get_by_role("button", name="Start").click()
    statuses = page.locator("#rows .col-status .badge")
    expect(statuses).to_have_count(2)
    expect(statuses.filter(has_text="succeeded")).to_have_count(2, timeout=30_000)
    expect(page.locator("#rows .col-status img")).to_have_count(5)
    expect(page.get_by_role("log")).to_contain_text("done: completed")
    expect(page.get_by_label("Prompt, row 1", exact=True)).to_be_disabled()
    link = page.get_by_role("link", name="Open batch #")
    batch_id = int((link.get_attribute("href") or "").rsplit("/", 1)[-1])
    batch = server.wait_batch("alice", batch_id)
    assert batch["status"] == "completed" and batch["name"] == "镜头"
    settled(page)
    axe(page)
    shot(page, "finished")
    page.get_by_role("button", name="Edit the table again").click()
    expect(page.get_by_label("Prompt, row 1", exact=True)).to_be_enabled()


def _cells(page: Page, n: int) -> dict[str, str]:
    """What row ``n`` of the table shows: negative prompt, ratio, resolution, count."""
    return {
        field: page.get_by_label(f"{label}, row {n}", exact=True).input_value()
        for field, label in (
            ("negative_prompt", "Negative prompt"),
            ("aspect_ratio", "Aspect ratio"),
            ("resolution", "Resolution"),
            ("n", "Count"),
        )
    }


def test_a_files_defaults_are_shown_sent_and_exported_on_every_row(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path], tmp_path: Path
) -> None:
    spec = {
        "name": "shots",
        "defaults": {
            "aspect_ratio": "16:9",
            "resolution": "2K",
            "n": 3,
            "negative_prompt": "blurry",
            "backend": "slowpoke",
            "model": "sketch-2",
        },
        "tasks": [
            {"prompt": "a fox in snow"},
            {"prompt": "an owl", "aspect_ratio": "9:16", "n": 1, "seed": 7},
        ],
    }
    source = tmp_path / "shots.json"
    source.write_text(json.dumps(spec))
    fox = {"negative_prompt": "blurry", "aspect_ratio": "16:9", "resolution": "2K", "n": "3"}
    owl = {**fox, "aspect_ratio": "9:16", "n": "1"}

    page, _ = browse("bob")
    page.goto("/batch")
    settled(page)
    page.locator("#import-file").set_input_files(source)
    expect(page.get_by_label("Prompt, row 2", exact=True)).to_have_value("an owl")
    assert (_cells(page, 1), _cells(page, 2)) == (fox, owl)
    expect(page.get_by_label("Backend", exact=True)).to_have_value("slowpoke")
    expect(page.get_by_label("Model", exact=True)).to_have_value("sketch-2")
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#plan")).to_have_text("Ready: 2 task(s), 4 image(s), 4 credit(s).")
    shot(page, "defaults")

    # the export has every row as it is shown, and the batch-wide backend and model
    with page.expect_download() as download:
        page.get_by_role("button", name="Export Excel").click()
    exported = tmp_path / "shots.xlsx"
    download.value.save_as(exported)
    header, *rows = sheet_rows(exported)
    first, second = (dict(zip(header, row, strict=True)) for row in rows)
    for row, n, ratio in ((first, 3, "16:9"), (second, 1, "9:16")):
        assert (row["negative_prompt"], row["aspect_ratio"], row["resolution"]) == (
            "blurry",
            ratio,
            "2K",
        )
        assert (row["n"], row["backend"], row["model"]) == (n, "slowpoke", "sketch-2")
    assert (first["seed"], second["seed"]) == (None, 7)

    # and it reads back into the same table
    page.locator("#import-file").set_input_files(exported)
    page.get_by_role("dialog").get_by_role("button", name="Replace").click()
    expect(page.get_by_label("Batch name")).to_have_value("shots")
    expect(page.get_by_text("2 row(s) imported from shots.xlsx.")).to_be_visible()
    assert (_cells(page, 1), _cells(page, 2)) == (fox, owl)
    expect(page.get_by_label("Backend", exact=True)).to_have_value("slowpoke")
    expect(page.get_by_label("Model", exact=True)).to_have_value("sketch-2")

    # what is sent is what was shown
    page.get_by_role("button", name="Start").click()
    link = page.get_by_role("link", name="Open batch #")
    batch = server.wait_batch("bob", int((link.get_attribute("href") or "").rsplit("/", 1)[-1]))
    assert batch["status"] == "completed", batch
    with server.api("bob") as api:
        tasks = api.get(f"/batches/{batch['id']}").json()["tasks"]
    assert [(t["backend"], t["negative_prompt"], len(t["images"])) for t in tasks] == [
        ("slowpoke", "blurry", 3),
        ("slowpoke", "blurry", 1),
    ]
    assert tasks[1]["params"]["seed"] == 7
