"""The Admin page: concurrency, presets, users and credits, every batch, stats, backend
health; an admin's change is what the API (and the users) see next."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Browse, Server, axe, settled

Shot = Callable[[Page, str], Path]


def _limits(server: Server) -> dict[str, Any]:
    with server.api("root") as api:
        body: dict[str, Any] = api.get("/admin/concurrency").json()
    return {"": body, **{b["name"]: b for b in body["backends"]}}


def _titles(server: Server, user: str, **query: Any) -> list[str]:
    with server.api(user) as api:
        return [p["title"] for p in api.get("/presets", params=query).json()]


def _open(page: Page, section: str) -> None:
    page.goto(f"/admin#{section}")
    settled(page)


def test_an_admin_changes_the_concurrency_and_the_api_shows_it(
    browse: Browse, server: Server, shot: Shot
) -> None:
    page, _ = browse("root")
    _open(page, "concurrency")
    expect(page.get_by_role("heading", name="Concurrency", level=2)).to_be_visible()
    expect(page.get_by_role("link", name="Concurrency")).to_have_attribute("aria-current", "true")
    row = page.locator('tr[data-backend="slowpoke"]')
    expect(row.get_by_role("cell").nth(1)).to_have_text("2")  # kiln.toml says 2
    axe(page)
    shot(page, "concurrency")

    field = page.get_by_label("Per server for slowpoke")
    field.fill("5")
    field.press("Enter")  # by keyboard: Enter saves the row
    expect(page.get_by_text("slowpoke: 5 per server, applied now.")).to_be_visible()
    expect(row).to_contain_text("set here")
    slow = _limits(server)["slowpoke"]
    assert (slow["per_url"], slow["overridden"], slow["configured"]) == (5, True, 2)

    page.get_by_label("Tasks at once").fill("3")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("Global concurrency is 3 now.")).to_be_visible()
    assert _limits(server)[""]["concurrency"] == 3
    page.get_by_label("Tasks at once").fill("99")  # above [server] max_concurrency (10)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#global-error")).to_have_text("Enter a whole number from 1 to 10.")
    expect(page.get_by_label("Tasks at once")).to_have_attribute("aria-invalid", "true")
    assert _limits(server)[""]["concurrency"] == 3

    page.get_by_role("button", name="Back to kiln.toml").click()
    expect(page.get_by_label("Tasks at once")).to_have_value("4")
    page.get_by_role("button", name="Reset: slowpoke").click()
    expect(row).not_to_contain_text("set here")
    limits = _limits(server)
    assert (limits[""]["concurrency"], limits["slowpoke"]["per_url"]) == (4, 2)
    assert not limits["slowpoke"]["overridden"]


def _order(page: Page, *titles: str) -> None:
    """The presets table shows these titles, in this order."""
    expect(page.locator("#presets-table tbody th")).to_have_text(list(titles))


def test_an_admin_manages_presets_and_alice_sees_them(
    browse: Browse, server: Server, shot: Shot
) -> None:
    with server.api("root") as api:
        for title in ("Noir", "Sepia"):
            made = api.post(
                "/presets",
                json={"title": title, "content": f"{{prompt}}, {title}", "category": "film"},
            )
            assert made.status_code == 201, made.text
    page, watch = browse("root")
    _open(page, "presets")
    expect(page.locator("#presets-table tbody tr")).to_have_count(2)

    page.get_by_role("button", name="New preset").click()
    dialog = page.get_by_role("dialog", name="New preset")
    dialog.get_by_label("Title").fill("Watercolour")
    dialog.get_by_label("Category").fill("film")
    dialog.get_by_label("Prompt", exact=True).fill("{prompt}, soft watercolour")
    dialog.get_by_label("Parameters (JSON, optional)").fill("{not json")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_contain_text("JSON object")
    watch.allow(r"status of 422")  # a parameter the API refuses: its message is shown
    dialog.get_by_label("Parameters (JSON, optional)").fill('{"colour": "red"}')
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_contain_text("colour")
    dialog.get_by_label("Parameters (JSON, optional)").fill('{"aspect_ratio": "3:4"}')
    axe(page)
    shot(page, "preset-dialog")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_text("Created Watercolour.")).to_be_visible()
    _order(page, "Noir", "Sepia", "Watercolour")

    page.get_by_role("button", name="Edit: Noir").click()
    dialog = page.get_by_role("dialog", name="Edit “Noir”")
    expect(dialog.get_by_label("Title")).to_have_value("Noir")
    dialog.get_by_label("Title").fill("Noir classic")
    dialog.get_by_label("Title").press("Enter")
    expect(page.get_by_text("Saved Noir classic.")).to_be_visible()
    _order(page, "Noir classic", "Sepia", "Watercolour")

    # by keyboard: Watercolour up one place; the focus stays on its button
    page.get_by_role("button", name="Move up: Watercolour").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#presets-live")).to_have_text("Watercolour is now at position 2.")
    _order(page, "Noir classic", "Watercolour", "Sepia")
    expect(page.get_by_role("button", name="Move up: Watercolour")).to_be_focused()
    # by mouse: Sepia dragged to the top
    page.locator('#presets-table tr:has(th:text("Sepia"))').drag_to(
        page.locator('#presets-table tr:has(th:text("Noir classic"))'),
        target_position={"x": 20, "y": 2},
    )
    expect(page.locator("#presets-live")).to_have_text("Sepia is now at position 1.")
    assert _titles(server, "alice") == ["Sepia", "Noir classic", "Watercolour"]

    page.get_by_label("Active: Noir classic").uncheck()
    expect(page.get_by_text("Noir classic is inactive: users no longer see it.")).to_be_visible()
    assert _titles(server, "alice") == ["Sepia", "Watercolour"]
    assert _titles(server, "root", include_inactive="true") == [
        "Sepia",
        "Noir classic",
        "Watercolour",
    ]
    axe(page)
    shot(page, "presets")

    page.get_by_role("button", name="Delete: Sepia").click()
    confirm = page.get_by_role("dialog", name=re.compile("Delete the preset “Sepia”"))
    confirm.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Deleted Sepia.")).to_be_visible()
    _order(page, "Noir classic", "Watercolour")

    # alice: the active presets, in the admin's order, in her img2img preset picker
    assert _titles(server, "alice") == ["Watercolour"]
    alice, _ = browse("alice")
    alice.goto("/img2img")
    settled(alice)
    picker = alice.get_by_role("combobox", name="Preset", exact=True)
    expect(picker.locator("option", has_text="Watercolour")).to_have_count(1)
    expect(picker.locator("option", has_text="Noir classic")).to_have_count(0)  # inactive
    expect(picker.locator("option", has_text="Sepia")).to_have_count(0)  # deleted
    shot(alice, "alice-img2img-presets")


def test_an_admin_adds_a_user_grants_credits_and_revokes_tokens(
    browse: Browse, server: Server, shot: Shot
) -> None:
    page, watch = browse("root")
    _open(page, "users")
    expect(page.locator('tr[data-user="root"]')).to_contain_text("you")

    watch.allow(r"status of 422")  # a name the API refuses: its message is shown
    page.get_by_label("Name", exact=True).fill("no spaces please")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#user-error")).to_contain_text("name")
    page.get_by_label("Name", exact=True).fill("dora")
    page.get_by_label("Starting credits").fill("10")
    page.get_by_role("button", name="Add user").click()
    dialog = page.get_by_role("dialog", name="Token for dora")
    token = dialog.get_by_label("API token").input_value()
    assert token.startswith("pk_")
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.get_by_text("Copied.")).to_be_visible()
    axe(page)
    shot(page, "token-dialog")
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    # not kept in the page (cleared by the dialog's "close" event, a task after it hides)
    expect(page.locator("#token-value")).to_have_value("")
    dora = httpx.Client(
        base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}
    )
    assert dora.get("/me").json()["balance"] == 10

    row = page.locator('tr[data-user="dora"]')
    page.get_by_role("button", name="Credits: dora").click()
    credits = page.get_by_role("dialog", name="Credits for dora")
    expect(credits).to_contain_text("Balance now: 10")
    credits.get_by_label("Amount").fill("0")
    credits.get_by_role("button", name="Apply").click()
    expect(credits.get_by_role("alert")).to_have_text("Enter a whole number other than 0.")
    credits.get_by_label("Amount").fill("25")
    credits.get_by_label("Note (kept in the ledger)").fill("welcome")
    credits.get_by_role("button", name="Apply").click()
    expect(page.get_by_text("dora: balance now 35.")).to_be_visible()
    expect(row.get_by_role("cell").nth(2)).to_have_text("35")
    page.get_by_role("button", name="Credits: dora").click()
    credits.get_by_label("Amount").fill("-5")
    credits.get_by_label("Amount").press("Enter")
    expect(row.get_by_role("cell").nth(2)).to_have_text("30")
    entries = dora.get("/me/credits").json()["entries"]
    assert [(e["delta"], e["note"]) for e in entries[:2]] == [(-5, ""), (25, "welcome")]
    axe(page)
    shot(page, "users")

    page.get_by_role("button", name="Disable: dora").click()
    expect(row).to_contain_text("disabled")
    assert dora.get("/me").status_code == 401
    page.get_by_role("button", name="Enable: dora").click()
    expect(row).to_contain_text("enabled")
    assert dora.get("/me").status_code == 200

    page.get_by_role("button", name="Revoke tokens: dora").click()
    page.get_by_role("dialog", name=re.compile("Revoke every token of dora")).get_by_role(
        "button", name="Revoke tokens"
    ).click()
    expect(page.get_by_text("Every token of dora is revoked.")).to_be_visible()
    assert dora.get("/me").status_code == 401
    page.get_by_role("button", name="New token: dora").click()
    fresh = page.get_by_role("dialog", name="Token for dora").get_by_label("API token")
    new_token = fresh.input_value()
    assert new_token.startswith("pk_") and new_token != token
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="New token: dora")).to_be_focused()
    with httpx.Client(
        base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {new_token}"}
    ) as again:
        assert again.get("/me").json()["name"] == "dora"
    dora.close()


def _batch(server: Server, user: str, name: str) -> int:
    """A one-image batch of ``user``'s, submitted (not waited for)."""
    spec = {"name": name, "defaults": {"width": 64, "height": 64}, "tasks": [{"prompt": name}]}
    with server.api(user) as api:
        made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
    batch_id: int = made.json()["id"]
    return batch_id


