"""HTTP plumbing shared by every HTTP backend: error mapping and image decoding.

Foreign errors become :mod:`pixelkiln.exceptions` here, once, so each backend
module only speaks its generator's protocol. The rule the scheduler relies on:

* 4xx other than 408/429 → :class:`RejectedInputError` with the generator's own
  message (retrying the same request cannot help); an account out of quota or
  credits (402, or an error code such as OpenAI's ``insufficient_quota``, sent
  with 429) → :class:`QuotaExhaustedError`, which a fallback backend can take over;
* 408, timeouts → :class:`BackendTimeoutError`; 429 → :class:`RateLimitedError`
  with ``Retry-After``; 5xx and unreadable answers → :class:`ServerError`;
* connection refused → :class:`ServerDownError`; resets and other transport
  failures → :class:`BackendUnavailableError`.

Messages name the server (with any ``user:password@`` removed) and never a
header, so API keys and Basic credentials cannot leak through them.

>>> error_for_status(429, "slow down", server="http://gpu1:7860", retry_after=2.0)
RateLimitedError('http://gpu1:7860: HTTP 429: slow down')
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from pixelkiln.backends.transport import send_json
from pixelkiln.exceptions import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedInputError,
    ServerError,
)

#: longest Retry-After we believe; beyond it a server is misbehaving, not pacing us
MAX_RETRY_AFTER = 3600.0
#: error codes (OpenAI's ``error.code`` / ``error.type``) that mean the account is out of money
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
#: longest backend message we copy into an exception (bodies can be whole HTML pages)
MAX_MESSAGE = 500


class ServerDownError(BackendUnavailableError):
    """The connection was refused: nothing listens there, so the server is down, not slow."""


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return _clamp(float(millis) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return _clamp(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _clamp(when.timestamp() - (time.time() if now is None else now))


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(body: bytes | str, fallback: str = "") -> str:
    """The generator's own words from an error body, whatever its dialect.

    Knows ``{"error": {"message"}}`` (OpenAI, OpenRouter), ``{"detail": ...}``
    (FastAPI, the WebUI), ``{"error": "...", "errors": "..."}`` (the WebUI's
    handler), ``{"error": {"type", "message"}}`` (ComfyUI), and plain text.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return _short(text.strip() or fallback)
    return _short(_message_from(data) or fallback or text.strip())


