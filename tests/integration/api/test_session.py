"""Browser sessions over real HTTP: the cookie signing in sets, what it opens, the Origin
rule for writes, and every way a session ends (always 401, never 500).

A browser sends the cookie by itself; here each client sends it as a ``Cookie`` header
it was given, so a test says exactly which cookie (and which ``Origin``) a request has.
"""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Live, api_settings, png_bytes, serving, spec
from cryptography.fernet import Fernet
from starlette.requests import Request

from pixelkiln.api.deps import ApiContext, same_origin
from pixelkiln.config import Settings
from pixelkiln.db.users import add_user, hash_token
from pixelkiln.keybox import KeyBox
from pixelkiln.service.sessions import COOKIE, session_token_hash, session_value

TTL = 3600  #: [auth] session_ttl in these tests: the cookie's Max-Age
PROXY = "https://kiln.example.com"  #: the origin a proxy serves the pages at
EVIL = "http://evil.example"


#: one default TLS context for the many clients (each of its own loads the CA file: 30 ms)
_TLS = ssl.create_default_context()


@dataclass
class Site:
    """A served app with auth on, its users' tokens, and clients that send one cookie."""

    live: Live
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return self.live.url

    @property
    def ctx(self) -> ApiContext:
        ctx: ApiContext = self.live.app.state.ctx
        return ctx

    def client(self, headers: dict[str, str | bytes] | None = None) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.live.url, headers=headers or {}, timeout=20, verify=_TLS
        )
        self.clients.append(client)
        return client

    def bearer(self, user: str) -> httpx.AsyncClient:
        return self.client({"Authorization": f"Bearer {self.tokens[user]}"})

    def with_cookie(self, value: str) -> httpx.AsyncClient:
        """A browser holding this session cookie (and nothing else)."""
        return self.client({"Cookie": f"{COOKIE}={value}"})

    async def add(self, name: str, *, admin: bool = False) -> None:
        user, token = await self.ctx.write(add_user, name, is_admin=admin)
        self.tokens[name], self.ids[name] = token, user.id

    async def sign_in(self, user: str) -> str:
        """The cookie's value after signing in with the user's token."""
        r = await self.client().post("/api/v1/session", json={"token": self.tokens[user]})
        assert r.status_code == 200, r.text
        name, value, _ = set_cookie(r)
        assert name == COOKIE
        return value


def set_cookie(response: httpx.Response) -> tuple[str, str, dict[str, str]]:
    """The one ``Set-Cookie`` of a response: name, value and attributes (lower-cased)."""
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    first, *rest = (part.strip() for part in headers[0].split(";"))
    name, _, value = first.partition("=")
    attrs = {k.lower(): v for k, _, v in (part.partition("=") for part in rest)}
    return name, value, attrs


def site_settings(data: Path, database_url: str, **auth: Any) -> Settings:
    return api_settings(
        data,
        storage={"database_url": database_url},
        auth={"enabled": True, "session_ttl": TTL, "allowed_origins": [PROXY + "/"], **auth},
    )


@contextlib.asynccontextmanager
async def site_on(settings: Settings) -> AsyncIterator[Site]:
    async with serving(settings) as live:
        site = Site(live)
        try:
            yield site
        finally:
            for client in site.clients:
                await client.aclose()


@pytest.fixture
async def site(database_url: str, tmp_path: Path) -> AsyncIterator[Site]:
    """Auth on; users root (admin), alice and bob; SQLite and PostgreSQL."""
    async with site_on(site_settings(tmp_path / "data", database_url)) as running:
        await running.add("root", admin=True)
        await running.add("alice")
        await running.add("bob")
        yield running


async def finished_batch(client: httpx.AsyncClient, *prompts: str) -> dict[str, Any]:
    r = await client.post("/api/v1/batches?wait=true", json=spec(*prompts))
    assert r.status_code in (200, 201), r.text
    batch: dict[str, Any] = r.json()
    assert batch["status"] == "completed", batch
    return batch


def image_ids(batch: dict[str, Any]) -> list[int]:
    return [image["id"] for task in batch["tasks"] for image in task["images"]]


