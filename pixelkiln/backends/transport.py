"""An :class:`httpx.AsyncBaseTransport` that sends over aiohttp: httpx's API, aiohttp's cost.

Backends keep receiving an :class:`httpx.AsyncClient` (the plugin contract);
only what moves the bytes changes, the way httpx means it to
(``AsyncClient(transport=...)``). httpx's default transport (httpcore on
anyio and h11) costs about three times aiohttp's CPU per request, and a
scheduler sends one request per task, so the engine's shared client uses this.

What stays exactly as httpx does it, because httpx's client layer still does
it: URL and header building, auth (``httpx.BasicAuth``), cookies, redirects,
event hooks, decoding ``Content-Encoding`` (aiohttp's own decompression is off,
so a gzip answer is decoded once, by httpx). What this module makes faithful:

* the request goes out with httpx's headers, names and order as httpx built
  them, and nothing of aiohttp's (no ``User-Agent``, ``Accept``,
  ``Accept-Encoding``, ``Content-Type`` of its own); the path is sent as
  httpx encoded it;
* per-request timeouts (``request.extensions["timeout"]``) and failures raise
  httpx's exceptions (:func:`_map_error`), so
  :func:`pixelkiln.backends.http.map_transport_error` maps them as before;
* the response body is streamed (``client.stream(...)`` works), and closing a
  response gives its connection back or drops it;
* TLS is verified with httpx's own context (certifi, ``SSL_CERT_FILE``);
  ``max_connections`` and ``keepalive_expiry`` come from :class:`httpx.Limits`;
* the aiohttp session is opened on the first request, on the loop that sends
  it, so the transport (and its client) can be built outside a running loop;
  ``aclose()`` closes it.

:func:`send_json` is a shorter way for the request a scheduler sends per task (a
generator's JSON API, through :func:`pixelkiln.backends.http.send`): the same bytes
and the same response, without httpx's request object and flows, for a client of
:func:`shared_client` and a request that nothing of httpx's would change.

Proxies are not this module's business: :func:`shared_client` mounts httpx's
default transport for every proxy the environment names (``trust_env``, as
httpx does), so proxied requests take exactly the path they took before.

Known differences, none of which a pixelkiln backend meets: request bodies are
read whole before sending (httpx streams an iterator body chunk by chunk); a
body-less ``DELETE``/``POST`` carries ``Content-Length: 0`` (httpx sends it for
``POST`` only); the write timeout bounds each 64 KiB of a body rather than
each socket write; HTTP/1.1 only, as httpx without ``http2=True``.

>>> client = shared_client(max_connections=100)   # doctest: +SKIP
>>> response = await client.post(url, json=payload, timeout=30)
>>> await client.aclose()
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
from yarl import URL

#: httpx's own defaults (100 connections, 5 s keep-alive)
DEFAULT_LIMITS = httpx.Limits()
#: headers aiohttp would add on its own; httpx already put in the ones it wants
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: longest status or header line we accept (h11 takes 16 KiB of headers; aiohttp's default is 8 KiB)
MAX_LINE = 65536
#: bodies up to this go out in one write without waiting (aiohttp's write buffer);
#: larger ones are sent in chunks of it, each under httpx's write timeout
WRITE_CHUNK = 65536
#: how many distinct request URLs keep their parsed form (a scheduler sends to a few endpoints)
URL_CACHE = 256


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests over an :class:`aiohttp.ClientSession`.

    ``limits`` as httpx's (``max_connections``; ``keepalive_expiry``); ``verify``
    True, False or an :class:`ssl.SSLContext`, as httpx's ``verify``.

    >>> client = httpx.AsyncClient(transport=AiohttpTransport())   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = DEFAULT_LIMITS,
        verify: ssl.SSLContext | bool = True,
        trust_env: bool = True,
    ) -> None:
        self._limits = limits
        # built now, as httpx builds its own: loading the CA bundle blocks for a while,
        # and on the loop it would hold back every task timed to start meanwhile
        self._ssl = _ssl_context(verify, trust_env)  # trust_env: SSL_CERT_FILE / _DIR
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        """The session, opened on first use on the running loop (aiohttp needs one)."""
        limits = self._limits
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=self._ssl,
            use_dns_cache=False,  # httpx resolves each new connection
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes Content-Encoding, once
            skip_auto_headers=SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,  # no netrc credentials; proxies are mounted in httpx
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'."
                if url.scheme
                else "Request URL is missing an 'http://' or 'https://' protocol.",
                request=request,
            )
        session = self._session or self._open()
        body = await request.aread()
        timeouts = request.extensions.get("timeout") or {}
        write = timeouts.get("write")
        try:
            if write is not None and len(body) > WRITE_CHUNK:
                response = await self._send_watched(session, request, body, write)
            else:
                response = await self._send(session, request, body or None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, request) from exc
        return _answer(response, _Body(response, request))

    async def _send(
        self, session: aiohttp.ClientSession, request: httpx.Request, data: Any
    ) -> aiohttp.ClientResponse:
        timeout = _timeout(request.extensions.get("timeout"))
        return await self._request(
            session, request.method, request.url, data, request.headers.raw, timeout
        )

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: httpx.URL,
        data: Any,
        headers: list[tuple[bytes, bytes]],
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        return await session.request(
            method,
            self._url(url),
            data=data,
            headers=_headers(headers),
            allow_redirects=False,  # httpx follows them, if asked to
            timeout=timeout,
        )

    async def _send_watched(
        self, session: aiohttp.ClientSession, request: httpx.Request, body: bytes, write: float
    ) -> aiohttp.ClientResponse:
        """:meth:`_send` with httpx's write timeout, which aiohttp lacks.

        aiohttp waits for ever on a peer that stops reading a body larger than
        its write buffer (and starts its read timeout only once the body is out).
        The body goes out in chunks; each must be taken within ``write`` seconds,
        else the request is cancelled and httpx.WriteTimeout raised.
        """
        watch = asyncio.timeout(None)
        try:
            async with watch:
                return await self._send(session, request, _paced(body, watch, write))
        except TimeoutError as exc:
            if watch.expired():
                raise httpx.WriteTimeout(
                    "timed out sending the request body", request=request
                ) from exc
            raise

    async def send_json(
        self,
        method: str,
        url: httpx.URL,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        timeout: float,
    ) -> httpx.Response:
        """A request as httpx would hand it to :meth:`handle_async_request`, sent and read
        whole without building httpx's request and streamed response (:func:`send_json`)."""
        session = self._session or self._open()
        try:
            response = await self._request(
                session, method, url, body, headers, _timeout_of(timeout)
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, httpx.Request(method, url)) from exc
        try:
            content = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, httpx.Request(method, url), reading=True) from exc
        finally:
            response.release()
        answer = _answer(response, httpx.ByteStream(content))
        answer.read()  # decoded here (Content-Encoding), as the client's read would
        return answer

    def _url(self, url: httpx.URL) -> URL:
        """aiohttp's form of ``url``: encoded as httpx encoded it, credentials left out."""
        text = str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            # httpx's URL is already percent-encoded: yarl must not requote it
            # (``%2F`` would become ``/``); userinfo became an Authorization header
            parsed = URL.build(
                scheme=url.scheme,
                host=url.raw_host.decode("ascii"),
                port=url.port,
                path=url.raw_path.decode("ascii").partition("?")[0],
                query_string=url.query.decode("ascii"),
                encoded=True,
            )
            if len(self._urls) >= URL_CACHE:
                self._urls.clear()
            self._urls[text] = parsed
        return parsed

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _answer(response: aiohttp.ClientResponse, stream: httpx.AsyncByteStream) -> httpx.Response:
    """httpx's response for aiohttp's ``response``, its body read from ``stream``."""
    return httpx.Response(
        response.status,
        headers=list(response.raw_headers),
        stream=stream,
        extensions={
            "http_version": b"HTTP/1.1",
            "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
        },
    )


