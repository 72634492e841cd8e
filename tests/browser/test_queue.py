"""The Queue page: alice's waiting batches in claim order, reordered by button, by
dragging and by keyboard; the order is saved, kept over a reload, and the API's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, Response, expect

from tests.browser.conftest import Browse, Server, axe


def _waiting_batch(server: Server, name: str) -> int:
    """A batch on the slow backend, paused at once: it waits in the queue (a task or two
    may have started; twenty do not finish before the pause)."""
    spec = {
        "name": name,
        "defaults": {"backend": "slowpoke", "width": 64, "height": 64},
        "tasks": [{"prompt": f"{name} {i}"} for i in range(20)],
    }
    with server.api("alice") as api:
        made = api.post("/batches", json=spec)
        assert made.status_code == 201, made.text
        batch_id: int = made.json()["id"]
        assert api.post(f"/batches/{batch_id}/pause").status_code == 200
    return batch_id


def _names(page: Page) -> list[str]:
    return page.locator("#queue-list .qname").all_inner_texts()


def _saved(page: Page, move: Callable[[], None]) -> None:
    """Do ``move`` and wait for the page to save the new order."""

    def is_save(response: Response) -> bool:
        return response.request.method == "PUT" and "/api/v1/queue" in response.url

    with page.expect_response(is_save) as saved:
        move()
    assert saved.value.ok, saved.value.text()


def _api_order(server: Server) -> list[str]:
    with server.api("alice") as api:
        return [b["name"] for b in api.get("/queue").json()["items"]]


def test_reorder_by_button_drag_and_keyboard_is_saved(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    for name in ("first", "second", "third"):
        _waiting_batch(server, name)
    page, _ = browse("alice")
    page.goto("/queue")
    items = page.locator("#queue-list li")
    expect(items).to_have_count(3)
    assert _names(page) == ["first", "second", "third"]
    expect(items.nth(0).locator(".pos")).to_have_text("1")
    expect(items.nth(0).get_by_role("progressbar")).to_be_visible()
    axe(page)
    shot(page, "queue")

    # the last to the top, by its button: saved at once and announced
    _saved(page, page.get_by_role("button", name="Move “third” to the top").click)
    live = page.locator("#queue-live")
    expect(live).to_have_text("“third” is now number 1 of 3.")
    expect(items.nth(0).locator(".qname")).to_have_text("third")
    expect(items.nth(2).locator(".pos")).to_have_text("3")
    assert _api_order(server) == ["third", "first", "second"]

    # drag "second" above "third"
    _saved(
        page,
        lambda: (
            items.nth(2).locator(".handle").drag_to(items.nth(0), target_position={"x": 40, "y": 4})
        ),
    )
    expect(live).to_have_text("“second” is now number 1 of 3.")
    assert _api_order(server) == ["second", "third", "first"]

    # keyboard: Alt+↑ on "first" moves it up one, the focus stays with it
    page.get_by_role("link", name="first").focus()
    _saved(page, lambda: page.keyboard.press("Alt+ArrowUp"))
    expect(live).to_have_text("“first” is now number 2 of 3.")
    expect(page.get_by_role("link", name="first")).to_be_focused()
    assert _api_order(server) == ["second", "first", "third"]
    # and a move button keeps the focus too
    page.get_by_role("button", name="Move “second” down").focus()
    _saved(page, lambda: page.keyboard.press("Enter"))
    expect(page.get_by_role("button", name="Move “second” down")).to_be_focused()
    assert _api_order(server) == ["first", "second", "third"]
    _saved(page, page.get_by_role("button", name="Move “first” to the bottom").click)
    assert _api_order(server) == ["second", "third", "first"]

    page.reload()
    expect(items).to_have_count(3)
    assert _names(page) == ["second", "third", "first"] == _api_order(server)
    shot(page, "queue-reordered")

    bob, _ = browse("bob")  # a second user sees none of alice's batches
    bob.goto("/queue")
    expect(bob.locator("#queue-empty")).to_be_visible()
    expect(bob.locator("#queue-list li")).to_have_count(0)


def test_the_queue_on_a_phone_in_chinese(
    browse: Browse, server: Server, shot: Callable[[Page, str], Path]
) -> None:
    # one batch ahead of it, whatever ran before on this server: a batch alone in the
    # queue is first already, and its "to the top" button is disabled
    _waiting_batch(server, "电脑")
    _waiting_batch(server, "手机")
    page, _ = browse("alice", locale="zh-CN", viewport={"width": 360, "height": 740})
    page.goto("/queue")
    target = page.get_by_role("button", name="将“手机”移到最前")
    expect(target).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    target.click()
    expect(page.locator("#queue-live")).to_contain_text("“手机”现在是第 1 个")
    axe(page)
    shot(page, "queue-phone-zh")
