"""Records (``/records``): search and filters in the URL, thumbnails page by page, the
lightbox walked by keyboard (across a page's end too), a task's reference images,
download, delete; another user sees none of it; every message in both languages."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.conftest import Browse, Server, axe

WEB = Path(__file__).resolve().parents[2] / "pixelkiln" / "web"
FILLERS = 50  # with the others, more than one page of 48 thumbnails


def png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(out, "PNG")
    return out.getvalue()


def batch(server: Server, user: str, tasks: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A finished batch of the user's, made over the API; its tasks with their images."""
    body = {"name": "b", "defaults": {"width": 64, "height": 64}, "tasks": tasks, **fields}
    with server.api(user) as api:
        made = api.post("/batches", json=body)
        assert made.status_code == 201, made.text
        server.wait_batch(user, made.json()["id"])
        found: dict[str, Any] = api.get(f"/batches/{made.json()['id']}").json()
    return found


@pytest.fixture(scope="module")
def alice(server: Server) -> Iterator[dict[str, Any]]:
    """Alice's images: fillers (oldest), moths, a slow snail, a lighthouse with two
    references, an edit of it (newest)."""
    fillers = [{"prompt": f"filler picture {i}"} for i in range(FILLERS)]
    made = {"fillers": batch(server, "alice", fillers, name="fillers")}
    moths = [{"prompt": "a glowing moth"}, {"prompt": "a MOTH at dawn"}, {"prompt": "a lake"}]
    made["moths"] = batch(server, "alice", moths, name="moths")
    made["snail"] = batch(server, "alice", [{"prompt": "a slow snail", "backend": "slowpoke"}])
    files = [("files", (f"{c}.png", png(c), "image/png")) for c in ("red", "blue")]
    with server.api("alice") as api:
        refs = api.post("/assets", files=files).json()
    task = {"prompt": "a lighthouse 灯塔", "reference_images": [r["ref"] for r in refs]}
    made["lighthouse"] = batch(server, "alice", [task], name="refs")
    with server.api("alice") as api:  # img2img from that image: its init image
        edit = {"prompt": "an edited picture"}
        edited = api.post(f"/images/{image_id(made, 'lighthouse')}/edit", json=edit)
        assert edited.status_code == 201, edited.text
    made["edited"] = {"id": edited.json()["id"]}
    server.wait_batch("alice", made["edited"]["id"])
    yield made


def image_id(made: dict[str, Any], key: str, task: int = 0) -> int:
    return int(made[key]["tasks"][task]["images"][0]["id"])


def tiles(page: Page) -> Any:
    return page.get_by_role("list", name="Images, newest first").get_by_role("button")


def test_search_filters_in_the_url_and_back_works(
    browse: Browse, server: Server, alice: dict[str, Any], shot: Callable[[Page, str], Path]
) -> None:
    page, _ = browse("alice")
    page.goto("/records")
    expect(tiles(page)).to_have_count(48)
    expect(page.get_by_role("status").first).to_contain_text(f"{FILLERS + 6} images")
    expect(page.get_by_role("button", name="Older")).to_be_visible()
    thumbs = page.locator("#rec-grid img")
    assert thumbs.first.get_attribute("loading") == "lazy"
    assert thumbs.first.get_attribute("width") == "256"  # its place kept while it loads
    expect(thumbs.first).to_have_js_property("complete", True)
    assert thumbs.first.evaluate("i => i.naturalWidth") > 0
    shot(page, "records")
    axe(page)

    page.get_by_label("Prompt contains").fill("moth")  # searches as it is typed
    expect(page).to_have_url(re.compile(r"/records\?q=moth$"))
    expect(tiles(page)).to_have_count(2)
    expect(page.locator("#rec-summary")).to_have_text("2 matches · 2 on this page")
    page.get_by_label("Backend").select_option("slowpoke")
    expect(tiles(page)).to_have_count(0)
    expect(page.get_by_text("No images match this search.")).to_be_visible()
    page.get_by_label("Prompt contains").fill("")
    page.get_by_label("Prompt contains").press("Enter")
    expect(page).to_have_url(re.compile(r"/records\?backend=slowpoke$"))
    expect(tiles(page)).to_have_count(1)
    expect(page.locator(".rec-caption")).to_have_text(["a slow snail"])

    page.go_back()  # moth on slowpoke: none
    expect(page.get_by_label("Prompt contains")).to_have_value("moth")
    expect(tiles(page)).to_have_count(0)
    page.go_back()  # moth
    expect(tiles(page)).to_have_count(2)
    expect(page.get_by_label("Backend")).to_have_value("")

    moths = alice["moths"]["id"]  # a bookmark: the batch filter and a date range
    page.goto(f"/records?batch_id={moths}&since=2000-01-01&until=2999-12-31")
    expect(tiles(page)).to_have_count(3)
    expect(page.get_by_label("Batch", exact=True)).to_have_value(str(moths))
    page.get_by_label("Batch", exact=True).fill("not a batch")
    page.get_by_label("Batch", exact=True).press("Enter")
    expect(page.get_by_text("A batch is its number (for example 12).")).to_be_visible()
    expect(page.get_by_label("Batch", exact=True)).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Batch status").select_option("completed")
    page.get_by_label("Batch", exact=True).fill("")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page).to_have_url(re.compile(r"status=completed"))
    expect(tiles(page)).to_have_count(48)


