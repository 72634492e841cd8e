"""A sweep batch's page shows its contact sheets (one per z value), grey cells while
results are missing and filled in as they arrive; other batches show none."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect

from pixelkiln.sheets import PLACEHOLDER
from tests.browser.conftest import Browse, Server, axe
from tests.sheet_sweeps import mark_sweep_in, plain_spec

CELL = 256 * 256  #: pixels of one cell (64 px images drawn into 256 px cells)
LOADED = "img => img.complete && img.naturalWidth > 0"


def _greys(page: Page, src: str) -> int:
    """Placeholder-grey pixels in the sheet at ``src`` (fetched with the page's cookie)."""
    answer = page.request.get(src)
    assert answer.ok and answer.headers["cache-control"] == "no-store"
    image = Image.open(io.BytesIO(answer.body())).convert("RGB")
    grey = bytes(PLACEHOLDER)
    data = image.tobytes()
    return sum(1 for i in range(0, len(data), 3) if data[i : i + 3] == grey)


def test_a_sweep_batch_shows_its_sheets_filling_in(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    spec = plain_spec(name="cfg sweep", backend_of=lambda i: "slowpoke")
    with server.api("alice") as api:
        made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
        batch_id = made.json()["id"]
        assert api.post(f"/batches/{batch_id}/pause").status_code == 200
    mark_sweep_in(server.cwd, batch_id)

    page, _ = browse("alice")
    page.goto(f"/batches/{batch_id}")
    box = page.get_by_role("region", name="Contact sheets")
    expect(box).to_be_visible()
    figures = box.locator("figure")
    expect(figures).to_have_count(2)
    expect(figures.nth(0).locator("figcaption")).to_have_text("model=m1")
    expect(figures.nth(1).get_by_role("img", name="Contact sheet model=m2")).to_be_visible()
    first = figures.nth(1).locator("img")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=first.element_handle()
    )
    before = first.get_attribute("src") or ""
    assert _greys(page, before) > 9 * CELL * 0.9  # m2's tasks come after m1's: none ran
    axe(page)

    with server.api("alice") as api:
        assert api.post(f"/batches/{batch_id}/resume").status_code == 200
    expect(page.locator("#bd-percent")).to_have_text("100 %", timeout=60_000)
    expect(first).not_to_have_attribute("src", before)
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=first.element_handle()
    )
    after = first.get_attribute("src") or ""
    assert _greys(page, after) < CELL / 4  # no grey cell left (a few grey pixels in images)
    shot(page, "sweep-sheets")


def test_a_batch_that_is_not_a_sweep_shows_no_sheets(browse: Browse, server: Server) -> None:
    with server.api("bob") as api:
        made = api.post("/batches", json={"name": "plain", "tasks": [{"prompt": "a cat"}]})
        assert made.status_code == 201, made.text
        batch_id = made.json()["id"]
    page, _ = browse("bob")
    page.goto(f"/batches/{batch_id}")
    expect(page.locator("#bd-percent")).to_have_text("100 %", timeout=30_000)
    expect(page.locator("#bd-sheets-box")).to_be_hidden()
    expect(page.locator("#bd-sheets figure")).to_have_count(0)
