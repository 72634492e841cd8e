"""The batch table (/batch) and the reference library it shares with Generate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Browse, Server, axe
from tests.sheets import png

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
