"""The Python clients against a live server: every call, typed answers, errors as ApiError."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from apikit import Live, png_bytes, spec

from pixelkiln import ApiError, AsyncClient, Client
from pixelkiln.models import BatchStatus, EventType
from pixelkiln.testing import wait_until
from pixelkiln.wire.schemas import BatchDetail, EventPublic

pytestmark = pytest.mark.anyio


async def test_async_client_covers_the_batch_lifecycle(held_live: Live, tmp_path: Path) -> None:
    live = held_live  # its "slow" batch runs until cancelled
    async with AsyncClient(live.url) as kiln:
        batch = await kiln.create_batch(spec("a fox", "REJECT"), wait=True)
        assert isinstance(batch, BatchDetail) and batch.status == BatchStatus.PARTIAL
        image = batch.tasks[0].images[0]
        assert (await kiln.download(image.url)).startswith(b"\x89PNG")
        assert (await kiln.download(image.id)) == await kiln.download(image.url)
        assert (await kiln.get_image(image.id)).prompt == "a fox"
        assert (await kiln.get_task(batch.tasks[1].id)).error
        retried = await kiln.retry_task(batch.tasks[1].id)
        assert retried.retried == 1
        listed = await kiln.list_batches(q="fox")
        assert [b.id for b in listed.items] == [batch.id]
        slow = await kiln.create_batch(spec(*"abcd", backend="slow"))
        assert await kiln.active_batches() >= 1
        cancelled = await kiln.cancel_batch(slow.id)
        assert cancelled.status == BatchStatus.CANCELLED
        again = await kiln.retry_batch(slow.id, include_cancelled=True)
        assert again.retried >= 1
        await kiln.cancel_batch(slow.id)
        await kiln.delete_batch(slow.id)
        with pytest.raises(ApiError) as missing:
            await kiln.get_batch(slow.id)
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(ApiError) as bad:
            await kiln.create_batch({"name": "x", "tasks": [{"prompt": "p", "n": 99}]})
        assert bad.value.code == "invalid_request" and bad.value.field == "tasks[0].n"
        assert (await kiln.credits()).balance == 0


async def test_async_client_uploads_and_creates_img2img(live: Live, tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    picture.write_bytes(png_bytes())
    async with AsyncClient(live.url) as kiln:
        assets = await kiln.upload([picture, ("other.jpg", png_bytes(fmt="JPEG"))])
        assert [a.filename for a in assets] == ["photo.png", "other.jpg"]
        batch = await kiln.create_batch_from_images(
            [picture], "in the rain", width=64, height=64, denoise=0.5
        )
        events = [e async for e in kiln.stream(batch.id)]
        assert events[-1].type == EventType.DONE
        assert (await kiln.get_batch(batch.id)).status == BatchStatus.COMPLETED


async def test_the_sync_client_in_a_pipeline_stage(live: Live) -> None:
    """DESIGN.md workflow 2: storyboard items in, one image each, events while it runs."""
    storyboard = [("s1", "a harbour at dawn"), ("s2", "a REJECT scene"), ("s3", "gulls")]

    def stage() -> tuple[dict[str, bytes], list[str], list[EventPublic]]:
        images, errors, events = {}, [], []
        with Client(live.url) as kiln:
            batch = kiln.create_batch(
                {
                    "name": "storyboard",
                    "defaults": {"width": 64, "height": 64},
                    "tasks": [{"key": k, "prompt": p} for k, p in storyboard],
                }
            )
            for event in kiln.stream(batch.id):
                events.append(event)
                if event.type == "image_generated":
                    images[event.data["item_key"]] = kiln.download(event.data["image"]["url"])
                elif event.type == "error":
                    errors.append(event.data["item_key"])
            assert kiln.get_batch(batch.id).status == BatchStatus.PARTIAL
        return images, errors, events

    images, errors, events = await asyncio.to_thread(stage)
    assert sorted(images) == ["s1", "s3"] and errors == ["s2"]
    assert all(data.startswith(b"\x89PNG") for data in images.values())
    assert events[-1].type == "done" and events[-1].data["summary"]["status"] == "partial"


async def test_a_create_retried_by_the_client_is_not_duplicated(live: Live) -> None:
    async with AsyncClient(live.url) as kiln:
        first = await kiln.create_batch(spec("once"), idempotency_key="job-1")
        second = await kiln.create_batch(spec("once"), idempotency_key="job-1")
        assert first.id == second.id
        assert (await kiln.list_batches()).total == 1


async def test_a_retried_batch_streams_past_the_done_of_its_earlier_run(live: Live) -> None:
    """The server replays the old run's ``done`` and goes on; so must both clients."""
    async with AsyncClient(live.url) as kiln:
        running = await kiln.create_batch(spec(*"abcdef", backend="slow"))
        await kiln.cancel_batch(running.id)
        await kiln.retry_batch(running.id, include_cancelled=True)
        events = [e async for e in kiln.stream(running.id)]  # while the retry runs
        assert (await kiln.get_batch(running.id, task_limit=0)).finished
        finished = await kiln.create_batch(spec("ok", "REJECT"), wait=True)
        await kiln.retry_batch(finished.id)

        async def retry_done() -> bool:
            return (await kiln.get_batch(finished.id, task_limit=0)).finished

        await wait_until(retry_done, interval=0.02)  # the retry ends before anyone streams
    kinds = [e.type for e in events]
    assert kinds.count(EventType.DONE) == 2 and kinds[-1] == EventType.DONE
    assert EventType.PROGRESS in kinds[kinds.index(EventType.DONE) :]
    assert events[-1].data["summary"]["status"] == "completed"

    def sync_stream() -> list[EventPublic]:
        with Client(live.url) as kiln:
            return list(kiln.stream(finished.id))

    replayed = await asyncio.to_thread(sync_stream)
    async with AsyncClient(live.url) as kiln:
        log = (await kiln._http.get(f"/api/v1/batches/{finished.id}/log")).json()["items"]
    assert [e.id for e in replayed] == [e["id"] for e in log]
    assert [e.type for e in replayed].count(EventType.DONE) == 2


