"""The boundary rules: HTTP statuses and transport failures → our exceptions."""

from __future__ import annotations

import base64
import email.utils

import httpx
import pytest

from pixelkiln.backends.http import (
    ServerDownError,
    data_url,
    decode_image,
    error_for_status,
    error_message,
    image_mime,
    map_transport_error,
    parse_retry_after,
    raise_for_status,
    redact_url,
)
from pixelkiln.backends.policy import PoolPolicy, RateLimiter
from pixelkiln.backends.pooled import scrub
from pixelkiln.exceptions import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    QuotaExhaustedError,
    RateLimitedError,
    RejectedInputError,
    ServerError,
)

SERVER = "http://gpu1:7860"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, RejectedInputError, False),
        (401, RejectedInputError, False),
        (402, QuotaExhaustedError, False),
        (403, RejectedInputError, False),
        (404, RejectedInputError, False),
        (422, RejectedInputError, False),
        (408, BackendTimeoutError, True),
        (429, RateLimitedError, True),
        (500, ServerError, True),
        (502, ServerError, True),
        (503, ServerError, True),
    ],
)
def test_status_maps_to_exception(status: int, kind: type[Exception], retryable: bool) -> None:
    error = error_for_status(status, "the generator's words", server=SERVER)
    assert type(error) is kind
    assert error.retryable is retryable
    assert error.server == SERVER
    assert "the generator's words" in str(error) and SERVER in str(error)


def test_raise_for_status_carries_retry_after_and_message() -> None:
    response = httpx.Response(
        429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}}
    )
    with pytest.raises(RateLimitedError, match="slow down") as info:
        raise_for_status(response, server=SERVER)
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, {"message": "You exceeded your current quota", "type": "insufficient_quota"}),
        (429, {"message": "quota", "code": "insufficient_quota", "type": "requests"}),
        (
            400,
            {
                "message": "Billing hard limit has been reached",
                "code": "billing_hard_limit_reached",
            },
        ),
        (402, {"message": "Insufficient credits", "code": 402}),
    ],
)
def test_an_account_out_of_money_is_quota_exhausted_not_rate_limited(
    status: int, error: dict[str, object]
) -> None:
    response = httpx.Response(status, json={"error": error})
    with pytest.raises(QuotaExhaustedError, match="quota or credits exhausted") as info:
        raise_for_status(response, server=SERVER)
    assert not info.value.retryable and str(error["message"]) in str(info.value)


def test_an_ordinary_429_stays_a_rate_limit() -> None:
    response = httpx.Response(429, json={"error": {"message": "slow", "type": "requests"}})
    with pytest.raises(RateLimitedError):
        raise_for_status(response, server=SERVER)


def test_raise_for_status_passes_success() -> None:
    raise_for_status(httpx.Response(200, json={}), server=SERVER)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "999999"}, 3600.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30, abs=1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"error": {"message": "Invalid size", "type": "invalid_request_error"}}',
            "Invalid size",
        ),
        (
            b'{"error": "HTTPException", "detail": "Sampler not found", "errors": "x"}',
            "Sampler not found",
        ),
        (b'{"error": "RuntimeError", "detail": "", "errors": "CUDA OOM"}', "CUDA OOM"),
        (b'{"detail": [{"loc": ["body", "steps"], "msg": "not an int"}]}', "steps: not an int"),
        (
            b'{"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs"}}',
            "Prompt has no outputs",
        ),
        (b"500 Internal Server Error", "500 Internal Server Error"),
        (b"", "fallback"),
    ],
)
def test_error_message_dialects(body: bytes, expected: str) -> None:
    assert error_message(body, "fallback") == expected


def test_error_message_is_bounded() -> None:
    assert len(error_message(b"x" * 10_000)) <= 500


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), ServerDownError),
        (httpx.ReadError("reset"), BackendUnavailableError),
        (httpx.RemoteProtocolError("closed"), BackendUnavailableError),
        (httpx.WriteError("broken pipe"), BackendUnavailableError),
        (httpx.ReadTimeout("slow"), BackendTimeoutError),
        (httpx.ConnectTimeout("slow"), BackendTimeoutError),
        (httpx.PoolTimeout("busy"), BackendTimeoutError),
        (httpx.UnsupportedProtocol("ftp"), RejectedInputError),
        (httpx.DecodingError("gzip"), ServerError),
    ],
)
def test_transport_errors(exc: httpx.HTTPError, kind: type[Exception]) -> None:
    error = map_transport_error(exc, server=SERVER)
    assert type(error) is kind
    assert SERVER in str(error)


def test_connection_refused_is_a_kind_of_unavailable() -> None:
    assert issubclass(ServerDownError, BackendUnavailableError)


def test_decode_image_accepts_base64_and_data_urls() -> None:
    raw = base64.b64encode(PNG).decode()
    assert decode_image(raw, server=SERVER) == PNG
    assert decode_image(f"data:image/png;base64,{raw}", server=SERVER) == PNG
    assert decode_image(data_url(PNG), server=SERVER) == PNG


@pytest.mark.parametrize("value", ["not base64!", "", "data:image/png,plain", "data:xyz"])
def test_decode_image_rejects_garbage_as_server_error(value: str) -> None:
    with pytest.raises(ServerError):
        decode_image(value, server=SERVER)


def test_image_mime_sniffs_magic_numbers() -> None:
    assert image_mime(PNG) == "image/png"
    assert image_mime(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert image_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"


def test_redact_url_drops_credentials() -> None:
    assert redact_url("http://user:hunter22@gpu1:7860/x") == "http://gpu1:7860/x"
    assert redact_url(SERVER) == SERVER


def test_scrub_masks_a_secret_and_its_halves() -> None:
    error = RejectedInputError(f"{SERVER}: bad key sk-live-123456 for admin:hunter22")
    scrub(error, "sk-live-123456")
    assert "sk-live-123456" not in str(error)
    other = RejectedInputError("user admin with password hunter22 refused")
    scrub(other, "admin:hunter22")
    assert "hunter22" not in str(other) and "admin" not in str(other)


def test_rate_limiter_spaces_starts() -> None:
    now = [100.0]
    limiter = RateLimiter(rpm=60, burst=1, clock=lambda: now[0])
    assert [limiter.reserve() for _ in range(3)] == [0.0, 1.0, 2.0]
    now[0] = 110.0  # long idle: no credit beyond the burst
    assert [limiter.reserve() for _ in range(2)] == [0.0, 1.0]


def test_rate_limiter_burst() -> None:
    limiter = RateLimiter(rpm=60, burst=3, clock=lambda: 0.0)
    assert [limiter.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_pool_policy_from_options() -> None:
    policy = PoolPolicy.from_options({"failure_threshold": 2, "open_seconds": 3, "x": "y"})
    assert policy.failure_threshold == 2 and policy.open_seconds == 3.0
    with pytest.raises(ConfigError, match="failure_threshold"):
        PoolPolicy.from_options({"failure_threshold": "many"}, "sd")
    with pytest.raises(ConfigError, match="adaptive_concurrency"):
        PoolPolicy.from_options({"adaptive_concurrency": 1}, "sd")
    with pytest.raises(ConfigError, match="open_seconds"):
        PoolPolicy.from_options({"open_seconds": -1}, "sd")
