"""The requests of the Python clients, as data, and how to read their answers.

:class:`pixelkiln.Client` and :class:`pixelkiln.AsyncClient` send the same
requests and differ only in how (blocking or awaited); every request's shape
lives here once, as a :class:`Call`. Only httpx and pydantic are imported, so
the clients never pull in the server's FastAPI.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from pixelkiln.exceptions import KilnError
from pixelkiln.wire.schemas import (
    ActiveCount,
    AssetPublic,
    BatchDetail,
    BatchPublic,
    CreditsPublic,
    EventPublic,
    ImageDetail,
    Page,
    RegenerateResult,
    RetryResult,
    TaskPublic,
    WebhookDeliveryPublic,
    WebhookSecretPublic,
)

T = TypeVar("T")
#: upload parts: a path, or (file name, bytes)
FileInput = Path | str | tuple[str, bytes]


class ApiError(KilnError):
    """The server answered with an error; ``code`` is stable, ``message`` is for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.problems = problems or []
        super().__init__(f"{status} {code}: {message}")


def raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise ApiError(
            response.status_code,
            error["code"],
            error["message"],
            error.get("field"),
            error.get("problems"),
        )
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "http_error", response.text[:500]) from None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    data: dict[str, str] | None = None

    @property
    def retryable(self) -> bool:
        """Safe to send again after a network error: reads, and keyed creates."""
        return self.method == "GET" or "Idempotency-Key" in self.headers

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request, with ``http``'s base URL, headers and timeout (built anew per try)."""
        return http.build_request(
            self.method,
            self.path,
            params=self.params,
            json=self.json,
            headers=self.headers,
            files=self.files,
            data=self.data,
        )

    def backoff(self, exc: httpx.TransportError, attempt: int, retries: int) -> float:
        """Seconds to wait before sending again after try ``attempt`` (from 0) failed with
        ``exc``; raises ``exc`` when the call is not retryable or the ``retries`` are spent.
        """
        if not self.retryable or attempt >= retries:
            raise exc
        return 0.5 * 2.0**attempt

    def read(self, response: httpx.Response) -> T:
        """The answer parsed, or :class:`ApiError` for an error answer."""
        raise_for(response)
        return self.parse(response)