async def read_events(
    client: httpx.AsyncClient, path: str, until_done_of: int
) -> tuple[int, list[dict[str, Any]]]:
    """The stream's status and its events up to the ``done`` of batch ``until_done_of``
    (nothing read when the status is not 200)."""
    events: list[dict[str, Any]] = []
    async with client.stream("GET", path) as r:
        if r.status_code != 200:
            return r.status_code, events
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
            elif not line and "data" in fields:
                event = {"event": fields["event"], "data": json.loads(fields["data"])}
                events.append(event)
                fields = {}
                if event["event"] == "done" and event["data"]["batch_id"] == until_done_of:
                    break
    return 200, events


def keybox(secret: str = "x" * 43 + "=") -> KeyBox:
    """Keys under a configured secret (none is read from or written to a data folder)."""
    return KeyBox(Settings(auth={"secret_key": secret}))


pytestmark = pytest.mark.anyio


# --- signing in ---------------------------------------------------------------------


async def test_signing_in_sets_an_httponly_strict_cookie_for_the_session_ttl(site: Site) -> None:
    r = await site.client().post("/api/v1/session", json={"token": site.tokens["alice"]})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "alice"
    name, value, attrs = set_cookie(r)
    assert name == COOKIE
    # no Secure over plain http (the browser would drop it), no Domain (this host only)
    assert attrs == {"httponly": "", "max-age": str(TTL), "path": "/", "samesite": "strict"}
    assert site.tokens["alice"] not in value  # the token itself never reaches the browser
    assert value.split(".")[0] == hash_token(site.tokens["alice"])


async def test_over_https_the_cookie_is_secure(site: Site) -> None:
    """Behind a TLS proxy on this machine (uvicorn trusts X-Forwarded-Proto from 127.0.0.1)."""
    r = await site.client({"X-Forwarded-Proto": "https"}).post(
        "/api/v1/session", json={"token": site.tokens["alice"]}
    )
    assert r.status_code == 200, r.text
    _, _, attrs = set_cookie(r)
    assert attrs["secure"] == "" and attrs["samesite"] == "strict" and "httponly" in attrs


async def test_a_bad_token_signs_nobody_in(site: Site) -> None:
    http = site.client()
    for token in ("pk_wrong", site.tokens["alice"] + "x", "x" * 200):
        r = await http.post("/api/v1/session", json={"token": token})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.json()["error"]["field"] == "token"
        assert "set-cookie" not in r.headers
    for body in ({"token": ""}, {"token": "x" * 201}, {}, {"token": 5}):
        r = await http.post("/api/v1/session", json=body)
        assert r.status_code == 422 and "set-cookie" not in r.headers, (body, r.text)
    # a good token, from another site's page: refused (no signing a victim in as you)
    r = await http.post(
        "/api/v1/session", json={"token": site.tokens["alice"]}, headers={"Origin": EVIL}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    assert "set-cookie" not in r.headers


# --- what the cookie opens ----------------------------------------------------------


async def test_the_cookie_alone_opens_json_images_zips_and_event_streams(site: Site) -> None:
    batch = await finished_batch(site.bearer("alice"), "a moth", "a kiln")
    first = image_ids(batch)[0]
    browser = site.with_cookie(await site.sign_in("alice"))

    assert (await browser.get("/api/v1/me")).json()["name"] == "alice"
    listed = (await browser.get("/api/v1/batches")).json()["items"]
    assert [b["id"] for b in listed] == [batch["id"]]
    assert (await browser.get(f"/api/v1/batches/{batch['id']}")).status_code == 200
    found = (await browser.get("/api/v1/images", params={"batch_id": batch["id"]})).json()
    assert sorted(i["id"] for i in found["items"]) == sorted(image_ids(batch))

    png = await browser.get(f"/api/v1/images/{first}/file")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    thumb = await browser.get(f"/api/v1/images/{first}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    archive = await browser.get(f"/api/v1/batches/{batch['id']}/images.zip")
    assert archive.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(archive.content)).namelist()) == 2

    path = f"/api/v1/batches/{batch['id']}/events"
    status, events = await read_events(browser, path, batch["id"])
    assert status == 200 and events[-1]["event"] == "done"
    assert sum(e["event"] == "image_generated" for e in events) == 2
    status, mine = await read_events(browser, "/api/v1/events?after=0", batch["id"])
    assert status == 200 and {e["data"]["batch_id"] for e in mine} == {batch["id"]}

    nobody = site.client()  # the same requests without the cookie: none of it opens
    for path in (f"/api/v1/images/{first}/file", f"/api/v1/batches/{batch['id']}/images.zip"):
        assert (await nobody.get(path)).status_code == 401
    assert (await read_events(nobody, "/api/v1/events?after=0", batch["id"]))[0] == 401