def test_every_batch_stats_and_health_in_bookmarkable_sections(
    browse: Browse, server: Server, shot: Shot
) -> None:
    mine = _batch(server, "alice", "alice's lanterns")
    theirs = _batch(server, "bob", "bob's kites")
    failed = _batch(server, "bob", "a [fail] kite")  # fails for good: a recent error
    for user, batch_id in (("alice", mine), ("bob", theirs), ("bob", failed)):
        server.wait_batch(user, batch_id)
    with server.api("root") as api:
        alice_id = next(u["id"] for u in api.get("/admin/users").json() if u["name"] == "alice")
    page, _ = browse("root")
    _open(page, "batches")
    table = page.locator("#batches-table tbody")
    expect(table.get_by_role("link", name=f"#{mine}")).to_be_visible()
    expect(table.get_by_role("link", name=f"#{theirs}")).to_be_visible()
    expect(table.locator("tr", has_text="bob's kites")).to_contain_text("bob")
    axe(page)
    shot(page, "batches")

    page.get_by_label("Owner").select_option(label="alice")
    page.get_by_label("Status").select_option("completed")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(rf"#batches\?status=completed&owner={alice_id}$"))
    expect(table.get_by_role("link", name=f"#{theirs}")).to_have_count(0)
    expect(table.get_by_role("link", name=f"#{mine}")).to_be_visible()
    page.reload()  # a bookmark opens the same view
    settled(page)
    expect(page.get_by_label("Owner")).to_have_value(str(alice_id))
    expect(table.get_by_role("link", name=f"#{theirs}")).to_have_count(0)
    table.get_by_role("link", name=f"#{mine}").click()
    expect(page).to_have_url(f"{server.url}/batches/{mine}")  # an admin opens anyone's
    page.go_back()
    settled(page)

    page.get_by_role("link", name="Stats").click()
    expect(page.get_by_role("heading", name="Stats", level=2)).to_be_focused()
    settled(page)
    expect(page.locator("#stats-days-table tbody tr")).to_have_count(14)
    expect(page.locator("#stats-figures")).to_contain_text("Success rate")
    page.get_by_label("Period").select_option("7")
    expect(page).to_have_url(re.compile(r"#stats\?days=7$"))
    expect(page.locator("#stats-days-table tbody tr")).to_have_count(7)
    expect(page.locator("#stats-backends tbody")).to_contain_text("placeholder")
    axe(page)
    shot(page, "stats")

    page.get_by_role("link", name="Backend health").click()
    settled(page)
    expect(page.locator("#health-scheduler")).to_have_text("Scheduler: running.")
    card = page.get_by_role("article", name=re.compile("^slowpoke"))
    expect(card.locator(".badge").first).to_have_text("up")
    expect(card).to_contain_text("(local, no servers)")
    errors = page.get_by_role("article", name=re.compile("^placeholder")).locator("ul.errors li")
    expect(errors.first).to_contain_text("[fail]")
    expect(errors.first.get_by_role("link", name=f"batch {failed}")).to_be_visible()
    page.get_by_role("button", name="Check every server now").click()
    expect(page.locator("#health-scheduler")).to_contain_text("Servers checked at")
    axe(page)
    shot(page, "health")