def test_the_lightbox_by_keyboard_across_pages(
    browse: Browse, alice: dict[str, Any], shot: Callable[[Page, str], Path]
) -> None:
    page, _ = browse("alice")
    page.goto("/records?q=moth")
    first = tiles(page).first
    expect(first).to_have_count(1)
    first.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#lb-prompt")).to_have_text("a MOTH at dawn")
    expect(dialog.locator("#lb-batch")).to_contain_text("moths")
    expect(dialog.get_by_role("link", name="moths")).to_have_attribute(
        "href", f"/batches/{alice['moths']['id']}"
    )
    page.keyboard.press("ArrowRight")
    expect(dialog.locator("#lb-prompt")).to_have_text("a glowing moth")
    expect(dialog.get_by_role("button", name="Next")).to_be_disabled()
    page.keyboard.press("ArrowRight")  # the last: stays
    expect(dialog.locator("#lb-prompt")).to_have_text("a glowing moth")
    page.keyboard.press("ArrowLeft")
    expect(dialog.locator("#lb-prompt")).to_have_text("a MOTH at dawn")
    axe(page)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(first).to_be_focused()  # back where it was opened

    page.goto("/records")  # the last thumbnail of the first page, then on to the next page
    last = tiles(page).nth(47)
    last.click()
    expect(dialog.locator("#lb-position")).to_have_text("48 of 48 on this page")
    page.keyboard.press("ArrowRight")
    expect(page).to_have_url(re.compile(r"before=\d+"))
    expect(dialog.locator("#lb-position")).to_contain_text("1 of")
    page.keyboard.press("ArrowLeft")  # back over the boundary
    expect(dialog.locator("#lb-position")).to_have_text("48 of 48 on this page")
    expect(page).to_have_url(re.compile(r"/records$"))
    page.keyboard.press("Escape")
    expect(tiles(page).nth(47)).to_be_focused()
    page.get_by_role("button", name="Older").click()
    expect(page.get_by_text("Page 2")).to_be_visible()
    expect(tiles(page)).to_have_count(FILLERS + 6 - 48)
    page.get_by_role("button", name="Newer").click()
    expect(tiles(page)).to_have_count(48)


