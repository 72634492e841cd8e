"""Python client for the pixelkiln HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

A pipeline stage in ten lines::

    from pixelkiln import Client

    with Client("http://127.0.0.1:8000", token="pk_...") as kiln:
        batch = kiln.create_batch({"name": "storyboard 12", "tasks": [
            {"key": item.id, "prompt": item.image_prompt} for item in storyboard]})
        for event in kiln.stream(batch.id):             # reconnects with Last-Event-ID
            if event.type == "image_generated":
                save(event.data["item_key"], kiln.download(event.data["image"]["url"]))
            elif event.type == "error":
                log.warning("%s failed: %s", event.data.get("item_key"), event.data["error"])

Both clients share every request's shape (:class:`_Calls`); they differ only
in how the request is sent. Responses are parsed into the same pydantic
models the server validated them against (:mod:`pixelkiln.api.schemas`).
Errors arrive as :class:`ApiError` with the server's ``code``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from pixelkiln.api.schemas import (
    ActiveCount,
    AssetPublic,
    BatchDetail,
    BatchPublic,
    CreditsPublic,
    EventPublic,
    ImageDetail,
    Page,
    RetryResult,
    TaskPublic,
)
from pixelkiln.exceptions import KilnError
from pixelkiln.models import EventType

__all__ = ["ApiError", "AsyncClient", "Client", "EventPublic"]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
#: how long a quiet event stream may stay silent before we reconnect (server pings every 15 s)
STREAM_READ_TIMEOUT = 60.0
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


def _raise_for(response: httpx.Response) -> None:
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
class _Call(Generic[T]):
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


class _Calls:
    """Every request the clients make, as data."""

    @staticmethod
    def create_batch(
        spec: BaseModel | dict[str, Any], key: str | None, wait: bool, timeout: float | None
    ) -> _Call[BatchDetail]:
        params: dict[str, Any] = {"wait": "true"} if wait else {}
        if timeout is not None:
            params["timeout"] = timeout
        return _Call(
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
    ) -> _Call[BatchDetail]:
        data = {k: str(v) for k, v in {**fields, "prompt": prompt}.items() if v is not None}
        return _Call(
            "POST",
            "/api/v1/batches/upload",
            _model(BatchDetail),
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
            files=_files(files),
            data=data,
        )

    @staticmethod
    def upload(files: Iterable[FileInput]) -> _Call[list[AssetPublic]]:
        return _Call("POST", "/api/v1/assets", _adapter(list[AssetPublic]), files=_files(files))

    @staticmethod
    def get_batch(batch_id: int, task_limit: int, task_offset: int) -> _Call[BatchDetail]:
        params = {"task_limit": task_limit, "task_offset": task_offset}
        return _Call("GET", f"/api/v1/batches/{batch_id}", _model(BatchDetail), params)

    @staticmethod
    def list_batches(
        status: str | None, q: str | None, limit: int, offset: int
    ) -> _Call[Page[BatchPublic]]:
        params = {"limit": limit, "offset": offset, "status": status, "q": q}
        params = {k: v for k, v in params.items() if v is not None}
        return _Call("GET", "/api/v1/batches", _model(Page[BatchPublic]), params)

    @staticmethod
    def active() -> _Call[ActiveCount]:
        return _Call("GET", "/api/v1/batches/active", _model(ActiveCount))

    @staticmethod
    def cancel(batch_id: int) -> _Call[BatchPublic]:
        return _Call("POST", f"/api/v1/batches/{batch_id}/cancel", _model(BatchPublic))

    @staticmethod
    def retry(
        batch_id: int, task_ids: list[int] | None, include_cancelled: bool
    ) -> _Call[RetryResult]:
        body = {"task_ids": task_ids, "include_cancelled": include_cancelled}
        return _Call("POST", f"/api/v1/batches/{batch_id}/retry", _model(RetryResult), json=body)

    @staticmethod
    def retry_task(task_id: int) -> _Call[RetryResult]:
        return _Call("POST", f"/api/v1/tasks/{task_id}/retry", _model(RetryResult))

    @staticmethod
    def get_task(task_id: int) -> _Call[TaskPublic]:
        return _Call("GET", f"/api/v1/tasks/{task_id}", _model(TaskPublic))

    @staticmethod
    def get_image(image_id: int) -> _Call[ImageDetail]:
        return _Call("GET", f"/api/v1/images/{image_id}", _model(ImageDetail))

    @staticmethod
    def download(image: int | str) -> _Call[bytes]:
        path = f"/api/v1/images/{image}/file" if isinstance(image, int) else image
        return _Call("GET", path, _bytes)

    @staticmethod
    def delete_batch(batch_id: int) -> _Call[None]:
        return _Call("DELETE", f"/api/v1/batches/{batch_id}", _no_content)

    @staticmethod
    def credits() -> _Call[CreditsPublic]:
        return _Call("GET", "/api/v1/me/credits", _model(CreditsPublic))


class _SSEParser:
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


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _StreamState:
    """Where a batch stream is: the last id seen, failures in a row, whether it ended."""

    def __init__(self, last: int | None, max_failures: int) -> None:
        self.last = last
        self.failures = 0
        self.max_failures = max_failures
        self.ended = False

    def request(self, batch_id: int) -> tuple[str, dict[str, str]]:
        headers = {"Last-Event-ID": str(self.last)} if self.last else {}
        return f"/api/v1/batches/{batch_id}/events", headers

    def seen(self, event: EventPublic) -> EventPublic:
        self.last, self.failures = event.id, 0
        self.ended = event.type == EventType.DONE
        return event

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures > self.max_failures:
            raise exc


class Client:
    """Synchronous client. ``with Client(url, token=...) as kiln: ...``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    headers=call.headers,
                    files=call.files,
                    data=call.data,
                )
                break
            except httpx.TransportError:
                if not call.retryable or attempt == self.retries:
                    raise
                time.sleep(0.5 * 2**attempt)
        _raise_for(response)
        return call.parse(response)

    def create_batch(
        self,
        spec: BaseModel | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> BatchDetail:
        """Queue a batch. A key is made up when none is given, so a retried send is safe."""
        return self._run(_Calls.create_batch(spec, idempotency_key, wait, timeout))

    def create_batch_from_images(
        self,
        files: Iterable[FileInput],
        prompt: str,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> BatchDetail:
        """img2img: one task per image, one prompt for all (``preset_id``, ``denoise``…)."""
        return self._run(_Calls.create_from_images(files, prompt, fields, idempotency_key))

    def upload(self, files: Iterable[FileInput]) -> list[AssetPublic]:
        """Upload input images; use each ``ref`` as ``init_image`` / ``reference_images``."""
        return self._run(_Calls.upload(files))

    def get_batch(
        self, batch_id: int, *, task_limit: int = 50, task_offset: int = 0
    ) -> BatchDetail:
        return self._run(_Calls.get_batch(batch_id, task_limit, task_offset))

    def list_batches(
        self, *, status: str | None = None, q: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[BatchPublic]:
        return self._run(_Calls.list_batches(status, q, limit, offset))

    def active_batches(self) -> int:
        return self._run(_Calls.active()).active

    def cancel_batch(self, batch_id: int) -> BatchPublic:
        return self._run(_Calls.cancel(batch_id))

    def retry_batch(
        self, batch_id: int, *, task_ids: list[int] | None = None, include_cancelled: bool = False
    ) -> RetryResult:
        return self._run(_Calls.retry(batch_id, task_ids, include_cancelled))

    def retry_task(self, task_id: int) -> RetryResult:
        return self._run(_Calls.retry_task(task_id))

    def get_task(self, task_id: int) -> TaskPublic:
        return self._run(_Calls.get_task(task_id))

    def get_image(self, image_id: int) -> ImageDetail:
        return self._run(_Calls.get_image(image_id))

    def download(self, image: int | str) -> bytes:
        """An image's PNG bytes, by id or by the ``url`` an event or response gave."""
        return self._run(_Calls.download(image))

    def delete_batch(self, batch_id: int) -> None:
        self._run(_Calls.delete_batch(batch_id))

    def credits(self) -> CreditsPublic:
        return self._run(_Calls.credits())

    def stream(
        self,
        batch_id: int,
        *,
        last_event_id: int | None = None,
        max_failures: int = 10,
        reconnect_delay: float = 1.0,
    ) -> Iterator[EventPublic]:
        """The batch's events, from the start (or after ``last_event_id``) until ``done``.

        A dropped connection is resumed with ``Last-Event-ID``, so no event is
        missed or repeated; ``max_failures`` failed reconnects in a row raise.
        """
        state = _StreamState(last_event_id, max_failures)
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        while True:
            path, headers = state.request(batch_id)
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as r:
                    if not r.is_success:
                        r.read()
                        _raise_for(r)
                    parser = _SSEParser()
                    for line in r.iter_lines():
                        if (event := parser.feed(line)) is not None:
                            yield state.seen(event)
                            if state.ended:
                                return
            except httpx.TransportError as exc:
                state.failed(exc)
            else:  # the server closed the stream: over only if the batch is
                if self.get_batch(batch_id, task_limit=0).finished:
                    return
            time.sleep(reconnect_delay)


class AsyncClient:
    """Asynchronous client. ``async with AsyncClient(url, token=...) as kiln: ...``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(token), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    headers=call.headers,
                    files=call.files,
                    data=call.data,
                )
                break
            except httpx.TransportError:
                if not call.retryable or attempt == self.retries:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
        _raise_for(response)
        return call.parse(response)

    async def create_batch(
        self,
        spec: BaseModel | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> BatchDetail:
        """Queue a batch. A key is made up when none is given, so a retried send is safe."""
        return await self._run(_Calls.create_batch(spec, idempotency_key, wait, timeout))

    async def create_batch_from_images(
        self,
        files: Iterable[FileInput],
        prompt: str,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> BatchDetail:
        return await self._run(_Calls.create_from_images(files, prompt, fields, idempotency_key))

    async def upload(self, files: Iterable[FileInput]) -> list[AssetPublic]:
        return await self._run(_Calls.upload(files))

    async def get_batch(
        self, batch_id: int, *, task_limit: int = 50, task_offset: int = 0
    ) -> BatchDetail:
        return await self._run(_Calls.get_batch(batch_id, task_limit, task_offset))

    async def list_batches(
        self, *, status: str | None = None, q: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[BatchPublic]:
        return await self._run(_Calls.list_batches(status, q, limit, offset))

    async def active_batches(self) -> int:
        return (await self._run(_Calls.active())).active

    async def cancel_batch(self, batch_id: int) -> BatchPublic:
        return await self._run(_Calls.cancel(batch_id))

    async def retry_batch(
        self, batch_id: int, *, task_ids: list[int] | None = None, include_cancelled: bool = False
    ) -> RetryResult:
        return await self._run(_Calls.retry(batch_id, task_ids, include_cancelled))

    async def retry_task(self, task_id: int) -> RetryResult:
        return await self._run(_Calls.retry_task(task_id))

    async def get_task(self, task_id: int) -> TaskPublic:
        return await self._run(_Calls.get_task(task_id))

    async def get_image(self, image_id: int) -> ImageDetail:
        return await self._run(_Calls.get_image(image_id))

    async def download(self, image: int | str) -> bytes:
        return await self._run(_Calls.download(image))

    async def delete_batch(self, batch_id: int) -> None:
        await self._run(_Calls.delete_batch(batch_id))

    async def credits(self) -> CreditsPublic:
        return await self._run(_Calls.credits())

    async def stream(
        self,
        batch_id: int,
        *,
        last_event_id: int | None = None,
        max_failures: int = 10,
        reconnect_delay: float = 1.0,
    ) -> AsyncIterator[EventPublic]:
        """See :meth:`Client.stream`."""
        state = _StreamState(last_event_id, max_failures)
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        while True:
            path, headers = state.request(batch_id)
            try:
                async with self._http.stream("GET", path, headers=headers, timeout=timeout) as r:
                    if not r.is_success:
                        await r.aread()
                        _raise_for(r)
                    parser = _SSEParser()
                    async for line in r.aiter_lines():
                        if (event := parser.feed(line)) is not None:
                            yield state.seen(event)
                            if state.ended:
                                return
            except httpx.TransportError as exc:
                state.failed(exc)
            else:
                if (await self.get_batch(batch_id, task_limit=0)).finished:
                    return
            await asyncio.sleep(reconnect_delay)
