"""A webhook receiver on loopback: records deliveries, checks signatures, fails on demand.

Point a batch's ``webhook`` at :attr:`FakeWebhookReceiver.hook_url` to test
your own handling of pixelkiln's deliveries, or pixelkiln's retries::

    with FakeWebhookReceiver(secret=my_secret) as receiver:
        receiver.fail_first(2)                 # 500, 500, then 200
        spec = {"name": "x", "webhook": receiver.hook_url, "tasks": [...]}
        ...
        await wait_until(lambda: receiver.deliveries())
        payload = receiver.deliveries()[0]     # the parsed JSON body
        assert receiver.requests[-1].extra["verified"]

Every request is kept in :attr:`requests` (``extra["verified"]``: whether its
signature checked out against ``secret``, when one is given).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pixelkiln.testing.faults import Faults, Outcome
from pixelkiln.testing.server import FakeServer
from pixelkiln.wire.signing import verify

HOOK_PATH = "/hook"


class FakeWebhookReceiver(FakeServer):
    """Answers 200 to ``POST /hook`` unless told to fail; see the module docstring."""

    kind: ClassVar[str] = "webhook"
    fault_paths: ClassVar[frozenset[str]] = frozenset({HOOK_PATH})

    def __init__(
        self,
        *,
        secret: str | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        faults: Faults | None = None,
    ) -> None:
        self.secret = secret  #: checks each delivery's signature when set
        super().__init__(port=port, host=host, faults=faults)

    @property
    def hook_url(self) -> str:
        """The URL to give a batch as its ``webhook``."""
        return f"{self.url}{HOOK_PATH}"

    def fail_first(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` deliveries with ``status`` (a 3xx: a redirect)."""
        self.faults.fail_next(*([status] * count))

    def time_out_first(self, count: int, seconds: float = 3600.0) -> None:
        """Leave the next ``count`` deliveries unanswered for ``seconds``."""
        self.faults.hang_seconds = seconds
        hang: Outcome = "hang"
        self.faults.fail_next(*([hang] * count))

    def deliveries(self) -> list[dict[str, Any]]:
        """The JSON bodies of the deliveries answered 200, in the order they came."""
        return [json.loads(r.body) for r in self.received(HOOK_PATH, "POST") if r.outcome == "ok"]

    def build_app(self) -> ASGIApp:
        async def hook(request: Request) -> Response:
            record = request.scope["state"]["record"]
            if self.secret is not None:
                record.extra["verified"] = verify(self.secret, record.body, dict(request.headers))
            return JSONResponse({"received": True})

        return Starlette(routes=[Route(HOOK_PATH, hook, methods=["POST"])])

    def error_response(self, status: int, message: str) -> Response:
        if 300 <= status < 400:  # a redirect elsewhere, which pixelkiln must not follow
            return Response(status_code=status, headers={"Location": "http://127.0.0.1:9/x"})
        return JSONResponse({"error": message}, status_code=status)