def test_references_download_and_delete(
    browse: Browse, server: Server, alice: dict[str, Any], shot: Callable[[Page, str], Path]
) -> None:
    page, _ = browse("alice")
    page.goto("/records?q=%E7%81%AF%E5%A1%94")  # 灯塔
    tiles(page).first.click()
    dialog = page.get_by_role("dialog")
    inputs = dialog.get_by_role("region", name="Input images of its task")
    expect(inputs.get_by_role("link")).to_have_count(2)
    expect(inputs.get_by_role("link", name="Reference 2")).to_be_visible()
    for img in inputs.locator("img").all():  # the pictures themselves arrived
        expect(img).to_have_js_property("complete", True)
        assert img.evaluate("i => i.naturalWidth") == 80
    shot(page, "lightbox")
    axe(page)

    page.keyboard.press("Escape")
    page.get_by_label("Prompt contains").fill("edited")
    expect(page.locator(".rec-caption")).to_have_text(["an edited picture"])
    tiles(page).first.click()
    expect(inputs.get_by_role("link")).to_have_count(1)
    expect(inputs.get_by_role("link", name="Init image")).to_be_visible()
    page.keyboard.press("Escape")
    page.go_back()  # to 灯塔
    expect(page.locator(".rec-caption")).to_have_text(["a lighthouse 灯塔"])
    tiles(page).first.click()

    with page.expect_download() as download:
        dialog.get_by_role("link", name="Download").click()
    saved = Path(download.value.path()).read_bytes()
    assert saved.startswith(b"\x89PNG\r\n\x1a\n")
    assert download.value.suggested_filename.endswith(".png")

    doomed = image_id(alice, "lighthouse")
    dialog.get_by_role("button", name="Delete").click()
    confirm = page.locator("#confirm-dialog")
    expect(confirm).to_contain_text(f"Delete image #{doomed}?")
    confirm.get_by_role("button", name="Delete").click()
    expect(page.get_by_text(f"Image #{doomed} deleted.")).to_be_visible()
    expect(dialog).to_be_hidden()  # nothing left to show
    expect(tiles(page)).to_have_count(0)
    with server.api("alice") as api:
        assert api.get(f"/images/{doomed}").status_code == 404
    page.goto("/records")
    expect(page.locator(f'button.thumb[data-id="{doomed}"]')).to_have_count(0)


def test_bob_sees_none_of_alices_images(
    browse: Browse, server: Server, alice: dict[str, Any]
) -> None:
    page, _ = browse("bob")
    page.goto("/records")
    expect(page.get_by_text("No images yet.")).to_be_visible()
    expect(page.get_by_role("link", name="Generate your first image")).to_be_visible()
    page.goto(f"/records?batch_id={alice['moths']['id']}&q=moth")
    expect(page.get_by_text("No images match this search.")).to_be_visible()
    expect(tiles(page)).to_have_count(0)
    options = page.locator("#rec-batches option")
    expect(options).to_have_count(0)  # alice's batches are not offered


def test_chinese_on_a_phone_in_the_dark(
    browse: Browse, alice: dict[str, Any], shot: Callable[[Page, str], Path]
) -> None:
    page, _ = browse(
        "alice", locale="zh-CN", viewport={"width": 360, "height": 740}, color_scheme="dark"
    )
    page.goto("/records?q=moth")
    expect(page.get_by_label("提示词包含")).to_have_value("moth")
    expect(page.locator("#rec-summary")).to_have_text("共 2 个结果 · 本页 2 个")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways: {width}px"
    shot(page, "phone-dark")
    page.locator("#rec-grid button.thumb").first.click()
    expect(page.get_by_role("dialog")).to_contain_text("提示词")
    axe(page)
    shot(page, "phone-dark-lightbox")


_JS_KEY = re.compile(r"""\bt\(\s*["']([\w.]+)["']""")
_TEMPLATE_KEY = re.compile(r"""\bt\(\s*'([\w.]+)'\s*\)""")


def test_every_message_of_the_page_is_in_both_languages() -> None:
    own = json.loads((WEB / "messages" / "records.json").read_text(encoding="utf-8"))
    common = json.loads((WEB / "messages" / "common.json").read_text(encoding="utf-8"))
    template = (WEB / "templates" / "records.html").read_text(encoding="utf-8")
    script = (WEB / "static" / "js" / "records.js").read_text(encoding="utf-8")
    used = set(_TEMPLATE_KEY.findall(template)) | set(_JS_KEY.findall(script))
    missing = sorted(k for k in used if k not in own and k not in common)
    assert not missing, missing
    half = sorted(k for k, v in own.items() if not (v.get("en") and v.get("zh")))
    assert not half, half