async def test_alices_cookie_never_shows_bobs_work(site: Site) -> None:
    bobs = await finished_batch(site.bearer("bob"), "bob's secret")
    alices = await finished_batch(site.bearer("alice"), "alice's moth")
    bob_image = image_ids(bobs)[0]
    alice = site.with_cookie(await site.sign_in("alice"))

    listed = (await alice.get("/api/v1/batches")).json()["items"]
    assert [b["id"] for b in listed] == [alices["id"]]
    records = (await alice.get("/api/v1/images")).json()["items"]
    assert [i["id"] for i in records] == image_ids(alices)
    assert (await alice.get("/api/v1/images", params={"q": "secret"})).json()["items"] == []
    for path in (
        f"/api/v1/batches/{bobs['id']}",
        f"/api/v1/batches/{bobs['id']}/images.zip",
        f"/api/v1/images/{bob_image}",
        f"/api/v1/images/{bob_image}/file",
        f"/api/v1/images/{bob_image}/thumbnail",
    ):
        r = await alice.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert b"secret" not in r.content
    assert (await read_events(alice, f"/api/v1/batches/{bobs['id']}/events", 0))[0] == 404
    # bob's events come first in the log: alice's stream from the start skips them
    status, events = await read_events(alice, "/api/v1/events?after=0", alices["id"])
    assert status == 200 and {e["data"]["batch_id"] for e in events} == {alices["id"]}
    # and a write on bob's batch with alice's cookie, from our own page: not hers
    r = await alice.post(f"/api/v1/batches/{bobs['id']}/retry", headers={"Origin": site.origin})
    assert r.status_code == 404


# --- the Origin rule for writes -------------------------------------------------------


async def test_cookie_writes_must_come_from_our_own_pages(site: Site) -> None:
    browser = site.with_cookie(await site.sign_in("alice"))
    body = spec("a moth")
    ours = await browser.post("/api/v1/batches", json=body, headers={"Origin": site.origin})
    assert ours.status_code == 201, ours.text
    proxied = await browser.post("/api/v1/batches", json=body, headers={"Origin": PROXY})
    assert proxied.status_code == 201, proxied.text  # [auth] allowed_origins names it

    port = int(site.origin.rsplit(":", 1)[1])
    foreign = (EVIL, "null", f"http://127.0.0.1:{port + 1}", f"https://evil.example:{port}")
    for origin in (*foreign, None):
        headers = {"Origin": origin} if origin is not None else {}
        for method, path, kwargs in (
            ("POST", "/api/v1/batches", {"json": body}),
            ("POST", "/api/v1/assets", {"files": {"file": ("a.png", png_bytes())}}),
            ("DELETE", f"/api/v1/batches/{ours.json()['id']}", {}),
            ("DELETE", "/api/v1/session", {}),  # signing you out from another site
        ):
            if origin is None and path == "/api/v1/session":
                continue  # no Origin: a script clearing its own cookie, which is fine
            r = await browser.request(method, path, headers=headers, **kwargs)
            assert r.status_code == 403, (origin, method, path, r.text)
            assert r.json()["error"]["code"] == "cross_site"
            assert "set-cookie" not in r.headers
    # reading needs no Origin: SameSite=Strict already keeps other sites' pages out
    assert (await browser.get("/api/v1/me", headers={"Origin": EVIL})).status_code == 200
    mine = (await site.bearer("alice").get("/api/v1/batches")).json()["items"]
    assert len(mine) == 2  # the refused writes made nothing


async def test_bearer_writes_need_no_origin(site: Site) -> None:
    """Scripts send a token and no Origin; a token sent from another site's page is
    refused like a cookie."""
    script = site.bearer("alice")
    assert (await script.post("/api/v1/batches", json=spec("a"))).status_code == 201
    r = await script.post("/api/v1/batches", json=spec("a"), headers={"Origin": EVIL})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    # a cookie alongside the header is not what authorises: the token is
    both = site.client(
        {"Authorization": f"Bearer {site.tokens['bob']}", "Cookie": f"{COOKIE}=junk"}
    )
    made = await both.post("/api/v1/batches", json=spec("b"))
    assert made.status_code == 201
    assert (await both.get("/api/v1/me")).json()["name"] == "bob"