def _model(cls: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda r: cls.model_validate_json(r.content)


def _adapter(kind: Any) -> Callable[[httpx.Response], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(kind)
    return lambda r: adapter.validate_json(r.content)


def _no_content(_: httpx.Response) -> None:
    return None


def _bytes(r: httpx.Response) -> bytes:
    return r.content


def _files(items: Iterable[FileInput]) -> list[tuple[str, tuple[str, bytes]]]:
    parts = []
    for item in items:
        if isinstance(item, tuple):
            parts.append(("files", item))
        else:
            path = Path(item)
            parts.append(("files", (path.name, path.read_bytes())))
    return parts


def _spec_json(spec: BaseModel | dict[str, Any]) -> Any:
    return spec.model_dump(mode="json", exclude_none=True) if isinstance(spec, BaseModel) else spec


class Calls:
    """Every request the clients make, as data."""

    @staticmethod
    def create_batch(
        spec: BaseModel | dict[str, Any], key: str | None, wait: bool, timeout: float | None
    ) -> Call[BatchDetail]:
        params: dict[str, Any] = {"wait": "true"} if wait else {}
        if timeout is not None:
            params["timeout"] = timeout
        return Call(
            "POST",
            "/api/v1/batches",
            _model(BatchDetail),
            params,
            _spec_json(spec),
            {"Idempotency-Key": key or uuid.uuid4().hex},
        )

    @staticmethod
    def create_from_images(
        files: Iterable[FileInput], prompt: str, fields: dict[str, Any], key: str | None
    ) -> Call[BatchDetail]:
        data = {k: str(v) for k, v in {**fields, "prompt": prompt}.items() if v is not None}
        return Call(
            "POST",
            "/api/v1/batches/upload",
            _model(BatchDetail),
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
            files=_files(files),
            data=data,
        )

    @staticmethod
    def upload(files: Iterable[FileInput]) -> Call[list[AssetPublic]]:
        return Call("POST", "/api/v1/assets", _adapter(list[AssetPublic]), files=_files(files))

    @staticmethod
    def get_batch(batch_id: int, task_limit: int, task_offset: int) -> Call[BatchDetail]:
        params = {"task_limit": task_limit, "task_offset": task_offset}
        return Call("GET", f"/api/v1/batches/{batch_id}", _model(BatchDetail), params)

    @staticmethod
    def list_batches(
        status: str | None, q: str | None, limit: int, offset: int
    ) -> Call[Page[BatchPublic]]:
        params = {"limit": limit, "offset": offset, "status": status, "q": q}
        params = {k: v for k, v in params.items() if v is not None}
        return Call("GET", "/api/v1/batches", _model(Page[BatchPublic]), params)

    @staticmethod
    def active() -> Call[ActiveCount]:
        return Call("GET", "/api/v1/batches/active", _model(ActiveCount))

    @staticmethod
    def cancel(batch_id: int) -> Call[BatchPublic]:
        return Call("POST", f"/api/v1/batches/{batch_id}/cancel", _model(BatchPublic))

    @staticmethod
    def retry(
        batch_id: int, task_ids: list[int] | None, include_cancelled: bool
    ) -> Call[RetryResult]:
        body = {"task_ids": task_ids, "include_cancelled": include_cancelled}
        return Call("POST", f"/api/v1/batches/{batch_id}/retry", _model(RetryResult), json=body)

    @staticmethod
    def retry_task(task_id: int) -> Call[RetryResult]:
        return Call("POST", f"/api/v1/tasks/{task_id}/retry", _model(RetryResult))

    @staticmethod
    def regenerate(
        batch_id: int, keys: list[str] | None, task_ids: list[int] | None, replace: bool
    ) -> Call[RegenerateResult]:
        body: dict[str, Any] = {"replace": replace}
        body.update({"keys": keys} if keys is not None else {"task_ids": task_ids})
        path = f"/api/v1/batches/{batch_id}/regenerate"
        return Call("POST", path, _model(RegenerateResult), json=body)

    @staticmethod
    def get_task(task_id: int, history: bool = False) -> Call[TaskPublic]:
        params = {"history": "true"} if history else {}
        return Call("GET", f"/api/v1/tasks/{task_id}", _model(TaskPublic), params)

    @staticmethod
    def get_image(image_id: int) -> Call[ImageDetail]:
        return Call("GET", f"/api/v1/images/{image_id}", _model(ImageDetail))

    @staticmethod
    def download(image: int | str, base_url: httpx.URL) -> Call[bytes]:
        """By id, or by a URL on the client's own server (the token goes with it)."""
        if isinstance(image, int):
            return Call("GET", f"/api/v1/images/{image}/file", _bytes)
        same_origin(image, base_url)
        return Call("GET", image, _bytes)

    @staticmethod
    def delete_batch(batch_id: int) -> Call[None]:
        return Call("DELETE", f"/api/v1/batches/{batch_id}", _no_content)

    @staticmethod
    def credits() -> Call[CreditsPublic]:
        return Call("GET", "/api/v1/me/credits", _model(CreditsPublic))

    @staticmethod
    def webhooks(batch_id: int) -> Call[list[WebhookDeliveryPublic]]:
        path = f"/api/v1/batches/{batch_id}/webhooks"
        return Call("GET", path, _adapter(list[WebhookDeliveryPublic]))

    @staticmethod
    def webhook_secret(rotate: bool) -> Call[WebhookSecretPublic]:
        if rotate:
            return Call("POST", "/api/v1/me/webhook-secret/rotate", _model(WebhookSecretPublic))
        return Call("GET", "/api/v1/me/webhook-secret", _model(WebhookSecretPublic))


_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _PORTS.get(url.scheme)


def same_origin(url: str, base_url: httpx.URL) -> None:
    """Refuse (``ValueError``) an absolute URL on another server than ``base_url``: the
    client's bearer token goes with every request and must not leak there. Paths pass.
    """
    target = httpx.URL(url)
    if (target.scheme or target.host) and _origin(target) != _origin(base_url):
        raise ValueError(
            f"refusing to send the API token to {url!r}: not on the client's server "
            f"({base_url}); fetch URLs elsewhere with a plain HTTP client"
        )


class SSEParser:
    """Server-Sent Events, line by line (https://html.spec.whatwg.org/#event-stream)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> EventPublic | None:
        if not line:
            data, self._data = "\n".join(self._data), []
            return EventPublic.model_validate_json(data) if data else None
        if line.startswith(":"):
            return None  # comment: keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None  # id/event/retry are in the data object too


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class StreamState:
    """Where a batch stream is: the last id seen and failures in a row.

    A ``done`` event does not end a stream: after a retry the server replays
    the ``done`` of an earlier run and goes on with the new one. The server
    closes the stream after the ``done`` that really ends the batch, and the
    client stops when, the stream closed, a GET says the batch is finished;
    otherwise it reconnects after the last id.
    """

    def __init__(self, last: int | None, max_failures: int) -> None:
        self.last = last
        self.failures = 0
        self.max_failures = max_failures

    def request(self, batch_id: int) -> tuple[str, dict[str, str]]:
        headers = {"Last-Event-ID": str(self.last)} if self.last else {}
        return f"/api/v1/batches/{batch_id}/events", headers

    def seen(self, event: EventPublic) -> EventPublic:
        self.last, self.failures = event.id, 0
        return event

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures > self.max_failures:
            raise exc
