"""The web UI's pages: one server-rendered shell per plain path, its data fetched by
the page's script from the public ``/api/v1`` (so a script can do all a page does).

===================  ==============  ==========================================
path                 template        what it is
===================  ==============  ==========================================
``/``                generate        one request, the result inline
``/batch``           batch           the batch table (rows, references, Excel)
``/img2img``         img2img         drop files or folders, one prompt for all
``/batches/{id}``    batch_detail    progress, tasks, retry/cancel/pause, ZIP
``/queue``           queue           my pending and running batches, in order
``/records``         records         search, filters, thumbnails, lightbox
``/admin``           admin           concurrency, presets, users, stats, health
``/login``           login           paste a token once (when auth is on)
===================  ==============  ==========================================

With ``[auth] enabled`` a page without a valid session cookie redirects to
``/login?next=…``; with auth off (loopback only) nobody signs in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pixelkiln import __version__
from pixelkiln.db.users import User
from pixelkiln.service.context import ServiceContext
from pixelkiln.service.sessions import COOKIE, session_user
from pixelkiln.web.headers import PAGE_HEADERS
from pixelkiln.web.i18n import LANG_COOKIE, catalog, pick_language

_WEB = resources.files("pixelkiln.web")
#: the theme switch's cookie: set before the first paint, so a page never flashes the other
THEME_COOKIE, THEMES = "kiln_theme", ("light", "dark")


@dataclass(frozen=True)
class Page:
    name: str  #: template, script and messages file share it
    path: str  #: where a person types it
    nav: bool = True  #: shown in the navigation
    admin: bool = False  #: admins only
    #: shared modules whose messages the page also gets (``messages/<name>.json``)
    uses: tuple[str, ...] = ()


PAGES = (
    Page("generate", "/", uses=("library",)),
    Page("batch", "/batch", uses=("library",)),
    Page("img2img", "/img2img"),
    Page("queue", "/queue"),
    Page("records", "/records"),
    Page("admin", "/admin", admin=True),
    Page("batch_detail", "/batches/{batch_id}", nav=False),
    Page("login", "/login", nav=False),
)
_BY_NAME = {p.name: p for p in PAGES}


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_WEB / "templates")),
        autoescape=select_autoescape(("html",), default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": True}
    return env


_ENV = _environment()


def _service(request: Request) -> ServiceContext:
    """The installation the app serves. Pages reach it through the service, never
    through ``pixelkiln.api`` (which mounts them: importing it here would be a cycle)."""
    service: ServiceContext = request.app.state.ctx.service
    return service


def _messages_json(messages: dict[str, str]) -> str:
    """The page's messages for its script, safe inside ``<script type=application/json>``:
    ``<``, ``>`` and ``&`` escaped so no text can close the element."""
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(
    request: Request, page: Page, user: User | None, status: int = 200, **extra: Any
) -> HTMLResponse:
    """A page in the request's language."""
    lang = pick_language(request.headers.get("accept-language"), request.cookies.get(LANG_COOKIE))
    messages = catalog(lang, "common", *page.uses, page.name)
    theme = request.cookies.get(THEME_COOKIE)
    context = {
        "page": page,
        "pages": [p for p in PAGES if p.nav and (not p.admin or user is None or user.is_admin)],
        "lang": lang,
        "theme": theme if theme in THEMES else None,
        "t": lambda key: messages.get(key, key),
        "messages_json": _messages_json(messages),
        "user": user,
        "auth": _service(request).settings.auth.enabled,
        "credits": _service(request).settings.credits.enabled,
        "version": __version__,
        "path": request.url.path,
        **extra,
    }
    html = _ENV.get_template(f"{page.name}.html").render(context)
    headers = {"Cache-Control": "no-store", **PAGE_HEADERS}
    return HTMLResponse(html, status_code=status, headers=headers)


def local_path(target: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site
    (``//evil.example`` and ``https://…`` become ``/``). Control characters are refused
    too: a browser drops a tab or newline from a URL, so ``next=/%09/evil.example``
    (a tab) would become ``//evil.example`` in ``location.assign``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return "/"
    return target


def _batch_number(text: str) -> int | None:
    """A batch id typed in a path, or None. ASCII digits only: ``str.isdigit`` also
    accepts "²" and fullwidth digits, and ``int()`` refuses a 5,000-digit string;
    neither may answer 500."""
    if not re.fullmatch(r"[0-9]{1,19}", text):
        return None
    number = int(text)
    return number if 0 < number < 2**63 else None


def _sign_in_first(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


async def _show(request: Request, name: str, **extra: Any) -> Response:
    """The page, after the sign-in and admin checks."""
    page = _BY_NAME[name]
    ctx = _service(request)
    user: User | None = None
    if ctx.settings.auth.enabled:
        user = await session_user(ctx, request.cookies.get(COOKIE))
        if user is None:
            return _sign_in_first(request)
        if page.admin and not user.is_admin:
            return render(request, page, user, status=403, forbidden=True)
    return render(request, page, user, **extra)


def web_router() -> APIRouter:
    """The pages; excluded from the OpenAPI schema (they are not the API)."""
    router = APIRouter(include_in_schema=False)

    def add(page: Page) -> None:
        async def show(request: Request) -> Response:
            return await _show(request, page.name)

        router.add_api_route(page.path, show, methods=["GET", "HEAD"], name=f"page_{page.name}")

    for page in PAGES:
        if page.name not in ("login", "batch_detail"):
            add(page)

    @router.api_route("/batches/{batch_id}", methods=["GET", "HEAD"], name="page_batch_detail")
    async def batch_detail(request: Request, batch_id: str) -> Response:
        number = _batch_number(batch_id)
        if number is None:
            return await _show(request, "batch_detail", batch_id=None, not_found=True)
        return await _show(request, "batch_detail", batch_id=number)

    @router.get("/favicon.ico", name="favicon")
    async def favicon() -> Response:
        """Browsers ask for it whatever the page's <link rel=icon> says."""
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @router.api_route("/login", methods=["GET", "HEAD"], name="page_login")
    async def login(request: Request) -> Response:
        ctx = _service(request)
        if not ctx.settings.auth.enabled:  # nobody signs in on a loopback install
            return RedirectResponse("/", status_code=303)
        user = await session_user(ctx, request.cookies.get(COOKIE))
        return render(
            request, _BY_NAME["login"], user, next=local_path(request.query_params.get("next"))
        )

    return router


def mount_web(app: FastAPI) -> None:
    """The pages and their static files (``/static``)."""
    app.include_router(web_router())
    app.mount("/static", StaticFiles(directory=str(_WEB / "static")), name="static")
