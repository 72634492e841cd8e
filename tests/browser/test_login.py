"""Sign-in, the session cookie, sign-out, the frame every page shares, languages."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Browse, Server, axe

PAGES = ["/", "/batch", "/img2img", "/queue", "/records", "/admin", "/batches/1"]


def test_signing_in_with_a_token_sets_an_httponly_strict_cookie(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    page, watch = browse(None)
    page.goto("/records?q=moth")
    expect(page).to_have_url(f"{server.url}/login?next=%2Frecords%3Fq%3Dmoth")
    shot(page, "login")
    axe(page)

    watch.allow(r"status of 401")  # the wrong token first: the page says so
    page.get_by_label("API token").fill("pk_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    expect(page.get_by_label("API token")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("API token").fill(server.tokens["alice"])
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/records?q=moth")  # back where they were going
    expect(page.locator(".who")).to_have_text("alice")
    expect(page.locator("#balance")).to_have_text(re.compile(r"^[\d,]+ credits$"))
    cookie = next(c for c in page.context.cookies() if c["name"] == "kiln_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert server.tokens["alice"] not in cookie["value"]  # the token itself is not kept
    assert page.evaluate("() => document.cookie").find("kiln_session") == -1

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/login")
    assert not [c for c in page.context.cookies() if c["name"] == "kiln_session"]


def test_revoking_the_token_ends_the_browser_session(browse: Browse, server: Server) -> None:
    with server.api("root") as api:
        made = api.post("/admin/users", json={"name": "carol"}).json()
    server.tokens["carol"] = made["token"]
    page, _ = browse("carol")
    page.goto("/queue")
    expect(page.locator(".who")).to_have_text("carol")
    with server.api("root") as api:
        assert api.delete(f"/admin/users/{made['id']}/tokens").status_code == 204
    page.goto("/queue")
    expect(page).to_have_url(f"{server.url}/login?next=%2Fqueue")


def test_a_cookie_write_from_another_origin_is_refused(browse: Browse, server: Server) -> None:
    page, _ = browse("alice")
    page.goto("/queue")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    spec = {"name": "x", "tasks": [{"prompt": "a moth"}]}
    with httpx.Client(base_url=server.url, cookies=cookies) as http:
        foreign = http.post("/api/v1/batches", json=spec, headers={"Origin": "http://evil.test"})
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "cross_site"
        bare = http.post("/api/v1/batches", json=spec)  # no Origin: not from our pages
        assert bare.status_code == 403
        assert http.get("/api/v1/me").json()["name"] == "alice"  # reading is fine


def test_every_page_answers_in_both_languages_and_passes_axe(
    browse: Browse, shot: Callable[[Page, str], Path]
) -> None:
    for locale, nav in (("en-US", "Records"), ("zh-CN", "记录")):
        page, watch = browse("root", locale=locale)
        watch.allow(r"status of 404 .*/api/v1/batches/1\b")  # no batch 1 here: "not found"
        for path in PAGES:
            page.goto(path)
            expect(page.get_by_role("navigation").get_by_role("link", name=nav)).to_be_visible()
            axe(page)
        shot(page, f"frame-{locale}")


def test_the_language_and_theme_switches(browse: Browse) -> None:
    page, _ = browse("alice")
    page.goto("/records")
    page.get_by_role("button", name="中文").click()
    expect(page.get_by_role("link", name="记录")).to_be_visible()
    assert page.evaluate("() => document.documentElement.lang") == "zh-CN"
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("link", name="Records")).to_be_visible()
    page.get_by_role("button", name="Switch light / dark").click()
    theme = page.evaluate("() => document.documentElement.dataset.theme")
    assert theme in ("light", "dark")
    page.reload()
    assert page.evaluate("() => document.documentElement.dataset.theme") == theme


def test_admin_page_is_for_admins(browse: Browse, server: Server) -> None:
    page, watch = browse("bob")
    watch.allow(r"status of 403")
    response = page.goto("/admin")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Admins only")).to_be_visible()
    expect(page.get_by_role("navigation").get_by_role("link", name="Admin")).to_have_count(0)
