"""Generate (``/``): one request with references, its images inline, "send to Generate",
the re-prompt "edit", the form's checks; and every message of the page in both languages."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import Page, expect

import pixelkiln.api  # noqa: F401 -- first: pixelkiln.web is imported through the app
from pixelkiln.web.pages import PAGES
from tests.browser.conftest import Browse, Server, axe

WEB = Path(__file__).resolve().parents[2] / "pixelkiln" / "web"


def png(colour: str, size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def upload(server: Server, user: str, *names: str) -> list[dict[str, Any]]:
    """The user's uploads (``asset:<id>``), one coloured PNG per name."""
    files = [("files", (f"{name}.png", png(name), "image/png")) for name in names]
    with server.api(user) as api:
        made = api.post("/assets", files=files)
    assert made.status_code == 201, made.text
    assets: list[dict[str, Any]] = made.json()
    return assets


def make_batch(server: Server, user: str, task: dict[str, Any], name: str = "b") -> dict[str, Any]:
    """A finished one-task batch of the user's, made over the API."""
    with server.api(user) as api:
        made = api.post("/batches", json={"name": name, "tasks": [task]})
    assert made.status_code == 201, made.text
    server.wait_batch(user, made.json()["id"])
    with server.api(user) as api:
        batch: dict[str, Any] = api.get(f"/batches/{made.json()['id']}").json()
    return batch


def test_generate_with_two_uploaded_references_shows_the_images_inline(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path], tmp_path: Path
) -> None:
    earlier = make_batch(server, "alice", {"prompt": "a stone bridge", "width": 64, "height": 64})
    page, _ = browse("alice")
    page.goto("/")
    expect(page.get_by_label("Backend")).to_contain_text("slowpoke")  # backends loaded
    axe(page)
    shot(page, "generate-empty")

    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk, oil on canvas")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Aspect ratio").select_option("16:9")
    page.get_by_label("Images (1–10)").fill("2")
    page.get_by_label("Backend").select_option("placeholder")
    (tmp_path / "teal.png").write_bytes(png("teal"))
    page.locator("#gen-upload").set_input_files(tmp_path / "teal.png")  # one uploaded here
    chosen = page.get_by_role("list", name="Chosen reference images").get_by_role("listitem")
    expect(chosen).to_have_count(1)
    page.get_by_role("button", name="Choose from library").click()  # one past result
    library = page.get_by_role("dialog", name="Reference library")
    library.get_by_role("tab", name="Past results").click()
    library.get_by_role("checkbox", name="a stone bridge").check()
    library.get_by_role("button", name="Use selected").click()
    expect(library).to_be_hidden()
    expect(chosen).to_have_count(2)
    expect(chosen.first).to_contain_text("teal.png")
    expect(page.get_by_text("2 of 4 chosen")).to_be_visible()
    expect(page.get_by_role("button", name="Choose from library")).to_be_focused()
    page.get_by_text("Advanced: seed, steps, CFG").click()
    page.get_by_label("Seed").fill("42")
    expect(page.get_by_text("Cost: 2 credit(s)")).to_be_visible()

    page.get_by_label("Prompt", exact=True).press("Control+Enter")  # the keyboard submits
    result = page.locator("section.result").first
    expect(result.locator(".badge")).to_have_text("completed")
    expect(result.locator("figure img")).to_have_count(2)
    expect(result.get_by_role("link", name="Download all (ZIP)")).to_be_visible()
    expect(result.locator("progress")).to_have_attribute("aria-valuetext", "100 %")

    batch_id = int(result.get_attribute("data-batch-id") or 0)
    with server.api("alice") as api:
        images = api.get("/images", params={"batch_id": batch_id}).json()["items"]
    assert len(images) == 2
    assert [i["role"] for i in images[0]["inputs"]] == ["reference_image", "reference_image"]
    with server.api("alice") as api:  # the past result went in as it was
        earlier_png = api.get(f"/images/{earlier['tasks'][0]['images'][0]['id']}/file").content
        assert api.get(images[0]["inputs"][1]["url"].removeprefix("/api/v1")).content == earlier_png
    assert (images[0]["width"], images[0]["height"]) == (1344, 768)
    assert sorted(i["seed"] for i in images) == [42, 43]

    result.get_by_role("button", name=f"View image #{images[0]['id']} at full size").click()
    viewer = page.locator("dialog.viewer")
    expect(viewer).to_be_visible()
    expect(viewer.locator("img")).to_have_attribute("src", f"/api/v1/images/{images[0]['id']}/file")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(result.get_by_role("link", name="Open batch")).to_have_attribute(
        "href", f"/batches/{batch_id}"
    )
    axe(page)
    shot(page, "generate-result")


