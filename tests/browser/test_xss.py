"""XSS: payloads in everything a user names (batch names, task keys, prompts, negative
prompts, a failed task's error, preset titles, uploaded file names, a search, a sign-in
``next``) are shown as text on every page of the web UI, and nothing of them runs.

Each payload, if it ran, would set ``window.__xss`` (or open a dialog, or add an element
with a handler): checked on every page twice, once under the pages' Content Security
Policy (which must not even have to refuse anything: a refusal is a console error, and
the watch fails the test) and once with the policy bypassed, so the templates and
scripts are shown to insert text, never HTML, whatever the policy would have stopped.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image
from playwright.sync_api import Page

from tests.browser.conftest import Browse, Server, settled

#: each sets window.__xss to its number if it ever runs
PAYLOADS = (
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=2">',
    "'><svg onload=window.__xss=3>",
    "javascript:window.__xss=4",
    "${window.__xss=5}`;window.__xss=5;`",
    "</script><script>window.__xss=6</script>",
    "{{7*7}}<b onmouseover=window.__xss=7>x</b>",
    "<iframe srcdoc='<script>parent.__xss=8</script>'>",
)
#: elements or attributes a payload would have added, had it been parsed as HTML
INJECTED = (
    "img[src='x'], svg[onload], b[onmouseover], iframe[srcdoc], [onerror], [onload],"
    " a[href^='javascript:'], script:not([src]):not([type='application/json'])"
)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def hostile(server: Server) -> dict[str, Any]:
    """alice's work named with payloads: a finished batch (one task fails for good, its
    error quoting its prompt), a paused one in the queue, uploads, a preset (root's)."""
    tasks = [
        {"prompt": f"{p} a fox", "negative_prompt": p, "key": f"k{i}-{p}"[:120]}
        for i, p in enumerate(PAYLOADS)
    ]
    tasks.append({"prompt": f"[fail] {PAYLOADS[1]}", "key": "fails"})
    spec = {"name": PAYLOADS[1], "defaults": {"width": 64, "height": 64}, "tasks": tasks}
    with server.api("alice") as api:
        made = api.post("/batches", json=spec)
        if made.status_code == 422:  # a key refused as a name: the payloads stay in prompts
            for task in tasks:
                task.pop("key", None)
            made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
        done = server.wait_batch("alice", made.json()["id"])
        waiting = dict(spec, name=PAYLOADS[0], defaults={"backend": "slowpoke", **spec["defaults"]})
        queued = api.post("/batches", json=waiting)
        assert queued.status_code == 201, queued.text
        assert api.post(f"/batches/{queued.json()['id']}/pause").status_code == 200
        files = [("files", (f"{p}.png", png(), "image/png")) for p in PAYLOADS[:3]]
        assert api.post("/assets", files=files).status_code == 201
    with server.api("root") as api:
        preset = {"title": PAYLOADS[2], "content": f"{{prompt}}, {PAYLOADS[4]}"}
        assert api.post("/presets", json=preset).status_code == 201
        named = api.post("/admin/users", json={"name": PAYLOADS[6], "credits": 1})
        assert named.status_code in (201, 422), named.text  # shown, or refused as a name
    return {"done": done, "queued": queued.json()}


def pages(hostile: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(user, path) of every page, with a search and a sign-in target that carry payloads."""
    for path in ("/", "/batch", "/img2img", "/queue", "/records"):
        yield "alice", path
    yield "alice", f"/batches/{hostile['done']['id']}"
    yield "alice", f"/records?q={quote(PAYLOADS[1])}"
    for section in ("presets", "users", "batches", "stats"):
        yield "root", f"/admin#{section}"
    yield "root", "/queue"
    yield None, f"/login?next={quote('javascript:window.__xss=9')}"


def nothing_ran(page: Page, path: str, dialogs: list[str]) -> None:
    assert page.evaluate("() => window.__xss") is None, path
    assert not dialogs, (path, dialogs)
    injected = page.evaluate(f"() => document.querySelectorAll({INJECTED!r}).length")
    assert injected == 0, path


@pytest.mark.slow
@pytest.mark.parametrize("bypass_csp", [False, True], ids=["with-csp", "csp-bypassed"])
def test_payloads_show_as_text_and_never_run(
    browse: Browse, hostile: dict[str, Any], bypass_csp: bool
) -> None:
    seen = 0
    for user, path in pages(hostile):
        page, watch = browse(user, bypass_csp=bypass_csp)
        dialogs: list[str] = []
        page.on("dialog", lambda d, found=dialogs: (found.append(d.message), d.dismiss()))
        page.goto(path)
        if user is not None:
            settled(page)
        else:
            page.wait_for_load_state("load")
        nothing_ran(page, path, dialogs)
        text = page.evaluate("() => document.body.innerText")
        seen += sum(p in text for p in PAYLOADS)
        if path.startswith("/batches/"):
            assert PAYLOADS[1] in text  # the batch's name, as text
            assert f"{PAYLOADS[0]} a fox" in text  # a prompt, as text
        if path.startswith("/records?q="):
            assert page.locator("input[type=search]").first.input_value() == PAYLOADS[1]
        if path == "/admin#presets":
            assert PAYLOADS[2] in text  # the preset's title
        # hovering and focusing everything: a handler smuggled into the page would fire
        page.mouse.move(10, 10)
        page.keyboard.press("Tab")
        nothing_ran(page, path, dialogs)
        assert not watch.unexpected(), (path, watch.unexpected())
    assert seen >= len(PAYLOADS)  # the payloads were on the pages, as text