async def test_signing_out_clears_the_cookie(site: Site) -> None:
    browser = site.with_cookie(await site.sign_in("alice"))
    r = await browser.delete("/api/v1/session", headers={"Origin": site.origin})
    assert r.status_code == 204
    name, value, attrs = set_cookie(r)
    assert (name, value.strip('"')) == (COOKIE, "")
    assert attrs["max-age"] == "0" and attrs["path"] == "/"
    assert "httponly" in attrs and attrs["samesite"] == "strict"
    # signing out of no session is no error
    assert (await site.client().delete("/api/v1/session")).status_code == 204


# --- how a session ends -----------------------------------------------------------------


async def ended(site: Site, value: str | bytes, image: int) -> None:
    """The cookie ``value`` opens nothing: JSON, a file, a stream, a write are all 401."""
    cookie = value if isinstance(value, bytes) else value.encode()
    client = site.client({"Cookie": COOKIE.encode() + b"=" + cookie})
    me = await client.get("/api/v1/me")
    assert me.status_code == 401, (value, me.text)
    assert me.json()["error"]["code"] == "unauthorized"
    assert (await client.get(f"/api/v1/images/{image}/file")).status_code == 401
    assert (await read_events(client, "/api/v1/events", 0))[0] == 401
    write = await client.post("/api/v1/batches", json=spec("x"), headers={"Origin": site.origin})
    assert write.status_code == 401, write.text


async def test_revoking_the_token_or_disabling_the_user_ends_the_session(site: Site) -> None:
    image = image_ids(await finished_batch(site.bearer("alice"), "a moth"))[0]
    await site.add("carol")
    await site.add("dave")
    carol = await site.sign_in("carol")
    dave = await site.sign_in("dave")
    root = site.bearer("root")
    for value in (carol, dave):
        assert (await site.with_cookie(value).get("/api/v1/me")).status_code == 200
    r = await root.delete(f"/api/v1/admin/users/{site.ids['carol']}/tokens")
    assert r.status_code == 204
    await ended(site, carol, image)
    r = await root.patch(f"/api/v1/admin/users/{site.ids['dave']}", json={"active": False})
    assert r.status_code == 200
    await ended(site, dave, image)


async def test_expired_tampered_and_garbage_cookies_are_401(site: Site) -> None:
    image = image_ids(await finished_batch(site.bearer("alice"), "a moth"))[0]
    good = await site.sign_in("alice")
    token_hash, exp, sig = good.split(".")
    keys = site.ctx.keys
    alice_hash = hash_token(site.tokens["alice"])
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for value in (
        session_value(keys, alice_hash, ttl=60, now=time.time() - 3600),  # expired
        session_value(keybox("y" * 43 + "="), alice_hash, ttl=60),  # signed under another secret
        f"{token_hash}.{exp}.{flipped}",  # tampered signature
        f"{token_hash}.{int(exp) + 86400}.{sig}",  # a longer life, same signature
        f"{hash_token(site.tokens['bob'])}.{exp}.{sig}",  # someone else's token
        good.upper(),
        good + "0",
        "",
        "x",
        "a.b.c",
        "." * 200,
        "0" * 4000,
        f"{token_hash}.{'9' * 13}.{sig}",
        f"{token_hash}.-1.{sig}",
        b"\xff\xfe\x80",  # not even text
    ):
        await ended(site, value, image)
    assert (await site.with_cookie(good).get("/api/v1/me")).status_code == 200


