"""Security headers: ``nosniff`` on every answer, and on the web UI's pages a strict
Content Security Policy, no framing and no referrer leaks.

The pages load nothing from elsewhere and run no inline script (data for a page's
script is embedded as ``<script type="application/json">``, which is never run), so
the policy allows ``'self'`` only; images may also be ``blob:`` (previews of files
about to be uploaded) and ``data:``. :func:`pixelkiln.web.pages.render` sends
:data:`PAGE_HEADERS` with each page; other HTML (FastAPI's ``/docs``, whose Swagger UI
comes from a CDN with an inline script, when auth is off) keeps working without them.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: what every page of the web UI is sent with
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` on every answer (JSON, files, images, pages):
    no browser runs an answer as a type it was not sent as. Pure ASGI middleware, so
    streams pass through untouched, SSE included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_with_headers)
