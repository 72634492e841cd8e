"""``HEAD`` answered as ``GET`` without its body (RFC 9110 §9.3.2).

FastAPI's routes answer the methods they declare, so ``curl -I`` on an image's URL, a
link checker or a cache's revalidation got ``405``. Declaring ``HEAD`` on each route
would give every operation of the schema a twin; instead this middleware runs a ``HEAD``
as the ``GET`` it stands for (the same checks: token, owner, signed link) and sends its
status and headers only. Once they are sent the ``GET`` is stopped, so a ``HEAD`` on a
live event stream or a ZIP being built ends at once instead of running on unseen.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Pure ASGI middleware: a ``HEAD`` request is run as ``GET``, its body never sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        sent = asyncio.Event()

        async def headers_only(message: Message) -> None:
            if sent.is_set():
                return
            if message["type"] == "http.response.body":  # the first part: the end, empty
                message = {"type": "http.response.body", "body": b"", "more_body": False}
                await send(message)
                sent.set()
                return
            await send(message)

        run = asyncio.ensure_future(self.app({**scope, "method": "GET"}, receive, headers_only))
        over = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait({run, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
            if not run.done():  # headers are out: the rest of the body is not wanted
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        if not sent.is_set():
            run.result()  # what the GET raised, for the error handlers outside
