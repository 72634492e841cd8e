"""Every page on a phone and in the dark: nothing wider than the screen, axe still
passes (contrast is checked again in the dark palette), every control reachable by Tab."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Browse, Server, axe, settled

PAGES = ["/", "/batch", "/img2img", "/queue", "/records", "/admin"]


@pytest.fixture(scope="module", autouse=True)
def some_work(server: Server) -> None:
    """A finished batch, so pages with lists show rows and thumbnails."""
    spec = {
        "name": "frame check",
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": f"a lantern {i}", "key": f"l{i}"} for i in range(3)],
    }
    with server.api("root") as api:
        made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
    server.wait_batch("root", made.json()["id"])


def _no_overflow(page: Page) -> None:
    wide = page.evaluate("() => document.scrollingElement.scrollWidth - window.innerWidth")
    assert wide <= 1, f"{page.url} is {wide}px wider than a phone's screen"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_pages_fit_a_phone_in_light_and_dark(
    browse: Browse, scheme: str, shot: Callable[[Page, str], Path]
) -> None:
    page, _ = browse(
        "root", viewport={"width": 360, "height": 740}, color_scheme=scheme, is_mobile=True
    )
    for path in [*PAGES, "/batches/1"]:
        page.goto(path)
        settled(page)
        _no_overflow(page)
        axe(page)
        name = path.strip("/").replace("/", "-") or "generate"
        shot(page, f"{scheme}-{name}")


def test_every_control_has_a_name_and_is_reachable_by_tab(browse: Browse) -> None:
    page, _ = browse("root")
    for path in PAGES:
        page.goto(path)
        settled(page)
        nameless = page.evaluate(
            """() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
                .filter((e) => e.offsetParent !== null && e.type !== 'hidden')
                .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                    && !e.getAttribute('aria-labelledby') && !e.getAttribute('title')
                    && !(e.textContent || '').trim() && !e.getAttribute('placeholder'))
                .map((e) => e.outerHTML.slice(0, 120))"""
        )
        assert not nameless, f"{path}: controls without a name: {nameless}"
        unreachable = page.evaluate(
            """() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
                .filter((e) => e.offsetParent !== null && !e.disabled && e.tabIndex < 0)
                .map((e) => e.outerHTML.slice(0, 120))"""
        )
        assert not unreachable, f"{path}: controls out of the Tab order: {unreachable}"
