"""An open event stream ends when its caller may no longer read it, over real HTTP.

docs/web.md promises that revoking a token ends its browser sessions at their next
request; a stream is one long request, so it checks its caller again every heartbeat
(``[server] heartbeat_seconds``, 0.2 s here) and ends once the token is revoked, the user
disabled or the session cookie expired. Streams of everyone else go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from apikit import Live, api_settings, serving, spec

from pixelkiln.db.users import add_user, hash_token
from pixelkiln.service.sessions import COOKIE, session_value

pytestmark = pytest.mark.anyio

ENDED = ": the session has ended"
PATIENCE = 20.0  #: seconds a stream may take to end before the test fails (not a timing test)


class Site:
    """A served app with auth on, users' tokens, and clients to close at the end."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, int] = {}
        self.clients: list[httpx.AsyncClient] = []

    def client(self, headers: dict[str, str]) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.live.url, headers=headers, timeout=PATIENCE)
        self.clients.append(client)
        return client

    def bearer(self, user: str) -> httpx.AsyncClient:
        return self.client({"Authorization": f"Bearer {self.tokens[user]}"})

    def cookie(self, value: str) -> httpx.AsyncClient:
        return self.client({"Cookie": f"{COOKIE}={value}"})

    async def add(self, name: str, *, admin: bool = False) -> None:
        user, token = await self.live.app.state.ctx.write(add_user, name, is_admin=admin)
        self.tokens[name], self.ids[name] = token, user.id

    async def sign_in(self, user: str) -> httpx.AsyncClient:
        """A browser signed in with the user's token (it holds the session cookie)."""
        async with httpx.AsyncClient(base_url=self.live.url) as anonymous:
            r = await anonymous.post("/api/v1/session", json={"token": self.tokens[user]})
        assert r.status_code == 200, r.text
        return self.cookie(r.cookies[COOKIE])


@pytest.fixture
async def site(database_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    """Auth on; root (admin), alice and bob; SQLite and PostgreSQL."""
    data = tmp_path / "data"
    settings = api_settings(
        data,
        storage={"data_dir": str(data), "database_url": database_url},
        auth={"enabled": True},
        server={"heartbeat_seconds": 0.2},
    )
    async with serving(settings) as live:
        site = Site(live)
        for name in ("root", "alice", "bob"):
            await site.add(name, admin=name == "root")
        try:
            yield site
        finally:
            for client in site.clients:
                await client.aclose()


class Stream:
    """An open event stream, read line by line."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self.lines = lines

    async def next_line(self) -> str | None:
        """The next line; None once the server ended the stream."""
        try:
            return await asyncio.wait_for(anext(self.lines), PATIENCE)
        except StopAsyncIteration:
            return None

    async def keeps_going(self) -> None:
        """Waits for a keep-alive: the stream is open and live."""
        while (line := await self.next_line()) != ": keep-alive":
            assert line is not None, "the stream ended"

    async def ends(self) -> None:
        """Reads to the end of the stream; its last words say the session ended."""

        async def last_words() -> str | None:
            last = None
            while (line := await self.next_line()) is not None:
                last = line or last
            return last

        try:
            last = await asyncio.wait_for(last_words(), PATIENCE)
        except TimeoutError:
            raise AssertionError("the stream went on") from None
        assert last == ENDED


@contextlib.asynccontextmanager
async def stream(client: httpx.AsyncClient, path: str) -> AsyncIterator[Stream]:
    async with client.stream("GET", path) as r:
        assert r.status_code == 200, await r.aread()
        opened = Stream(r.aiter_lines())
        await opened.keeps_going()
        yield opened


async def test_revoking_the_token_ends_its_cookie_and_bearer_streams(site: Site) -> None:
    browser, script, bob = await site.sign_in("alice"), site.bearer("alice"), site.bearer("bob")
    root = site.bearer("root")
    async with (
        stream(browser, "/api/v1/events") as by_cookie,
        stream(script, "/api/v1/events") as by_token,
        stream(bob, "/api/v1/events") as bobs,
    ):
        r = await root.delete(f"/api/v1/admin/users/{site.ids['alice']}/tokens")
        assert r.status_code == 204, r.text
        await by_cookie.ends()
        await by_token.ends()
        await bobs.keeps_going()  # not his token
        await bobs.keeps_going()
    assert (await browser.get("/api/v1/events")).status_code == 401  # the reconnect
    assert (await script.get("/api/v1/events")).status_code == 401


async def test_disabling_the_user_ends_the_stream_of_a_batch(site: Site) -> None:
    alice = await site.sign_in("alice")
    made = await alice.post(
        "/api/v1/batches",
        json=spec(*[f"moth {i}" for i in range(6)], backend="slow"),
        headers={"Origin": site.live.url},
    )
    assert made.status_code == 201, made.text
    batch_id = made.json()["id"]
    paused = await alice.post(
        f"/api/v1/batches/{batch_id}/pause", headers={"Origin": site.live.url}
    )
    assert paused.status_code == 200, paused.text  # its stream stays open: it does not end
    root = site.bearer("root")
    async with (
        stream(alice, f"/api/v1/batches/{batch_id}/events") as hers,
        stream(root, f"/api/v1/batches/{batch_id}/events") as admins,
    ):
        r = await root.patch(f"/api/v1/admin/users/{site.ids['alice']}", json={"active": False})
        assert r.status_code == 200, r.text
        await hers.ends()
        await admins.keeps_going()


async def test_an_expired_session_cookie_ends_its_stream(site: Site) -> None:
    keys = site.live.app.state.ctx.keys
    short = site.cookie(session_value(keys, hash_token(site.tokens["bob"]), ttl=3))
    # The cookie is good for 2-3 s (whole seconds): the stream opens with it (200), but
    # on a loaded machine it may lapse before the first keep-alive, so none is awaited.
    async with short.stream("GET", "/api/v1/events") as r:
        assert r.status_code == 200, await r.aread()
        await Stream(r.aiter_lines()).ends()
    assert (await short.get("/api/v1/events")).status_code == 401  # the reconnect
