"""Security headers: ``nosniff`` on every answer, on the web UI's pages a strict
Content Security Policy, no framing and no referrer leaks, and on everything else (user
content: images, thumbnails, exports, sheets, signed links, JSON) a policy that lets
nothing run at all.

The pages load nothing from elsewhere and run no inline script (data for a page's
script is embedded as ``<script type="application/json">``, which is never run), so
the policy allows ``'self'`` only; images may also be ``blob:`` (previews of files
about to be uploaded) and ``data:``. :func:`pixelkiln.web.pages.render` sends
:data:`PAGE_HEADERS` with each page; other HTML (FastAPI's ``/docs``, whose Swagger UI
comes from a CDN with an inline script, when auth is off) keeps working without them.

Every other answer is sent with :data:`CONTENT_CSP` unless it set a policy itself: a
user's image, thumbnail, ZIP, CSV or JSON opened in a tab (a signed link, a drop-in
API's ``image_url``) is a sandboxed document that may load nothing and run nothing,
whatever bytes it holds; and with ``nosniff`` a browser never reads it as another
type. Set here, once, for every route, so a new route is covered without a line of its
own (``tests/reliability/test_uploads.py`` checks every GET route of the schema).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: what every answer that is not a page is sent with: user content, which must never run
CONTENT_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
#: the HTML that keeps its own (absent) policy: FastAPI's interactive docs (auth off only)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
#: what every page of the web UI is sent with
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` on every answer (JSON, files, images, pages):
    no browser runs an answer as a type it was not sent as; and :data:`CONTENT_CSP` on
    every answer that sets no policy of its own (all but the pages and the docs). Pure
    ASGI middleware, so streams pass through untouched, SSE included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        docs = scope.get("path", "") in DOCS_PATHS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if not docs:
                    headers.setdefault("Content-Security-Policy", CONTENT_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)