async def test_download_sends_the_token_only_to_the_clients_own_server(live: Live) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"\x89PNG")

    transport = httpx.MockTransport(record)
    base = "http://kiln.example:8000"
    with Client(base, token="pk_secret", transport=transport) as kiln:
        assert kiln.download("/api/v1/images/1/file") == b"\x89PNG"
        assert kiln.download(f"{base}/api/v1/images/1/file") == b"\x89PNG"
        for elsewhere in (
            "https://kiln.example:8000/api/v1/images/1/file",  # other scheme
            "http://evil.example:8000/steal",  # other host
            "http://kiln.example:9000/api/v1/images/1/file",  # other port
            "http://kiln.example/api/v1/images/1/file",  # port 80
            "//evil.example/steal",  # scheme-relative
        ):
            with pytest.raises(ValueError, match="refusing to send the API token"):
                kiln.download(elsewhere)
    async with AsyncClient(base, token="pk_secret", transport=_async(record)) as akiln:
        assert await akiln.download(7) == b"\x89PNG"
        with pytest.raises(ValueError, match="not on the client's server"):
            await akiln.download("https://evil.example/x.png")
    assert [str(r.url) for r in sent] == [
        f"{base}/api/v1/images/1/file",
        f"{base}/api/v1/images/1/file",
        f"{base}/api/v1/images/7/file",
    ]
    assert all(r.headers["authorization"] == "Bearer pk_secret" for r in sent)
    async with AsyncClient(live.url) as same:  # a real server: its own absolute URLs are fine
        batch = await same.create_batch(spec("a fox"), wait=True)
        url = batch.tasks[0].images[0].url
        assert await same.download(f"{live.url}{url}") == await same.download(url)


async def test_both_clients_resend_after_a_network_error_only_what_is_safe() -> None:
    sent: list[str] = []

    def every_other_fails(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        if len(sent) % 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"active": 3})

    transport = httpx.MockTransport(every_other_fails)
    with Client("http://kiln.test", retries=1, transport=transport) as kiln:
        assert kiln.active_batches() == 3  # a GET: sent again
        with pytest.raises(httpx.ConnectError):
            kiln.cancel_batch(1)  # a POST without an idempotency key: never twice
    async with AsyncClient("http://kiln.test", retries=0, transport=_async(every_other_fails)) as a:
        assert await a.active_batches() == 3
        with pytest.raises(httpx.ConnectError):
            await a.active_batches()  # no retries left
    assert sent == ["GET", "GET", "POST", "GET", "GET"]


def _async(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(handler)