async def test_a_new_secret_ends_every_session(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    first = site_settings(data, database_url, secret_key=Fernet.generate_key().decode())
    async with site_on(first) as before:
        await before.add("alice")
        value = await before.sign_in("alice")
        image = image_ids(await finished_batch(before.bearer("alice"), "a moth"))[0]
        assert (await before.with_cookie(value).get("/api/v1/me")).status_code == 200
    second = site_settings(data, database_url, secret_key=Fernet.generate_key().decode())
    async with site_on(second) as after:
        await ended(after, value, image)
    async with site_on(first) as again:  # the old secret back: its sessions work again
        assert (await again.with_cookie(value).get("/api/v1/me")).status_code == 200


# --- auth off -----------------------------------------------------------------------------


async def test_with_auth_off_no_sign_in_and_only_foreign_origins_are_refused(
    tmp_path: Path, database_url: str
) -> None:
    settings = api_settings(tmp_path / "data", storage={"database_url": database_url})
    async with site_on(settings) as site:
        http = site.client()
        r = await http.post("/api/v1/session", json={"token": "pk_anything"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "auth_disabled"
        assert "set-cookie" not in r.headers
        body = spec("a moth")
        assert (await http.post("/api/v1/batches", json=body)).status_code == 201  # scripts
        ours = await http.post("/api/v1/batches", json=body, headers={"Origin": site.origin})
        assert ours.status_code == 201
        port = site.origin.rsplit(":", 1)[1]
        local = {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}
        assert (await http.post("/api/v1/batches", json=body, headers=local)).status_code == 201
        for headers in (
            {"Origin": EVIL},  # a form on another site posted to this loopback server
            {"Origin": "null"},
        ):
            r = await http.post("/api/v1/batches", json=body, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site", headers
        # DNS rebinding: evil.example re-pointed at 127.0.0.1. Origin and Host agree, and
        # a read would be answered to the attacker's page: any request naming another
        # host is refused before it reaches a route (api/hosts.py)
        rebound = {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}
        for method, path in (
            ("POST", "/api/v1/batches"),
            ("GET", "/api/v1/batches"),
            ("GET", "/api/v1/events"),
            ("GET", "/records"),
        ):
            r = await http.request(
                method, path, json=body if method == "POST" else None, headers=rebound
            )
            assert r.status_code == 421, (method, path)
            assert r.json()["error"]["code"] == "host_not_allowed"
        junk = site.client({"Cookie": f"{COOKIE}=junk"})  # a stale cookie means nothing
        assert (await junk.get("/api/v1/batches")).status_code == 200


# --- service/sessions.py: the cookie's value ------------------------------------------------


HASH = "ab" * 32


def test_a_value_is_hash_expiry_and_signature() -> None:
    value = session_value(keybox(), HASH, ttl=60, now=1000.4)
    token_hash, exp, sig = value.split(".")
    assert (token_hash, exp) == (HASH, "1060") and len(sig) == 64
    assert session_value(keybox(), HASH, ttl=60, now=1000.4) == value  # no randomness
    assert session_token_hash(keybox(), value, now=1000.0) == HASH


def test_a_value_lasts_until_its_expiry_second() -> None:
    value = session_value(keybox(), HASH, ttl=60, now=1000.0)
    assert session_token_hash(keybox(), value, now=1060.0) == HASH
    assert session_token_hash(keybox(), value, now=1060.001) is None


def test_a_value_holds_only_under_its_own_secret() -> None:
    value = session_value(keybox(), HASH, ttl=60, now=1000.0)
    assert session_token_hash(keybox("y" * 43 + "="), value, now=1000.0) is None


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v + "\n",  # a regex's $ would have let this by
        lambda v: " " + v,
        lambda v: v.replace(".", ":"),
        lambda v: v[:-1],
        lambda v: v.upper(),
        lambda v: v.split(".")[0],
        lambda v: v + ".0",
        lambda v: "cd" * 32 + v[64:],  # another token, the same signature
    ],
)
def test_a_changed_value_carries_nothing(change: Any) -> None:
    value = session_value(keybox(), HASH, ttl=60, now=1000.0)
    assert session_token_hash(keybox(), change(value), now=1000.0) is None


# --- api/deps.py: whose page an Origin names ---------------------------------------------


def request_from(origin: str | None, host: str) -> Request:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


@pytest.mark.parametrize(
    ("origin", "host", "ours", "ours_with_auth_off"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True, True),
        ("http://127.9.9.9:8000", "127.9.9.9:8000", True, True),
        ("http://[::1]:8000", "[::1]:8000", True, True),
        ("http://LOCALHOST:8000", "localhost:8000", True, True),
        ("http://localhost", "localhost", True, True),
        ("https://kiln.example.com", "kiln.example.com", True, False),  # rebinding, auth off
        ("http://127.0.0.1:8001", "127.0.0.1:8000", False, False),
        ("http://evil.example", "127.0.0.1:8000", False, False),
        ("null", "127.0.0.1:8000", False, False),
        (None, "127.0.0.1:8000", False, False),
        ("https://proxy.example", "10.0.0.5:8000", True, True),  # listed in allowed
        ("https://PROXY.example/", "10.0.0.5:8000", True, True),
    ],
)
def test_same_origin(origin: str | None, host: str, ours: bool, ours_with_auth_off: bool) -> None:
    allowed = ["https://proxy.example/"]
    assert same_origin(request_from(origin, host), allowed) is ours
    assert same_origin(request_from(origin, host), allowed, loopback_only=True) is (
        ours_with_auth_off
    )
