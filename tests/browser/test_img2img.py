"""Batch img2img in the browser: a folder of pictures (picked and dropped), an admin's
preset, live results named after the uploads, retry of failed ones, cancel, the ZIP."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.conftest import CONFIG, Browse, Server, axe, serving

#: the shared setup (where "placeholder" fails any prompt with [fail] in it, for good), and
#: "glacier", which takes a minute an image: its batches wait to be cancelled
IMG2IMG_CONFIG = (
    CONFIG
    + """
[[backends]]
name = "glacier"
type = "placeholder"
concurrency = 1
latency = 60
"""
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The conftest's server (its users, auth and credits), with the backends above."""
    with serving(tmp_path_factory.mktemp("serve-img2img"), IMG2IMG_CONFIG) as running:
        yield running


def _picture(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> Path:
    Image.new("RGB", (48, 32), colour).save(path, format=fmt)
    return path


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """A folder as people have them: pictures, a note, and one picture too large."""
    folder = tmp_path / "pets"
    folder.mkdir()
    _picture(folder / "cat.png", (200, 120, 40))
    _picture(folder / "dog.jpg", (40, 120, 200), "JPEG")
    (folder / "notes.txt").write_text("feed them")
    (folder / "huge.png").write_bytes(b"\x89PNG" + bytes(11 * 1024 * 1024))
    return folder


def _preset(server: Server) -> dict[str, Any]:
    with server.api("root") as api:
        made = api.post(
            "/presets",
            json={
                "title": "Watercolour",
                "content": "a watercolour of {prompt}",
                "category": "Styles",
            },
        )
        assert made.status_code == 201, made.text
        preset: dict[str, Any] = made.json()
        return preset


def _drop_png(page: Page, name: str) -> None:
    """Drop one file on the drop zone, as a browser does (a DataTransfer built in the page)."""
    page.evaluate(
        """async (name) => {
            const canvas = new OffscreenCanvas(24, 24);
            canvas.getContext("2d").fillRect(0, 0, 12, 12);
            const blob = await canvas.convertToBlob({ type: "image/png" });
            const transfer = new DataTransfer();
            transfer.items.add(new File([blob], name, { type: "image/png" }));
            const zone = document.getElementById("drop");
            const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        name,
    )


def _start(page: Page) -> int:
    """Press Start; the new batch's id (from the upload's answer)."""
    with page.expect_response(lambda r: r.url.endswith("/api/v1/batches/upload")) as answer:
        page.get_by_role("button", name="Start").click()
    assert answer.value.status == 201, answer.value.text()
    batch_id: int = answer.value.json()["id"]
    return batch_id


def _card(page: Page, batch_id: int) -> Any:
    return page.locator(f"article.run:has(a[href='/batches/{batch_id}'])")


def test_a_folder_with_a_preset_gives_results_named_after_the_uploads(
    browse: Browse, server: Server, pets: Path, tmp_path: Path, shot: Callable[[Page, str], Path]
) -> None:
    _preset(server)
    page, _ = browse("alice")
    page.goto("/img2img")
    expect(page.get_by_label("Preset")).to_contain_text("Watercolour")
    axe(page)

    page.locator("#pick-folder").set_input_files(pets)
    picked = page.locator("#picked li")
    expect(picked).to_have_count(2)
    expect(page.locator("#picked figcaption")).to_have_text(["pets/cat.png", "pets/dog.jpg"])
    refused = page.get_by_role("alert").filter(has_text="not added")
    expect(refused).to_contain_text("pets/notes.txt: not a JPG, PNG, GIF or WebP image")
    expect(refused).to_contain_text("pets/huge.png: 11.0 MB, over the 10.0 MB limit")

    _drop_png(page, "bird.png")  # a drop adds to the folder's pictures
    expect(picked).to_have_count(3)
    page.get_by_role("button", name="Remove bird.png").click()  # and is taken out again
    expect(picked).to_have_count(2)
    expect(page.locator("#picked-count")).to_contain_text("2 of at most 50 images")

    page.get_by_role("button", name="Start").click()  # neither prompt nor preset yet
    expect(page.get_by_label("Prompt (for every image)")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#prompt-error")).to_have_text("Write a prompt, or pick a preset.")

    page.get_by_label("Preset").select_option(label="Watercolour")
    expect(page.locator("#preset-text")).to_contain_text("a watercolour of {prompt}")
    page.get_by_label("Model").select_option("placeholder")
    page.get_by_label("Prompt (for every image)").fill("a sleepy pet")
    expect(page.locator("#cost")).to_have_text("This batch costs 2 credit(s).")
    shot(page, "img2img-ready")
    batch_id = _start(page)

    card = _card(page, batch_id)
    expect(card.locator(".run-head .badge")).to_have_text("completed")
    results = card.locator("li.result")
    expect(results.locator(".key")).to_have_text(["cat.png", "dog.jpg"])
    expect(results.get_by_role("img", name="Result of cat.png")).to_be_visible()
    expect(page).to_have_url(f"{server.url}/img2img?batch={batch_id}")
    expect(picked).to_have_count(0)

    with page.expect_download() as got:
        card.get_by_role("link", name="Download the result of cat.png").click()
    assert got.value.suggested_filename == "cat_0.png"
    with page.expect_download() as got:
        card.get_by_role("link", name="Download ZIP").click()
    zipped = tmp_path / "batch.zip"
    got.value.save_as(zipped)
    with zipfile.ZipFile(zipped) as archive:
        assert sorted(archive.namelist()) == ["cat_0.png", "dog_0.png"]
        with archive.open("cat_0.png") as entry:
            assert Image.open(io.BytesIO(entry.read())).format == "PNG"
    with server.api("alice") as api:
        tasks = api.get(f"/batches/{batch_id}").json()["tasks"]
    assert {t["prompt"] for t in tasks} == {"a watercolour of a sleepy pet"}
    axe(page)
    shot(page, "img2img-results")

    page.reload()  # the batch is in the address: it is shown again
    expect(_card(page, batch_id).locator("li.result")).to_have_count(2)


def test_failed_uploads_are_retried_and_a_batch_is_cancelled(
    browse: Browse, server: Server, pets: Path, shot: Callable[[Page, str], Path]
) -> None:
    page, watch = browse("alice")
    page.goto("/img2img")
    expect(page.get_by_label("Model")).to_contain_text("glacier")

    # a file that only looks like a picture passes the page's checks, not the server's
    watch.allow(r"status of 422")
    (pets / "broken.png").write_bytes(b"not a picture at all")
    page.locator("#pick-files").set_input_files([pets / "cat.png", pets / "broken.png"])
    page.get_by_label("Prompt (for every image)").fill("[fail] on purpose")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#form-error")).to_contain_text("files[0] (broken.png)")  # sorted by name
    expect(page.locator("#picked li.bad")).to_have_count(1)
    expect(page.locator("#picked li.bad figcaption")).to_have_text("broken.png")
    page.get_by_role("button", name="Remove broken.png").click()

    page.locator("#pick-files").set_input_files([pets / "dog.jpg"])
    page.get_by_label("Model").select_option("placeholder")
    failing = _start(page)
    card = _card(page, failing)
    expect(card.locator(".run-head .badge")).to_have_text("failed")
    expect(card.locator("li.result .error")).to_have_text(
        ["placeholder rejects prompts containing '[fail]'"] * 2
    )
    expect(card.locator(".run-progress")).to_contain_text("2 failed")

    card.get_by_role("button", name="Retry failed").click()
    expect(page.locator(".toast")).to_contain_text("2 task(s) of “uploads” queued again.")
    expect(card.locator(".run-head .badge")).to_have_text("failed")  # it fails again, for good
    with server.api("alice") as api:
        log = api.get(f"/batches/{failing}/log", params={"limit": 1000}).json()["items"]
    assert [e["data"].get("retried") for e in log if e["type"] == "batch_update"].count(2) == 1
    shot(page, "img2img-failed")

    page.locator("#pick-files").set_input_files([pets / "cat.png"])
    page.get_by_label("Model").select_option("glacier")
    page.get_by_label("Prompt (for every image)").fill("a slow cat")
    page.get_by_text("More settings").click()
    page.get_by_label("Batch name").fill("glacial")
    waiting = _start(page)
    card = _card(page, waiting)
    expect(card.get_by_role("button", name="Cancel batch")).to_be_enabled()
    card.get_by_role("button", name="Cancel batch").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel “glacial”?")
    dialog.get_by_role("button", name="Cancel batch").click()
    expect(card.locator(".run-head .badge")).to_have_text("cancelled")
    expect(card.get_by_role("button", name="Cancel batch")).to_be_disabled()
    assert server.wait_batch("alice", waiting)["status"] == "cancelled"
    axe(page)
    shot(page, "img2img-cancelled")


def test_results_on_a_phone_in_chinese(
    browse: Browse, server: Server, pets: Path, shot: Callable[[Page, str], Path]
) -> None:
    with server.api("bob") as api, (pets / "cat.png").open("rb") as cat:
        made = api.post(
            "/batches/upload",
            files={"files": ("猫.png", cat, "image/png")},
            data={"prompt": "一只猫"},
        )
    assert made.status_code == 201, made.text
    batch_id = made.json()["id"]
    server.wait_batch("bob", batch_id)
    page, _ = browse("bob", locale="zh-CN", viewport={"width": 360, "height": 740})
    page.goto(f"/img2img?batch={batch_id}")
    card = _card(page, batch_id)
    expect(card.get_by_role("img", name="猫.png 的结果")).to_be_visible()
    expect(page.get_by_role("button", name="选择文件夹")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    axe(page)
    shot(page, "img2img-phone-zh")

    alice, watch = browse("alice")  # someone else's batch in the address shows nothing of it
    watch.allow(r"status of 404")  # what the API answers for it
    alice.goto(f"/img2img?batch={batch_id}")
    expect(alice.get_by_role("button", name="Start")).to_be_visible()
    expect(alice.locator("article.run")).to_have_count(0)
    expect(alice).to_have_url(f"{server.url}/img2img")
