"""The web UI's pages over real HTTP, without a browser: each one answers HTML with the
security headers, sign-in redirects, where ``next=`` may lead, admins only, odd batch
paths, the language, and what the Content Security Policy needs of the templates.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from pixelkiln.db.users import add_user
from pixelkiln.service.sessions import COOKIE
from pixelkiln.web.headers import CONTENT_CSP, CSP
from pixelkiln.web.pages import PAGES, _messages_json, local_path
from tests.integration.api.apikit import Live, api_settings, serving, spec

WEB = Path(__file__).resolve().parents[2] / "pixelkiln" / "web"
TEMPLATES = WEB / "templates"
STATIC = WEB / "static"

#: a path a person types for each page (a batch's page at batch 1)
PATHS = {p.name: p.path.replace("{batch_id}", "1") for p in PAGES}
SECURITY = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


@dataclass
class Site:
    live: Live
    cookies: dict[str, str] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, user: str | None = None, **headers: str) -> httpx.AsyncClient:
        """A browser: signed in as ``user`` (its session cookie), sending ``headers``."""
        if user is not None:
            cookie = f"{COOKIE}={self.cookies[user]}"
            headers["Cookie"] = f"{headers['Cookie']}; {cookie}" if "Cookie" in headers else cookie
        client = httpx.AsyncClient(base_url=self.live.url, headers=headers, timeout=20)
        self.clients.append(client)
        return client


@contextlib.asynccontextmanager
async def site_on(tmp_path: Path, **overrides: Any) -> AsyncIterator[Site]:
    async with serving(api_settings(tmp_path / "data", **overrides)) as live:
        site = Site(live)
        try:
            yield site
        finally:
            for client in site.clients:
                await client.aclose()


@pytest.fixture
async def open_site(tmp_path: Path) -> AsyncIterator[Site]:
    """Auth off: the loopback install, nobody signs in."""
    async with site_on(tmp_path) as site:
        yield site


@pytest.fixture
async def auth_site(tmp_path: Path) -> AsyncIterator[Site]:
    """Auth on; root (admin) and alice signed in."""
    async with site_on(tmp_path, auth={"enabled": True}) as site:
        for name, admin in (("root", True), ("alice", False)):
            _, token = await site.live.app.state.ctx.write(add_user, name, is_admin=admin)
            async with httpx.AsyncClient(base_url=site.live.url) as http:
                r = await http.post("/api/v1/session", json={"token": token})
            assert r.status_code == 200, r.text
            site.cookies[name] = r.cookies[COOKIE]
        yield site


def context_of(page: httpx.Response) -> dict[str, Any]:
    """The JSON a page hands its script (``<script type=application/json id=kiln-context>``)."""
    found = re.search(
        r'<script type="application/json" id="kiln-context">(.*?)</script>', page.text
    )
    assert found, page.text[:500]
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def assert_page(r: httpx.Response, status: int = 200) -> None:
    assert r.status_code == status, (r.url, r.status_code, r.text[:300])
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert {k: r.headers.get(k) for k in SECURITY} == SECURITY, r.url
    assert r.headers["cache-control"] == "no-store"
    assert r.text.startswith("<!doctype html>")


pytestmark = pytest.mark.anyio


# --- pages, headers, sign-in -----------------------------------------------------------


async def test_every_page_is_html_with_the_security_headers(open_site: Site) -> None:
    http = open_site.client()
    for name, path in PATHS.items():
        r = await http.get(path)
        if name == "login":  # auth off: nobody signs in
            assert r.status_code == 303 and r.headers["location"] == "/"
            continue
        assert_page(r)
        assert context_of(r)["page"] == name


async def test_signed_in_every_page_answers_and_names_the_user(auth_site: Site) -> None:
    http = auth_site.client("root")
    for name, path in PATHS.items():
        r = await http.get(path)
        assert_page(r)
        context = context_of(r)
        assert context["page"] == name and context["auth"] is True
        assert context["user"]["name"] == "root" and context["user"]["is_admin"] is True
        assert f'src="/static/js/{name}.js?v=' in r.text


async def test_without_a_session_pages_redirect_to_login(auth_site: Site) -> None:
    for http in (
        auth_site.client(),
        auth_site.client(Cookie=f"{COOKIE}=forged.1.2"),
        auth_site.client(Cookie=f"{COOKIE}={'a' * 64}.9999999999.{'b' * 64}"),
    ):
        for name, path in PATHS.items():
            if name == "login":
                continue
            r = await http.get(path)
            assert r.status_code == 303, (path, r.status_code)
            assert r.headers["location"] == f"/login?next={quote(path, safe='')}"
        there = await http.get("/records?q=a%20moth&status=failed")
        assert (
            there.headers["location"] == "/login?next=%2Frecords%3Fq%3Da%2520moth%26status%3Dfailed"
        )
        login = await http.get("/login?next=%2Frecords%3Fq%3Da%2520moth")
        assert_page(login)
        assert next_of(login) == "/records?q=a%20moth"


def next_of(login: httpx.Response) -> str:
    """Where the sign-in form goes on to (its ``data-next``)."""
    found = re.search(r'id="login-form" data-next="([^"]*)"', login.text)
    assert found, login.text[:500]
    return html.unescape(found.group(1))


@pytest.mark.parametrize(
    ("target", "lands"),
    [
        ("//evil.example", "/"),
        ("https://evil", "/"),
        ("http://evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),  # the browser drops the tab: //evil.example
        ("/\n/evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("", "/"),
        ("/records?q=moth", "/records?q=moth"),
        ("/batches/7", "/batches/7"),
    ],
)
def test_local_path(target: str, lands: str) -> None:
    assert local_path(target) == lands
    assert local_path(None) == "/"


async def test_login_next_lands_only_on_this_site(auth_site: Site) -> None:
    anonymous, signed_in = auth_site.client(), auth_site.client("alice")
    for target in ("//evil.example", "https://evil", "/%09/evil.example", "/\\evil"):
        query = quote(target, safe="") if "%" not in target else target
        for http in (anonymous, signed_in):
            r = await http.get(f"/login?next={query}")
            assert_page(r)
            assert next_of(r) == "/", target
            assert "evil" not in r.text
    r = await signed_in.get("/login?next=%2Fqueue")
    assert next_of(r) == "/queue"
    assert '<a class="button" href="/queue">' in r.text  # "continue" as alice


async def test_admin_is_for_admins(auth_site: Site) -> None:
    r = await auth_site.client("alice").get("/admin")
    assert_page(r, 403)
    assert "Admins only" in r.text
    assert "/static/js/admin.js" not in r.text  # its script is not even loaded
    assert 'href="/admin"' not in r.text  # nor linked from the navigation
    ok = await auth_site.client("root").get("/admin")
    assert_page(ok)
    assert 'href="/admin"' in ok.text


#: a batch page's path → the batch id its script is given (None: no such batch)
BATCH_PATHS = {
    "/batches/12345": 12345,
    "/batches/9223372036854775807": 9223372036854775807,
    "/batches/99999999999999999999": None,
    "/batches/9223372036854775808": None,
    "/batches/abc": None,
    "/batches/0": None,
    "/batches/-1": None,
    "/batches/1.5": None,
    "/batches/%C2%B2": None,  # "²" is a digit to str.isdigit, not to int()
    "/batches/%EF%BC%91%EF%BC%92": None,  # fullwidth digits 1 2
    "/batches/" + "9" * 5000: None,  # past int()'s 4,300 digits
    "/batches/%00": None,
    "/batches/%20": None,
}


async def test_odd_batch_paths_answer_a_page_not_a_500(open_site: Site) -> None:
    http = open_site.client()
    for path, batch_id in BATCH_PATHS.items():
        r = await http.get(path)
        assert_page(r)
        assert context_of(r)["batch_id"] == batch_id, path[:40]


async def test_odd_batch_paths_redirect_to_login_when_signed_out(auth_site: Site) -> None:
    for path in ("/batches/%C2%B2", "/batches/" + "9" * 5000, "/batches/abc"):
        r = await auth_site.client().get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


# --- languages --------------------------------------------------------------------------


#: what a browser sends → the language of the page
LANGUAGE_CASES: list[tuple[dict[str, str], str]] = [
    ({}, "en"),
    ({"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}, "zh"),
    ({"Accept-Language": "en-GB,en;q=0.9,zh;q=0.8"}, "en"),
    ({"Accept-Language": "fr-FR, zh-TW;q=0.5"}, "zh"),
    ({"Accept-Language": "zh;q=0, en;q=0.1"}, "en"),
    ({"Accept-Language": "de, fr;q=oops"}, "en"),
    ({"Accept-Language": "en", "Cookie": "kiln_lang=zh"}, "zh"),
    ({"Accept-Language": "zh-CN", "Cookie": "kiln_lang=en"}, "en"),
    ({"Accept-Language": "zh-CN", "Cookie": "kiln_lang=xx"}, "zh"),
]


async def test_the_language_comes_from_the_cookie_else_the_browser(open_site: Site) -> None:
    for headers, lang in LANGUAGE_CASES:
        r = await open_site.client(**headers).get("/records")
        assert_page(r)
        assert context_of(r)["lang"] == lang, headers
        assert f'<html lang="{"zh-CN" if lang == "zh" else "en"}"' in r.text
        nav = "记录" if lang == "zh" else "Records"
        assert f'<a href="/records" aria-current="page">{nav}</a>' in r.text
        found = re.search(r'id="kiln-messages">(.*?)</script>', r.text)
        assert found and json.loads(found.group(1))["nav.records"] == nav


async def test_the_theme_cookie_is_there_before_the_first_paint(open_site: Site) -> None:
    for cookie, theme in (
        ("kiln_theme=dark", "dark"),
        ("kiln_theme=light", "light"),
        ('kiln_theme="dark onload=x"', None),
        ("", None),
    ):
        r = await open_site.client(Cookie=cookie).get("/queue")
        found = re.search(r"<html [^>]*>", r.text)
        assert found is not None
        shown = re.search(r'data-theme="(\w+)"', found.group(0))
        assert (shown.group(1) if shown else None) == theme, cookie


# --- nosniff beyond pages ---------------------------------------------------------------


async def test_nosniff_on_json_static_files_and_images(open_site: Site) -> None:
    http = open_site.client()
    batch = (await http.post("/api/v1/batches?wait=true", json=spec("a moth"))).json()
    image = batch["tasks"][0]["images"][0]["id"]
    for path, kind in (
        ("/api/v1/batches", "application/json"),
        ("/api/v1/batches/999999", "application/json"),  # a 404
        ("/healthz", "application/json"),
        ("/no/such/path", "application/json"),
        ("/static/js/kiln.js", "text/javascript"),
        ("/static/css/kiln.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
        (f"/api/v1/images/{image}/file", "image/png"),
        (f"/api/v1/images/{image}/thumbnail", "image/webp"),
        (f"/api/v1/batches/{batch['id']}/images.zip", "application/zip"),
    ):
        r = await http.get(path)
        assert r.headers["content-type"].startswith(kind), (path, r.headers["content-type"])
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers.get("content-security-policy") == CONTENT_CSP, path  # loads nothing


async def test_the_pages_policy_is_not_put_on_fastapis_docs(open_site: Site) -> None:
    """Swagger UI (auth off) is an inline script and a CDN's files: the pages' policy
    would leave /docs blank."""
    r = await open_site.client().get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "content-security-policy" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"


# --- what the CSP needs of the templates ------------------------------------------------


def template_texts() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(TEMPLATES.glob("*.html"))}


def static_refs(text: str) -> list[str]:
    """Each /static/... a template names, with ``{{ page.name }}`` for every page."""
    refs = []
    for ref in re.findall(r"""["'](/static/[^"'?#]+)""", text):
        if "{{" in ref:
            refs += [re.sub(r"\{\{\s*page\.name\s*\}\}", p.name, ref) for p in PAGES]
        else:
            refs.append(ref)
    return refs


def test_every_static_file_a_template_or_script_names_exists() -> None:
    missing = [
        f"templates/{name}: {ref}"
        for name, text in template_texts().items()
        for ref in static_refs(text)
        if not (STATIC / ref.removeprefix("/static/")).is_file()
    ]
    for script in sorted((STATIC / "js").glob("*.js")):
        for target in re.findall(r"""from\s+["']\./([\w./-]+)["']""", script.read_text()):
            if not (script.parent / target).is_file():
                missing.append(f"static/js/{script.name}: imports ./{target}")
    assert not missing, "\n".join(missing)
    named = {ref for text in template_texts().values() for ref in static_refs(text)}
    assert {f"/static/js/{p.name}.js" for p in PAGES} | {"/static/css/kiln.css"} <= named


async def test_the_static_files_are_served(open_site: Site) -> None:
    http = open_site.client()
    refs = {ref for text in template_texts().values() for ref in static_refs(text)}
    assert len(refs) >= len(PAGES)
    for ref in sorted(refs):
        r = await http.get(ref)
        assert r.status_code == 200, ref


class InlineCode(HTMLParser):
    """What a strict CSP (no 'unsafe-inline') would block, with the line it is on."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._script: tuple[int, bool] | None = None  # line, and whether it may hold data

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        line = self.getpos()[0]
        named = dict(attrs)
        for name, value in attrs:
            if name == "style":
                self.found.append(f"line {line}: style= on <{tag}>")
            elif name.startswith("on"):
                self.found.append(f"line {line}: {name}= on <{tag}>")
            elif name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.found.append(f"line {line}: a javascript: URL on <{tag}>")
        if tag == "style":
            self.found.append(f"line {line}: a <style> element")
        if tag == "script":
            if named.get("type") != "application/json" and not named.get("src"):
                self.found.append(f"line {line}: a <script> without src")
            self._script = (line, named.get("type") == "application/json")

    def handle_data(self, data: str) -> None:
        if self._script is not None and data.strip() and not self._script[1]:
            self.found.append(f"line {self._script[0]}: code inside <script>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None


def inline_code(text: str) -> list[str]:
    parser = InlineCode()
    parser.feed(text)
    parser.close()
    return parser.found


def test_no_template_has_inline_script_or_style() -> None:
    found = [
        f"templates/{name}: {f}" for name, t in template_texts().items() for f in inline_code(t)
    ]
    assert not found, "the Content Security Policy would block:\n" + "\n".join(found)


def test_the_inline_check_sees_what_csp_blocks() -> None:
    text = """<p style="color: red">x</p>
    <button onclick="go()">b</button><a href=" JavaScript:go()">a</a>
    <script>alert(1)</script><style>p {}</style>
    <script type="module" src="/static/js/x.js"></script>
    <script type="application/json" id="d">{"a": 1}</script>"""
    assert inline_code(text) == [
        "line 1: style= on <p>",
        "line 2: onclick= on <button>",
        "line 2: a javascript: URL on <a>",
        "line 3: a <script> without src",
        "line 3: code inside <script>",
        "line 3: a <style> element",
    ]


# --- data inside the page ------------------------------------------------------------------


def test_messages_cannot_close_their_script_element() -> None:
    text = _messages_json({"k": "</script><script>alert(1)</script> & more"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"k": "</script><script>alert(1)</script> & more"}


async def test_a_user_name_is_text_wherever_the_page_shows_it(auth_site: Site) -> None:
    name = '</script><script>alert("x")</script><b onmouseover=alert(1)>'
    _, token = await auth_site.live.app.state.ctx.write(add_user, name)
    async with httpx.AsyncClient(base_url=auth_site.live.url) as http:
        r = await http.post("/api/v1/session", json={"token": token})
    auth_site.cookies["odd"] = r.cookies[COOKIE]
    page = await auth_site.client("odd").get("/queue")
    assert_page(page)
    assert "<script>alert" not in page.text and "<b onmouseover" not in page.text
    assert context_of(page)["user"]["name"] == name