SECTIONS = ["concurrency", "presets", "users", "batches", "stats", "health"]


def test_every_section_fits_a_phone_in_the_dark(browse: Browse, shot: Shot) -> None:
    page, _ = browse(
        "root", viewport={"width": 360, "height": 740}, color_scheme="dark", is_mobile=True
    )
    for section in SECTIONS:
        _open(page, section)
        expect(page.locator(f'.admin-section[data-section="{section}"]')).to_be_visible()
        wide = page.evaluate("() => document.scrollingElement.scrollWidth - window.innerWidth")
        assert wide <= 1, f"#{section} is {wide}px wider than a phone"
        shot(page, f"phone-dark-{section}")
    axe(page)  # the dark palette's contrast, on the section with the most colours


def test_the_admin_page_in_chinese_and_forbidden_to_others(
    browse: Browse, server: Server, shot: Shot
) -> None:
    page, _ = browse("root", locale="zh-CN")
    _open(page, "health")
    expect(page.get_by_role("heading", name="后端状态", level=2)).to_be_visible()
    expect(page.locator("#health-scheduler")).to_have_text("调度器：运行中。")  # noqa: RUF001
    page.get_by_role("link", name="用户与积分").click()
    settled(page)
    expect(page.get_by_role("button", name="添加用户")).to_be_visible()
    axe(page)
    shot(page, "users-zh")

    bob, watch = browse("bob")
    watch.allow(r"status of 403")
    answer = bob.goto("/admin#presets")
    assert answer is not None and answer.status == 403
    expect(bob.get_by_role("heading", name="Admins only")).to_be_visible()
    with server.api("bob") as api:
        assert api.get("/admin/backends/health").status_code == 403
        assert api.post("/presets", json={"title": "x", "content": "y"}).status_code == 403