def test_send_to_generate_fills_the_form_from_a_task(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    refs = upload(server, "alice", "navy", "gold")
    batch = make_batch(
        server,
        "alice",
        {
            "prompt": "a paper boat on a puddle",
            "negative_prompt": "text",
            "aspect_ratio": "3:2",
            "resolution": "2K",
            "n": 3,
            "seed": 7,
            "steps": 12,
            "backend": "slowpoke",
            "reference_images": [r["ref"] for r in refs],
        },
    )
    task_id = batch["tasks"][0]["id"]
    page, _ = browse("alice")
    page.goto(f"/?from_task={task_id}")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a paper boat on a puddle")
    expect(page.get_by_label("Negative prompt")).to_have_value("text")
    expect(page.get_by_label("Aspect ratio")).to_have_value("3:2")
    expect(page.get_by_label("Resolution")).to_have_value("2K")
    expect(page.get_by_label("Images (1–10)")).to_have_value("3")
    expect(page.get_by_label("Backend")).to_have_value("slowpoke")
    expect(page.get_by_label("Seed")).to_have_value("7")
    expect(page.get_by_label("Steps")).to_have_value("12")
    chosen = page.get_by_role("list", name="Chosen reference images")
    expect(chosen.get_by_role("listitem")).to_have_count(2)
    expect(chosen).to_contain_text("navy.png")
    expect(page.get_by_role("link", name=f"batch #{batch['id']}")).to_be_visible()
    shot(page, "generate-from-task")

    page.get_by_role("button", name="Remove navy.png").click()  # then generate it again
    expect(chosen.get_by_role("listitem")).to_have_count(1)
    page.get_by_label("Images (1–10)").fill("1")
    page.get_by_role("button", name="Generate", exact=True).click()
    result = page.locator("section.result").first
    expect(result.locator(".badge")).to_have_text("completed", timeout=20_000)
    expect(result.locator("figure img")).to_have_count(1)


def test_the_form_says_what_is_wrong_before_and_after_sending(
    browse: Browse, shot: Callable[[Page, str], Path]
) -> None:
    page, watch = browse("alice", color_scheme="dark", viewport={"width": 360, "height": 780})
    page.goto("/")
    expect(page.get_by_label("Backend")).to_contain_text("slowpoke")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360  # a phone
    axe(page)  # dark colours too
    page.get_by_label("Images (1–10)").fill("11")
    page.get_by_role("button", name="Generate", exact=True).click()
    prompt = page.get_by_label("Prompt", exact=True)
    expect(prompt).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#gen-prompt-error")).to_have_text("Write a prompt.")
    expect(page.locator("#gen-count-error")).to_have_text("A whole number from 1 to 10.")
    expect(prompt).to_be_focused()
    expect(page.locator("section.result")).to_have_count(0)

    watch.allow(r"status of 422")  # the server's own check, shown on its field
    page.get_by_label("Images (1–10)").fill("1")
    prompt.evaluate("(node) => { node.value = 'x'.repeat(20001); }")  # past maxlength
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#gen-prompt-error")).to_contain_text("20000")
    expect(page.locator("#gen-count-error")).to_be_hidden()
    shot(page, "generate-phone-dark")


def test_edit_an_image_from_the_result_and_another_users_task_is_not_found(
    browse: Browse, server: Server
) -> None:
    page, _ = browse("alice")
    page.goto("/")
    page.get_by_label("Prompt", exact=True).fill("a red kite")
    page.get_by_role("button", name="Generate", exact=True).click()
    first = page.locator("section.result").first
    expect(first.locator("figure img")).to_have_count(1)
    first.get_by_role("button", name=re.compile(r"^Edit image #\d+")).click()
    dialog = page.get_by_role("dialog", name="Edit an image: new prompt")
    expect(dialog.get_by_label("New prompt")).to_have_value("a red kite")
    dialog.get_by_label("New prompt").fill("a blue kite")
    dialog.get_by_role("button", name="Make the edit").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("section.result")).to_have_count(2)
    edited = page.locator("section.result").first
    expect(edited.locator("figure img")).to_have_count(1)
    expect(edited.locator(".badge")).to_have_text("completed")
    expect(first.locator("figure img")).to_have_count(1)  # the original stays

    task_id = make_batch(server, "alice", {"prompt": "alice's own"})["tasks"][0]["id"]
    with server.api("bob") as api:
        assert api.get(f"/tasks/{task_id}/references").status_code == 404
    page, watch = browse("bob", locale="zh-CN")
    watch.allow(r"status of 404")
    page.goto(f"/?from_task={task_id}")
    expect(page.get_by_role("alert")).to_contain_text(f"未找到任务 {task_id}")
    expect(page.get_by_label("提示词", exact=True)).to_have_value("")


# -- every message a page shows exists in English and Chinese -------------------------------

_JS_KEY = re.compile(r"""\bt\(\s*["']([\w.]+)["']""")
_TEMPLATE_KEY = re.compile(r"""\bt\(\s*'([\w.]+)'\s*\)""")
_IMPORT = re.compile(r"""from\s+["']\./([\w.-]+\.js)["']""")


def _messages_of_page(name: str) -> dict[str, dict[str, str]]:
    """What the page gets: common's, its shared modules' (``uses``), its own."""
    page = next(p for p in PAGES if p.name == name)
    out: dict[str, dict[str, str]] = {}
    for source in ("common", *page.uses, name):
        out.update(json.loads((WEB / "messages" / f"{source}.json").read_text()))
    return out


def _keys_of_page(name: str) -> set[str]:
    keys = set(_TEMPLATE_KEY.findall((WEB / "templates" / f"{name}.html").read_text()))
    scripts, seen = [f"{name}.js"], set()
    while scripts:
        script = scripts.pop()
        if script in seen or script == "kiln.js":
            continue
        seen.add(script)
        text = (WEB / "static" / "js" / script).read_text()
        keys |= set(_JS_KEY.findall(text))
        scripts += _IMPORT.findall(text)
    return keys


def test_every_message_of_generate_and_batch_pages_is_in_both_languages() -> None:
    for name in ("generate", "batch_detail"):
        own = json.loads((WEB / "messages" / f"{name}.json").read_text())
        messages = _messages_of_page(name)
        missing = sorted(k for k in _keys_of_page(name) if k not in messages)
        assert not missing, f"{name}: no message for {missing}"
        half = sorted(k for k, v in own.items() if not (v.get("en") and v.get("zh")))
        assert not half, f"{name}: not in both languages: {half}"
