"""The aiohttp transport against httpx's own, on real loopback servers.

Each fault is met by both clients (httpx's default and :func:`shared_client`)
and must come out as the same pixelkiln exception; what goes on the wire must
be byte for byte what httpx sends.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.http import ServerDownError, map_transport_error, send
from pixelkiln.backends.sdwebui import create
from pixelkiln.backends.transport import AiohttpTransport, send_json, shared_client
from pixelkiln.exceptions import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    RateLimitedError,
)
from pixelkiln.testing import FakeSDWebUI, generation_request, settings_for

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def clients() -> list[Callable[[], httpx.AsyncClient]]:
    return [httpx.AsyncClient, shared_client]


CLIENTS = pytest.mark.parametrize("make", clients(), ids=["httpx", "aiohttp"])


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body, as received."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return head + body


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP server on loopback; yields its base URL. Its connections end with it."""
    running: set[asyncio.Task[None]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            running.discard(task)

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


def recorder(seen: list[bytes], answer: bytes = OK) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(answer)
            await writer.drain()

    return handle


async def exchange(client: httpx.AsyncClient, url: str) -> None:
    await client.get(url + "/a?x=%2F&y=a b")
    await client.get(url + "/p%2Fq/&x")
    await client.post(url + "/empty")
    await client.post(
        url + "/json",
        json={"prompt": "a cat"},
        headers=[("X-Trace", "1"), ("X-Trace", "2")],
        auth=httpx.BasicAuth("user", "pass"),
    )
    await client.post(
        url + "/form",
        files={"image": ("n.png", b"\x89PNG", "image/png")},
        headers={"Content-Type": "multipart/form-data; boundary=fixedboundary"},
    )
    await client.put(url + "/bytes", content=b"raw")


async def test_requests_go_out_byte_for_byte_as_httpx_sends_them() -> None:
    sent: dict[str, list[bytes]] = {}
    for name, make in (("httpx", httpx.AsyncClient), ("aiohttp", shared_client)):
        seen: list[bytes] = []
        async with serve(recorder(seen)) as url, make() as client:
            await exchange(client, url)
        port = url.rsplit(":", 1)[1].encode()
        sent[name] = [s.replace(port, b"PORT") for s in seen]
    assert len(sent["aiohttp"]) == 6
    assert sent["aiohttp"] == sent["httpx"]
    assert b"Authorization: Basic dXNlcjpwYXNz" in sent["aiohttp"][3]


async def test_repeated_header_spelled_differently_is_kept() -> None:
    seen: list[bytes] = []
    async with serve(recorder(seen)) as url, shared_client() as client:
        await client.get(url, headers=[("X-A", "1"), ("x-a", "2")])
    assert re.findall(rb"(?im)^x-a: (\d)", seen[0]) == [b"1", b"2"]


async def test_credentials_in_the_url_become_basic_auth() -> None:
    seen: list[bytes] = []
    async with serve(recorder(seen)) as url, shared_client() as client:
        await client.get(url.replace("http://", "http://user:pass@") + "/models")
    assert seen[0].startswith(b"GET /models HTTP/1.1\r\n")
    assert b"Authorization: Basic dXNlcjpwYXNz" in seen[0]


@CLIENTS
async def test_gzip_answer_is_decoded_once(make: Callable[[], httpx.AsyncClient]) -> None:
    body = gzip.compress(b'{"images": []}')
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nX-Extra: kept\r\n\r\n" + body
    )
    async with serve(recorder([], answer)) as url, make() as client:
        response = await client.get(url)
    assert response.json() == {"images": []}
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["x-extra"] == "kept"
    assert response.reason_phrase == "OK"
    assert response.http_version == "HTTP/1.1"


