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

Both clients share every request's shape (:mod:`pixelkiln.wire.calls`); they differ only
in how the request is sent. Responses are parsed into the same pydantic
models the server validated them against (:mod:`pixelkiln.wire.schemas`).
Errors arrive as :class:`ApiError` with the server's ``code``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from pixelkiln.wire.calls import (
    ApiError,
    Call,
    Calls,
    FileInput,
    SSEParser,
    StreamState,
    auth_headers,
    raise_for,
)
from pixelkiln.wire.schemas import (
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
)

__all__ = ["ApiError", "AsyncClient", "Client", "EventPublic"]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
#: how long a quiet event stream may stay silent before we reconnect (server pings every 15 s)
STREAM_READ_TIMEOUT = 60.0


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
            base_url=base_url, headers=auth_headers(token), timeout=timeout, transport=transport
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

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                time.sleep(call.backoff(exc, attempt, self.retries))
                attempt += 1
            else:
                return call.read(response)

    def create_batch(
        self,
        spec: BaseModel | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> BatchDetail:
        """Queue a batch. A key is made up when none is given, so a retried send is safe."""
        return self._run(Calls.create_batch(spec, idempotency_key, wait, timeout))

    def create_batch_from_images(
        self,
        files: Iterable[FileInput],
        prompt: str,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> BatchDetail:
        """img2img: one task per image, one prompt for all (``preset_id``, ``denoise``…)."""
        return self._run(Calls.create_from_images(files, prompt, fields, idempotency_key))

    def upload(self, files: Iterable[FileInput]) -> list[AssetPublic]:
        """Upload input images; use each ``ref`` as ``init_image`` / ``reference_images``."""
        return self._run(Calls.upload(files))

    def get_batch(
        self, batch_id: int, *, task_limit: int = 50, task_offset: int = 0
    ) -> BatchDetail:
        return self._run(Calls.get_batch(batch_id, task_limit, task_offset))

    def list_batches(
        self, *, status: str | None = None, q: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[BatchPublic]:
        return self._run(Calls.list_batches(status, q, limit, offset))

    def active_batches(self) -> int:
        return self._run(Calls.active()).active

    def cancel_batch(self, batch_id: int) -> BatchPublic:
        return self._run(Calls.cancel(batch_id))

    def retry_batch(
        self, batch_id: int, *, task_ids: list[int] | None = None, include_cancelled: bool = False
    ) -> RetryResult:
        return self._run(Calls.retry(batch_id, task_ids, include_cancelled))

    def retry_task(self, task_id: int) -> RetryResult:
        return self._run(Calls.retry_task(task_id))

    def regenerate(
        self,
        batch_id: int,
        *,
        keys: list[str] | None = None,
        task_ids: list[int] | None = None,
        replace: bool = False,
    ) -> RegenerateResult:
        """Run chosen finished tasks again, succeeded ones too (by ``keys`` or ``task_ids``).

        Their earlier images stay as history (``get_task(id, history=True)``), or are
        deleted once the new ones are recorded with ``replace``. Charged like a retry.

        >>> client.regenerate(batch_id, keys=["s2", "s5"]).regenerated   # doctest: +SKIP
        2
        """
        return self._run(Calls.regenerate(batch_id, keys, task_ids, replace))

    def get_task(self, task_id: int, *, history: bool = False) -> TaskPublic:
        """A task with its images; with ``history``, every run's (regenerated tasks)."""
        return self._run(Calls.get_task(task_id, history))

    def get_image(self, image_id: int) -> ImageDetail:
        return self._run(Calls.get_image(image_id))

    def download(self, image: int | str) -> bytes:
        """An image's PNG bytes, by id or by the ``url`` an event or response gave.

        The URL must be a path or on this client's server (same scheme, host and
        port): the token is never sent elsewhere (``ValueError``).
        """
        return self._run(Calls.download(image, self._http.base_url))

    def delete_batch(self, batch_id: int) -> None:
        self._run(Calls.delete_batch(batch_id))

    def credits(self) -> CreditsPublic:
        return self._run(Calls.credits())

    def webhooks(self, batch_id: int) -> list[WebhookDeliveryPublic]:
        """The batch's webhook deliveries (one per time it ended), oldest first."""
        return self._run(Calls.webhooks(batch_id))

    def webhook_secret(self, *, rotate: bool = False) -> str:
        """The secret your webhooks are signed with; ``rotate`` makes a new one."""
        return self._run(Calls.webhook_secret(rotate)).secret

    def stream(
        self,
        batch_id: int,
        *,
        last_event_id: int | None = None,
        max_failures: int = 10,
        reconnect_delay: float = 1.0,
    ) -> Iterator[EventPublic]:
        """The batch's events, from the start (or after ``last_event_id``) until the
        ``done`` that ends it (a retried batch's stream carries the earlier runs' ``done``
        too; it goes on past them while the batch runs).

        A dropped connection is resumed with ``Last-Event-ID``, so no event is
        missed or repeated; ``max_failures`` failed reconnects in a row raise.
        """
        state = StreamState(last_event_id, max_failures)
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        while True:
            path, headers = state.request(batch_id)
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as r:
                    if not r.is_success:
                        r.read()
                        raise_for(r)
                    parser = SSEParser()
                    for line in r.iter_lines():
                        if (event := parser.feed(line)) is not None:
                            yield state.seen(event)
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
            base_url=base_url, headers=auth_headers(token), timeout=timeout, transport=transport
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

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                await asyncio.sleep(call.backoff(exc, attempt, self.retries))
                attempt += 1
            else:
                return call.read(response)

    async def create_batch(
        self,
        spec: BaseModel | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> BatchDetail:
        """Queue a batch. A key is made up when none is given, so a retried send is safe."""
        return await self._run(Calls.create_batch(spec, idempotency_key, wait, timeout))

    async def create_batch_from_images(
        self,
        files: Iterable[FileInput],
        prompt: str,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> BatchDetail:
        return await self._run(Calls.create_from_images(files, prompt, fields, idempotency_key))

    async def upload(self, files: Iterable[FileInput]) -> list[AssetPublic]:
        return await self._run(Calls.upload(files))

    async def get_batch(
        self, batch_id: int, *, task_limit: int = 50, task_offset: int = 0
    ) -> BatchDetail:
        return await self._run(Calls.get_batch(batch_id, task_limit, task_offset))

    async def list_batches(
        self, *, status: str | None = None, q: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[BatchPublic]:
        return await self._run(Calls.list_batches(status, q, limit, offset))

    async def active_batches(self) -> int:
        return (await self._run(Calls.active())).active

    async def cancel_batch(self, batch_id: int) -> BatchPublic:
        return await self._run(Calls.cancel(batch_id))

    async def retry_batch(
        self, batch_id: int, *, task_ids: list[int] | None = None, include_cancelled: bool = False
    ) -> RetryResult:
        return await self._run(Calls.retry(batch_id, task_ids, include_cancelled))

    async def retry_task(self, task_id: int) -> RetryResult:
        return await self._run(Calls.retry_task(task_id))

    async def regenerate(
        self,
        batch_id: int,
        *,
        keys: list[str] | None = None,
        task_ids: list[int] | None = None,
        replace: bool = False,
    ) -> RegenerateResult:
        """See :meth:`Client.regenerate`."""
        return await self._run(Calls.regenerate(batch_id, keys, task_ids, replace))

    async def get_task(self, task_id: int, *, history: bool = False) -> TaskPublic:
        """See :meth:`Client.get_task`."""
        return await self._run(Calls.get_task(task_id, history))

    async def get_image(self, image_id: int) -> ImageDetail:
        return await self._run(Calls.get_image(image_id))

    async def download(self, image: int | str) -> bytes:
        """See :meth:`Client.download`."""
        return await self._run(Calls.download(image, self._http.base_url))

    async def delete_batch(self, batch_id: int) -> None:
        await self._run(Calls.delete_batch(batch_id))

    async def credits(self) -> CreditsPublic:
        return await self._run(Calls.credits())

    async def webhooks(self, batch_id: int) -> list[WebhookDeliveryPublic]:
        """See :meth:`Client.webhooks`."""
        return await self._run(Calls.webhooks(batch_id))

    async def webhook_secret(self, *, rotate: bool = False) -> str:
        """See :meth:`Client.webhook_secret`."""
        return (await self._run(Calls.webhook_secret(rotate))).secret

    async def stream(
        self,
        batch_id: int,
        *,
        last_event_id: int | None = None,
        max_failures: int = 10,
        reconnect_delay: float = 1.0,
    ) -> AsyncIterator[EventPublic]:
        """See :meth:`Client.stream`."""
        state = StreamState(last_event_id, max_failures)
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        while True:
            path, headers = state.request(batch_id)
            try:
                async with self._http.stream("GET", path, headers=headers, timeout=timeout) as r:
                    if not r.is_success:
                        await r.aread()
                        raise_for(r)
                    parser = SSEParser()
                    async for line in r.aiter_lines():
                        if (event := parser.feed(line)) is not None:
                            yield state.seen(event)
            except httpx.TransportError as exc:
                state.failed(exc)
            else:
                if (await self.get_batch(batch_id, task_limit=0)).finished:
                    return
            await asyncio.sleep(reconnect_delay)
