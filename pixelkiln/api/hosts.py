"""With auth off, answer only requests addressed to this machine (DNS rebinding).

A loopback install with auth off trusts whoever can reach it, and only this machine
can. A web page elsewhere can still make the browser reach it: its attacker re-points
their own host name at 127.0.0.1, and the browser, taking the page and the server for
one site, lets the page read the answers. Such requests name the attacker's host in
``Host``; a loopback server is only ever addressed as 127.x, ``[::1]`` or localhost
(or a name the admin lists in ``[auth] allowed_origins``). So with auth off any other
``Host`` is refused, for pages, the API and event streams alike. With auth on, the
token or session decides, whatever the name.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from pixelkiln.web.headers import CONTENT_CSP


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost"; anything else is reachable from elsewhere (a host
    name may resolve to anything). `kiln serve` binds only such a host with auth off."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback(netloc: str) -> bool:
    """Whether ``host[:port]`` (a ``Host`` header, an origin's) names this machine."""
    return is_loopback_host(netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc)


def _netloc(origin: str) -> str:
    """``scheme://host:port/`` → ``host:port``, lower case."""
    return origin.strip().rstrip("/").partition("://")[2].lower()


class LocalHostsOnly:
    """Pure ASGI middleware: 421 for an HTTP request whose ``Host`` is neither this
    machine nor one of ``allowed`` (origins from ``[auth] allowed_origins``)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {_netloc(o) for o in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            if not is_loopback(host) and host not in self.allowed:
                await _refuse(send, host)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, host: str) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "host_not_allowed",
                "message": "with [auth] off this server answers only requests addressed to "
                "this machine (127.0.0.1, localhost, [::1]) or to a host in [auth] "
                "allowed_origins",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 421,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"content-security-policy", CONTENT_CSP.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
