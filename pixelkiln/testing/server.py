"""The machinery every fake generator shares: serving, recording, faults, going down.

A :class:`FakeServer` is an ASGI app served by uvicorn on 127.0.0.1 in a
background thread with its own event loop, so a test's own loop (and its
clients) talk to it over real loopback HTTP::

    with FakeSDWebUI(latency=0.05) as server:      # started on a free port
        ...  # point a backend at server.url
        server.down()                               # connections refused, in-flight ones reset
        server.up()                                 # back on the same port
    assert server.received("/sdapi/v1/txt2img")

Tests that need a generation to be *in progress* (to cancel or interrupt it,
or to see the next one queued) hold it there with :meth:`FakeServer.hold`
and :meth:`FakeServer.release` rather than with a latency (see :class:`Gate`).

Subclasses build the protocol's routes (:meth:`FakeServer.build_app`) and say
how the generator words its errors (:meth:`FakeServer.error_response`). This
class wraps them with the request recorder and the :class:`Faults` layer, which
applies to the paths in ``fault_paths`` (the generation endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar, Self

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelkiln.testing.faults import Faults, Outcome
from pixelkiln.testing.gate import Gate

#: how long start() waits for the server thread to listen
START_TIMEOUT = 10.0


def bearer_accepted(headers: Mapping[str, str], keys: Collection[str] | None) -> bool:
    """Whether ``Authorization: Bearer <key>`` names one of ``keys`` (None accepts anything)."""
    if keys is None:
        return True
    given = headers.get("authorization", "").removeprefix("Bearer ").encode()
    return any(secrets.compare_digest(given, key.encode()) for key in keys)


@dataclass
class RecordedRequest:
    """One request a fake server received (websocket connections included, as ``WS``)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  #: lower-cased names
    body: bytes
    at: float  #: ``time.monotonic()`` when it arrived
    outcome: str = "ok"  #: the fault applied to it, if any
    extra: dict[str, Any] = field(default_factory=dict)  #: what the handler parsed (forms)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class FakeServer:
    """Base of the protocol-faithful fakes; see the module docstring."""

    kind: ClassVar[str] = ""
    #: paths where faults apply (the generation endpoints)
    fault_paths: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        latency: float = 0.0,
        faults: Faults | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.faults = faults or Faults(latency=latency)
        self.requests: list[RecordedRequest] = []
        self.gate = Gate()  #: holds generations for tests; see :meth:`hold`
        self.in_flight = 0  #: generations in progress now (held ones included)
        self.peak_in_flight = 0  #: the most generations ever in progress at once
        self._counting = threading.Lock()
        self.app: ASGIApp = self.build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_error: BaseException | None = None
        self._dying = False  # going down: cancelled handlers end quietly

    # -- what subclasses provide ---------------------------------------------------

    def build_app(self) -> ASGIApp:
        """The generator's routes (a Starlette app)."""
        raise NotImplementedError

    def error_response(self, status: int, message: str) -> Response:
        """How the generator answers an error ``status`` (overridden per protocol)."""
        return JSONResponse({"error": message}, status_code=status)

    def error200_response(self) -> Response:
        """An error reported with HTTP 200 (only some protocols do this)."""
        return JSONResponse({"error": {"code": 502, "message": "upstream error (injected)"}})

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:7860``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Listen (on a free port the first time, on the same port afterwards)."""
        if self.running:
            return self
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections
        # only then, and without it every keep-alive answer waits ~40 ms for a delayed ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            lifespan="on",
            log_config=None,
            access_log=False,
            http="h11",
            ws="websockets-sansio",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        server = uvicorn.Server(config)
        self._server, self._start_error, self._dying = server, None, False
        self._thread = threading.Thread(
            target=self._serve,
            args=(server, sock),
            daemon=True,
            name=f"fake-{self.kind}-{self.port}",
        )
        self._thread.start()
        self._wait_started(server)
        return self

    def down(self) -> None:
        """Stop listening (connections refused) and reset every open connection."""
        server, loop, thread = self._server, self._loop, self._thread
        if server is None or loop is None or thread is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(self._kill, server)
        thread.join(START_TIMEOUT)
        self._server = self._thread = self._loop = None

    def up(self) -> None:
        """Come back on the same port after :meth:`down`."""
        self.start()

    stop = down

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def _kill(self, server: uvicorn.Server) -> None:
        """On the server's loop: stop listening now, reset every connection, then exit."""
        self._dying = True
        for listener in getattr(server, "servers", []):
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                _abort(transport)
        for task in list(server.server_state.tasks):
            task.cancel()  # hung handlers included: a dead process answers nothing
        server.should_exit = True

    def hold(self) -> None:
        """Hold every generation, once started, until :meth:`release` lets it go on.

        A held generation is in progress as far as a client can tell (a WebUI
        reports it active, a ComfyUI prompt is ``queue_running``); an interrupt
        ends it. Faulted requests are held too: their failure comes after the work.
        """
        self.gate.hold()

    def release(self, count: int | None = None) -> None:
        """Let ``count`` held (or next) generations go on; without it, stop holding."""
        self.gate.release(count)

    @property
    def held(self) -> int:
        """How many generations are held now (poll it with :func:`wait_until`)."""
        return self.gate.held

    async def generating(self, interrupted: asyncio.Event | None = None) -> bool:
        """One generation's time: held while :meth:`hold` says so, then the latency.

        Returns True when ``interrupted`` is set before the generation is over. Counted
        in :attr:`in_flight` meanwhile (and :attr:`peak_in_flight`): what a GPU box's owner
        watches when clients must keep to its slots.
        """
        with self._counting:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._generation(interrupted)
        finally:
            with self._counting:
                self.in_flight -= 1

    def reset_peak(self) -> None:
        """Start :attr:`peak_in_flight` again from what is in progress now."""
        with self._counting:
            self.peak_in_flight = self.in_flight

    async def _generation(self, interrupted: asyncio.Event | None) -> bool:
        if await self.gate.passage(interrupted):
            return True
        if interrupted is None:
            await asyncio.sleep(self.faults.delay())
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.faults.delay()):
                await interrupted.wait()
        return interrupted.is_set()

    def received(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Requests received on ``path`` (optionally only with ``method``)."""
        return [
            r
            for r in list(self.requests)
            if r.path == path and (method is None or r.method == method)
        ]

    def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start(); a thread cannot raise to its caller
            self._start_error = exc
        finally:
            sock.close()

    def _wait_started(self, server: uvicorn.Server) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if self._thread is None or not self._thread.is_alive():
                raise RuntimeError(f"fake {self.kind} server failed to start") from (
                    self._start_error
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake {self.kind} server did not start in time")
            time.sleep(0.005)

    # -- the ASGI layer: record, then maybe misbehave -----------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        body, receive = await _buffer_body(scope, receive)
        record = RecordedRequest(
            method=scope.get("method", "WS"),
            path=scope["path"],
            query=scope.get("query_string", b"").decode(),
            at=time.monotonic(),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body=body,
        )
        self.requests.append(record)
        scope.setdefault("state", {})["record"] = record
        try:
            if scope["type"] == "http" and scope["path"] in self.fault_paths:
                outcome = self.faults.next_outcome()
                record.outcome = str(outcome)
                if outcome != "ok":
                    await self._misbehave(outcome, scope, receive, send)
                    return
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self._dying:
                raise
            # killed by down(): end without uvicorn's "Exception in ASGI application"

    async def _misbehave(
        self, outcome: Outcome, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if outcome == "hang":
            await asyncio.sleep(self.faults.hang_seconds)
            return
        await self.generating()  # failures come after the work, as on a GPU
        if outcome == "reset":
            await _reset(send)
            return
        if outcome == "malformed":
            response: Response = Response(
                b'{"images": ["iVBORw0KGgoAAAANSUhEUgAA', media_type="application/json"
            )
        elif outcome == "error200":
            response = self.error200_response()
        else:
            assert isinstance(outcome, int)
            response = self.error_response(outcome, f"{HTTPStatus(outcome).phrase} (injected)")
            if outcome in (429, 503) and self.faults.retry_after is not None:
                response.headers["Retry-After"] = f"{self.faults.retry_after:g}"
        await response(scope, receive, send)


async def read_form(request: Request) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    """A multipart form as ``(fields, [(part name, file name, bytes)])``, its files closed."""
    async with request.form() as form:
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        files = [
            (k, v.filename or "", await v.read())
            for k, v in form.multi_items()
            if not isinstance(v, str)
        ]
    return fields, files


async def _buffer_body(scope: Scope, receive: Receive) -> tuple[bytes, Receive]:
    """Read an HTTP body fully (to record it) and give the app a receive that replays it."""
    if scope["type"] != "http":
        return b"", receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _reset(send: Send) -> None:
    """Reset the TCP connection of the request being served (RST, no answer)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.Transport):
        raise ConnectionResetError("injected reset")  # uvicorn answers 500 then
    _abort(transport)
    await asyncio.sleep(0.01)  # let uvicorn see the disconnect before we return


def _abort(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # linger 0: close sends RST, like a crashed process, instead of a polite FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()