class _Body(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx reads it; closing gives the connection back."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc, self._request, reading=True) from exc

    async def aclose(self) -> None:
        # release() keeps a fully read connection in the pool and closes one that is not
        self._response.release()


async def _paced(body: bytes, watch: asyncio.Timeout, seconds: float) -> AsyncIterator[bytes]:
    """``body`` in chunks, moving ``watch``'s deadline as each one is taken; off at the end."""
    loop = asyncio.get_running_loop()
    for start in range(0, len(body), WRITE_CHUNK):
        watch.reschedule(loop.time() + seconds)
        yield body[start : start + WRITE_CHUNK]
    watch.reschedule(None)  # aiohttp asks past the end: the body is out


def _headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """httpx's headers for aiohttp, repeated names spelled as their first occurrence.

    aiohttp keeps a repeated header only when its name is spelled the same each
    time (``X-A: 1``, ``x-a: 2`` would go out as ``x-a: 2`` alone).
    """
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    spelled: dict[str, str] = {}
    for name, _ in headers:
        spelled.setdefault(name.lower(), name)
    if len(spelled) == len(headers):
        return headers
    return [(spelled[name.lower()], value) for name, value in headers]


@functools.lru_cache(maxsize=64)
def _timeout_of(seconds: float) -> aiohttp.ClientTimeout:
    """:func:`_timeout` of httpx's ``Timeout(seconds)``."""
    return _timeout(httpx.Timeout(seconds).as_dict())


def _ssl_context(verify: ssl.SSLContext | bool, trust_env: bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    return httpx.create_ssl_context(verify=verify, trust_env=trust_env)


def _timeout(config: Mapping[str, float | None] | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx's ``{"connect", "read", "write", "pool"}``."""
    if not config:
        return _NO_TIMEOUT
    return _client_timeout(config.get("connect"), config.get("read"), config.get("pool"))


_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


@functools.lru_cache(maxsize=64)
def _client_timeout(
    connect: float | None, read: float | None, pool: float | None
) -> aiohttp.ClientTimeout:
    """aiohttp's ``connect`` bounds waiting for a pooled connection *and* opening one;
    it takes httpx's pool timeout, and ``sock_connect`` httpx's connect (so with
    pixelkiln's one timeout for all four, a new connection waits and opens within
    it, where httpx allows it each). ``sock_read`` is per read, like httpx's read."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=pool,
        sock_connect=connect,
        sock_read=read,
    )


#: aiohttp failures and the httpx exception each stands for, most specific first
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # body cut short
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not HTTP
    (aiohttp.ClientOSError, httpx.ReadError),  # reset
    (aiohttp.ClientConnectionError, httpx.NetworkError),
)


def _map_error(
    exc: BaseException, request: httpx.Request, *, reading: bool = False
) -> httpx.TransportError:
    """httpx's exception for an aiohttp failure (what httpcore raises for the same fault)."""
    for foreign, ours in _ERRORS:
        if isinstance(exc, foreign):
            return ours(str(exc) or type(exc).__name__, request=request)
    if reading:
        return httpx.ReadError(str(exc) or type(exc).__name__, request=request)
    return httpx.TransportError(str(exc) or type(exc).__name__, request=request)


#: clients of :func:`shared_client` with no proxy mounted, and their transport
_DIRECT: weakref.WeakKeyDictionary[httpx.AsyncClient, AiohttpTransport] = (
    weakref.WeakKeyDictionary()
)


async def send_json(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | None = None,
    timeout: float,
) -> httpx.Response | None:
    """``client.request(method, url, json=payload, headers=headers, auth=auth,
    timeout=timeout)``, read whole, straight over the client's aiohttp session: the
    same bytes on the wire and the same response, for a third of httpx's CPU (its
    request and response objects, auth and redirect flows, streamed read). None when
    the client or the request has anything httpx would add to (a proxy, event hooks,
    cookies to send, a client auth or base URL, credentials in the URL, an auth other
    than Basic, a body large enough for the write timeout): send it through httpx.

    A scheduler sends one such request per task (a generator's JSON API).
    """
    transport = _DIRECT.get(client)
    if transport is None or not _plain(client, url, auth):
        return None
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = body.encode("utf-8")
    if len(data) > WRITE_CHUNK:
        return None
    merged = httpx.Headers(client.headers)  # what httpx's client merges, in its order
    if headers:
        merged.update(headers)
    merged.setdefault("Content-Length", str(len(data)))
    merged.setdefault("Content-Type", "application/json")
    if "Host" not in merged:
        merged = httpx.Headers([(b"Host", url.netloc), *merged.raw])
    if auth is not None:
        merged["Authorization"] = auth._auth_header  # type: ignore[attr-defined]
    response = await transport.send_json(method, url, data, merged.raw, timeout)
    if "set-cookie" in response.headers or "set-cookie2" in response.headers:
        response.request = httpx.Request(method, url)  # the jar reads the request's URL
        client.cookies.extract_cookies(response)
    return response


def _plain(client: httpx.AsyncClient, url: httpx.URL, auth: httpx.Auth | None) -> bool:
    hooks = client.event_hooks
    return (
        url.scheme in ("http", "https")
        and not url.userinfo
        and client.auth is None
        and (auth is None or (type(auth) is httpx.BasicAuth and hasattr(auth, "_auth_header")))
        and not client.base_url.raw_path.strip(b"/")
        and not client.base_url.host
        and not hooks["request"]
        and not hooks["response"]
        and not client.cookies.jar
        and not client.follow_redirects
    )


def shared_client(
    *, max_connections: int | None = 100, trust_env: bool = True, **kwargs: Any
) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` over :class:`AiohttpTransport`.

    Environment proxies (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) are
    mounted on httpx's own transport, as ``httpx.AsyncClient(trust_env=True)``
    would build them; everything else goes over aiohttp. ``kwargs`` go to
    :class:`httpx.AsyncClient` (``timeout``, ``headers``, ...).
    """
    limits = httpx.Limits(max_connections=max_connections)
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    if trust_env:
        for pattern, proxy in _environment_proxies().items():
            mounts[pattern] = (
                None
                if proxy is None
                else httpx.AsyncHTTPTransport(proxy=proxy, limits=limits, trust_env=True)
            )
    client = httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=trust_env),
        mounts=mounts,
        limits=limits,
        trust_env=trust_env,
        **kwargs,
    )
    # the same jar, read only when an answer sets a cookie (see _Cookies)
    client._cookies = _Cookies(client.cookies.jar)
    if not mounts:  # no proxy: plain JSON requests may skip httpx's layers (send_json)
        _DIRECT[client] = client._transport  # type: ignore[assignment]
    return client


class _Cookies(httpx.Cookies):
    """httpx's cookies, minus the work of reading an answer that sets none.

    httpx hands every response to :meth:`extract_cookies`, which wraps the
    request and response for :mod:`http.cookiejar` (a sixth of a request's CPU)
    even when there is no ``Set-Cookie``, the only headers the jar reads.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def _environment_proxies() -> dict[str, str | None]:
    """httpx's reading of the proxy variables (what it mounts when it builds its transport)."""
    from httpx._utils import get_environment_proxies  # the function httpx itself calls

    return get_environment_proxies()