def error_code(body: bytes | str) -> str:
    """The machine-readable code of an error body (``{"error": {"code"|"type"}}``), or ""."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    for key in ("code", "type"):
        value = error.get(key)
        if isinstance(value, str) and value in QUOTA_CODES:
            return value
    return str(error.get("code") or error.get("type") or "")


def _message_from(data: Any) -> str:
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "")
    detail = data.get("detail")
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(_validation_item(d) for d in detail)
    if detail:
        return str(detail)
    if data.get("errors"):
        return str(data["errors"])
    if isinstance(error, str) and error:
        return error
    return str(data.get("message") or "")


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", ""))


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def error_for_status(
    status: int,
    message: str,
    *,
    server: str,
    retry_after: float | None = None,
    code: str = "",
) -> BackendError:
    """The exception for an HTTP error ``status`` (see the module docstring for the rule).

    ``code`` is the body's error code, if any (:func:`error_code`).
    """
    text = f"{server}: HTTP {status}: {message}" if message else f"{server}: HTTP {status}"
    if status == 402 or code in QUOTA_CODES:
        return QuotaExhaustedError(f"{text} (quota or credits exhausted)", server=server)
    if status == 429:
        return RateLimitedError(text, server=server, retry_after=retry_after)
    if status == 408:
        return BackendTimeoutError(text, server=server)
    if 400 <= status < 500:
        return RejectedInputError(text, server=server)
    return ServerError(text, server=server)


def raise_for_status(response: httpx.Response, *, server: str) -> None:
    """Raise our exception for a non-2xx ``response`` (it must have been read)."""
    if response.is_success:
        return
    message = error_message(response.content, response.reason_phrase)
    raise error_for_status(
        response.status_code,
        message,
        server=server,
        retry_after=parse_retry_after(response.headers),
        code=error_code(response.content),
    ) from None


def map_transport_error(exc: httpx.HTTPError, *, server: str) -> BackendError:
    """Our exception for an httpx failure that produced no response."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeoutError(f"{server}: no answer in time ({kind})", server=server)
    if isinstance(exc, httpx.ConnectError):
        return ServerDownError(f"{server}: cannot connect ({kind})", server=server)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return RejectedInputError(f"{server}: unusable backend URL ({kind})", server=server)
    if isinstance(exc, httpx.TransportError):
        return BackendUnavailableError(f"{server}: connection failed ({kind})", server=server)
    return ServerError(f"{server}: HTTP failure ({kind})", server=server)


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    server: str,
    timeout: float,
    check: bool = True,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request and return the successful, fully read response.

    Every httpx exception and (unless ``check`` is false) every non-2xx status
    leaves as our exception. ``server`` is the (redacted) base URL named in
    messages.
    """
    try:
        response = None
        if "json" in kwargs and _JSON_ONLY.issuperset(kwargs):  # one per task: the short way
            response = await send_json(
                http,
                method,
                _url(url),
                kwargs["json"],
                headers=kwargs.get("headers"),
                auth=kwargs.get("auth"),
                timeout=timeout,
            )
        if response is None:
            response = await http.request(method, _url(url), timeout=_timeout(timeout), **kwargs)
    except httpx.InvalidURL as exc:
        raise RejectedInputError(f"{server}: unusable backend URL", server=server) from exc
    except httpx.HTTPError as exc:
        raise map_transport_error(exc, server=server) from exc
    if check:
        raise_for_status(response, server=server)
    return response


#: the arguments of a request :func:`~pixelkiln.backends.transport.send_json` may send
_JSON_ONLY = frozenset({"json", "headers", "auth"})


@functools.lru_cache(maxsize=512)
def _url(url: str) -> httpx.URL:
    """``url`` parsed once: a scheduler sends to a few endpoints over and over, and
    httpx parses a string URL twice per request (``httpx.URL`` is immutable)."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds)


def json_body(response: httpx.Response, *, server: str) -> Any:
    """The JSON of a successful response; ServerError when it is not JSON."""
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(
            f"{server}: answer is not valid JSON ({len(response.content)} bytes)", server=server
        ) from exc


def json_object(response: httpx.Response, *, server: str) -> dict[str, Any]:
    """Like :func:`json_body`, but the answer must be a JSON object."""
    data = json_body(response, server=server)
    if not isinstance(data, dict):
        raise ServerError(
            f"{server}: expected a JSON object, got {type(data).__name__}", server=server
        )
    return data


def decode_image(value: str, *, server: str) -> bytes:
    """Bytes of an image given as base64 or a ``data:`` URL; ServerError if it is neither."""
    payload = value
    if value.startswith("data:"):
        head, sep, payload = value.partition(",")
        if not sep or ";base64" not in head:
            raise ServerError(f"{server}: image data URL is not base64", server=server)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServerError(f"{server}: image is not valid base64", server=server) from exc
    if not data:
        raise ServerError(f"{server}: image is empty", server=server)
    return data


def encode_image(data: bytes) -> str:
    """Plain base64 of ``data`` (what the WebUI takes in ``init_images``)."""
    return base64.b64encode(data).decode("ascii")


def image_mime(data: bytes) -> str:
    """MIME type of encoded image bytes, from their magic number (PNG when unknown)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "image/png"


def data_url(data: bytes) -> str:
    """``data:<mime>;base64,...`` of image bytes (what chat APIs take)."""
    return f"data:{image_mime(data)};base64,{encode_image(data)}"


def join_url(base: str, path: str) -> str:
    """``base`` + ``path`` with exactly one slash between them."""
    return base.rstrip("/") + "/" + path.lstrip("/")