async def fault_of(make: Callable[[], httpx.AsyncClient], handler: Handler) -> BackendError:
    async with serve(handler) as url, make() as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.post(url + "/sdapi/v1/txt2img", timeout=0.5, json={})
        with pytest.raises(BackendError) as mapped:  # and send() maps it the same way
            await send(client, "POST", url + "/sdapi/v1/txt2img", server=url, timeout=0.5, json={})
    assert type(mapped.value) is type(map_transport_error(info.value, server=url))
    return mapped.value


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, never answer; end when the client hangs up."""
    await read_request(reader)
    await reader.read()
    writer.close()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def close_silently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.close()


async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"images"')
    await writer.drain()
    writer.close()


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()
    writer.close()


FAULTS = {
    "hang": (hang, BackendTimeoutError),
    "reset": (reset, BackendUnavailableError),
    "closed": (close_silently, BackendUnavailableError),
    "cut short": (cut_short, BackendUnavailableError),
    "not http": (not_http, BackendUnavailableError),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_faults_map_as_with_httpx_default(fault: str) -> None:
    handler, expected = FAULTS[fault]
    ours = await fault_of(shared_client, handler)
    theirs = await fault_of(httpx.AsyncClient, handler)
    assert type(ours) is type(theirs) is expected


@CLIENTS
async def test_refused_connection_means_server_down(make: Callable[[], httpx.AsyncClient]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        url = f"http://127.0.0.1:{port}"
        async with make() as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get(url, timeout=2)
    assert isinstance(map_transport_error(info.value, server=url), ServerDownError)


@CLIENTS
async def test_waiting_for_a_pooled_connection_times_out(
    make: Callable[[], httpx.AsyncClient],
) -> None:
    async with serve(hang) as url:
        client = (
            shared_client(max_connections=1)
            if make is shared_client
            else httpx.AsyncClient(limits=httpx.Limits(max_connections=1))
        )
        async with client:
            first = asyncio.create_task(client.post(url, timeout=10))
            await asyncio.sleep(0.2)
            with pytest.raises(httpx.TimeoutException):
                await client.post(url, timeout=httpx.Timeout(10, pool=0.3))
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first


async def test_connections_stay_within_max_connections() -> None:
    open_now = peak = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            await writer.drain()
        finally:
            open_now -= 1
            writer.close()

    async with serve(count) as url, shared_client(max_connections=2) as client:
        answers = await asyncio.gather(*(client.get(url) for _ in range(6)))
    assert [a.text for a in answers] == ["ok"] * 6
    assert peak == 2


async def test_a_streamed_answer_arrives_before_it_ends() -> None:
    rest = asyncio.Event()

    async def chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await rest.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with serve(chunks) as url, shared_client() as client:
        async with client.stream("GET", url) as response:
            pieces = response.aiter_bytes()
            assert await anext(pieces) == b"first"
            rest.set()
            assert [p async for p in pieces] == [b"last"]
        assert "content-length" not in response.headers


async def test_cookies_set_by_a_server_are_sent_back() -> None:
    seen: list[bytes] = []
    answer = OK.replace(b"\r\n\r\n", b"\r\nSet-Cookie: session=abc; Path=/\r\n\r\n", 1)
    async with serve(recorder(seen, answer)) as url, shared_client() as client:
        await client.get(url + "/login")
        await client.get(url + "/next")
    assert b"Cookie: session=abc" not in seen[0]
    assert b"Cookie: session=abc" in seen[1]


def test_client_built_outside_a_loop_works_and_closes() -> None:
    client = shared_client()
    transport = client._transport
    assert isinstance(transport, AiohttpTransport)
    seen: list[bytes] = []

    async def use() -> None:
        async with serve(recorder(seen)) as url:
            assert (await client.get(url)).text == "ok"
            session = transport._session
            assert session is not None
            await client.aclose()
            assert session.closed

    asyncio.run(use())
    assert len(seen) == 1


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return context


@CLIENTS
async def test_tls_certificates_are_verified(
    make: Callable[[], httpx.AsyncClient], tmp_path: Path
) -> None:
    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(quiet, "127.0.0.1", 0, ssl=self_signed(tmp_path))
    port = server.sockets[0].getsockname()[1]
    try:
        async with make() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/", timeout=5)
    finally:
        server.close()
        await server.wait_closed()


async def test_environment_proxies_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    async with serve(recorder(seen)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "direct.invalid")
        async with shared_client() as client:
            assert (await client.get("http://gpu.invalid:7860/sdapi/v1/sd-models")).text == "ok"
            with pytest.raises(httpx.ConnectError):  # NO_PROXY: straight to a name that is not
                await client.get("http://direct.invalid/", timeout=5)
        async with shared_client(trust_env=False) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://gpu.invalid:7860/", timeout=5)
    assert len(seen) == 1
    assert seen[0].startswith(b"GET http://gpu.invalid:7860/sdapi/v1/sd-models HTTP/1.1\r\n")


async def test_unsupported_scheme_is_rejected_like_httpx() -> None:
    async with shared_client() as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/")


async def test_webui_backend_with_basic_auth_over_the_shared_client() -> None:
    with FakeSDWebUI() as webui:
        async with shared_client() as http:
            settings = settings_for(webui, api_key="user:hunter22")
            backend = create(settings, BackendDeps(http))
            images = await backend.generate(generation_request())
            webui.faults.fail_next("reset")
            with pytest.raises(BackendError):
                await backend.generate(generation_request())
            await backend.aclose()
    assert len(images) == 1
    sent = webui.received("/sdapi/v1/txt2img")[0]
    assert sent.headers["authorization"] == "Basic dXNlcjpodW50ZXIyMg=="


async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)  # cancelled when the test's server closes


@CLIENTS
async def test_a_peer_that_stops_reading_a_big_body_is_a_write_timeout(
    make: Callable[[], httpx.AsyncClient],
) -> None:
    async with serve(never_read) as url, make() as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post(url, content=b"x" * 50_000_000, timeout=0.5)


async def test_a_big_body_then_a_slow_answer_is_not_a_timeout() -> None:
    body = b"x" * 3_000_000

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await read_request(reader)
        await asyncio.sleep(1.0)  # longer than the write timeout, shorter than the read one
        writer.write(OK if received.endswith(body) else OK.replace(b"ok", b"no"))
        await writer.drain()
        writer.close()

    async with serve(slow) as url, shared_client() as client:
        timeout = httpx.Timeout(5, write=0.3)
        response = await client.post(url, content=body, timeout=timeout)
    assert response.text == "ok"


# -- the short way of a JSON request (send_json) ---------------------------------------------


async def json_requests(client: httpx.AsyncClient, url: str) -> list[httpx.Response]:
    """What a generator backend sends: JSON bodies through http.send, with and without
    headers of its own and Basic auth."""
    return [
        await send(client, "POST", url + "/sdapi/v1/txt2img", server=url, timeout=5, json={}),
        await send(
            client,
            "POST",
            url + "/v1/images/generations",
            server=url,
            timeout=5,
            json={"prompt": "一只猫 ✓", "n": 1, "size": [64, 64], "x": None},
            headers={"Authorization": "Bearer k", "X-Title": "pixelkiln"},
        ),
        await send(
            client,
            "POST",
            url + "/sdapi/v1/img2img",
            server=url,
            timeout=5,
            json={"init_images": ["aGk="]},
            auth=httpx.BasicAuth("user", "pass"),
            headers={"Content-Type": "application/json; charset=utf-8"},
        ),
    ]


async def test_json_requests_take_the_short_way_byte_for_byte_as_httpx_sends_them() -> None:
    sent: dict[str, list[bytes]] = {}
    answers: dict[str, list[tuple[int, str, list[tuple[bytes, bytes]], bytes]]] = {}
    answer = OK.replace(b"\r\n\r\n", b"\r\nX-Extra: kept\r\nX-Extra: twice\r\n\r\n", 1)
    for name, make in (("httpx", httpx.AsyncClient), ("aiohttp", shared_client)):
        seen: list[bytes] = []
        async with serve(recorder(seen, answer)) as url, make() as client:
            responses = await json_requests(client, url)
        port = url.rsplit(":", 1)[1].encode()
        sent[name] = [s.replace(port, b"PORT") for s in seen]
        answers[name] = [
            (r.status_code, r.reason_phrase, r.headers.raw, r.content) for r in responses
        ]
    assert len(sent["aiohttp"]) == 3
    assert sent["aiohttp"] == sent["httpx"]
    assert answers["aiohttp"] == answers["httpx"]
    assert b"Authorization: Basic dXNlcjpwYXNz" in sent["aiohttp"][2]


async def test_send_json_is_taken_by_a_plain_shared_client_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bytes] = []
    async with serve(recorder(seen)) as url:
        target = httpx.URL(url + "/sdapi/v1/txt2img")

        async def short(client: httpx.AsyncClient, **kwargs: object) -> bool:
            answer = await send_json(client, "POST", target, {}, timeout=5, **kwargs)  # type: ignore[arg-type]
            return answer is not None

        async with shared_client() as client:
            assert await short(client)
            assert await short(client, auth=httpx.BasicAuth("u", "p"))
            assert not await short(client, auth=httpx.DigestAuth("u", "p"))
            big = "x" * 70_000  # past one write: httpx's write timeout applies to it
            assert await send_json(client, "POST", target, {"b": big}, timeout=5) is None
            client.cookies.set("session", "abc")  # cookies to send: httpx's own way
            assert not await short(client)
        async with httpx.AsyncClient() as plain:  # not over our transport
            assert not await short(plain)
        async with shared_client(event_hooks={"request": [lambda r: None]}) as hooked:
            assert not await short(hooked)
        async with shared_client(auth=("u", "p")) as authed:
            assert not await short(authed)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        async with shared_client() as proxied:  # a proxy is mounted: never the short way
            assert not await short(proxied)


async def test_a_cookie_set_on_the_short_way_is_sent_back() -> None:
    seen: list[bytes] = []
    answer = OK.replace(b"\r\n\r\n", b"\r\nSet-Cookie: session=abc; Path=/\r\n\r\n", 1)
    async with serve(recorder(seen, answer)) as url, shared_client() as client:
        await send(client, "POST", url + "/login", server=url, timeout=5, json={})
        await send(client, "POST", url + "/next", server=url, timeout=5, json={})
    assert b"Cookie: session=abc" not in seen[0]
    assert b"Cookie: session=abc" in seen[1]


@CLIENTS
async def test_a_gzip_json_answer_through_send_is_decoded_once(
    make: Callable[[], httpx.AsyncClient],
) -> None:
    body = gzip.compress(b'{"images": ["aGk="]}')
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    async with serve(recorder([], answer)) as url, make() as client:
        response = await send(client, "POST", url, server=url, timeout=5, json={"a": 1})
    assert response.json() == {"images": ["aGk="]}
    assert response.headers["content-encoding"] == "gzip"


async def test_an_error_status_on_the_short_way_is_ours() -> None:
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow"
    async with serve(recorder([], answer)) as url, shared_client() as client:
        with pytest.raises(RateLimitedError) as info:
            await send(client, "POST", url, server=url, timeout=5, json={})
    assert info.value.retry_after == 7
