"""Server-Sent Events over real HTTP: order, resume with Last-Event-ID, heartbeats, lag."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Live, api_settings, serving, spec

from pixelkiln import AsyncClient
from pixelkiln.api.deps import ApiContext
from pixelkiln.db.users import add_user

pytestmark = pytest.mark.anyio


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parsed events (id, event, data) and comments (as {"comment": text})."""
    fields: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:
            yield {
                "id": int(fields["id"]),
                "event": fields["event"],
                "data": json.loads(fields["data"]),
            }
            fields = {}
        else:
            fields = {}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def read_until_done(
    http: httpx.AsyncClient, path: str, **headers: str
) -> list[dict[str, Any]]:
    events = []
    async with http.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for event in sse_events(r):
            if "id" in event:
                events.append(event)
    return events


async def test_a_batch_stream_carries_every_event_in_order_and_ends_after_done(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
        batch = (await http.post("/api/v1/batches", json=spec("a", "b", "REJECT c"))).json()
        events = await read_until_done(http, f"/api/v1/batches/{batch['id']}/events")
        log = (await http.get(f"/api/v1/batches/{batch['id']}/log")).json()["items"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and ids == [e["id"] for e in log]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "batch_update" and kinds[-1] == "done"
    assert kinds.count("image_generated") == 2 and kinds.count("error") == 1
    assert kinds.count("progress") == 3
    image = next(e for e in events if e["event"] == "image_generated")["data"]
    assert image["data"]["image"]["url"].startswith("/api/v1/images/")
    assert "path" not in image["data"]["image"]
    error = next(e for e in events if e["event"] == "error")["data"]["data"]
    assert error["item_key"] == "k3" and "REJECT" in error["error"]
    progress = [e["data"]["data"] for e in events if e["event"] == "progress"]
    assert [p["current"] for p in progress] == [1, 2, 3] and progress[0]["total"] == 3
    done = events[-1]["data"]["data"]["summary"]
    assert (done["status"], done["succeeded"], done["failed"]) == ("partial", 2, 1)


async def test_last_event_id_resumes_without_gaps_or_repeats(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
        batch = (await http.post("/api/v1/batches", json=spec(*"abcdef", backend="slow"))).json()
        path = f"/api/v1/batches/{batch['id']}/events"
        first: list[dict[str, Any]] = []
        async with http.stream("GET", path) as r:
            async for event in sse_events(r):
                if "id" in event:
                    first.append(event)
                if len(first) == 3:
                    break  # the connection drops here
        rest = await read_until_done(http, path, **{"Last-Event-ID": str(first[-1]["id"])})
        query = await read_until_done(http, f"{path}?after={first[1]['id']}")
        log = (await http.get(f"/api/v1/batches/{batch['id']}/log")).json()["items"]
    got = [e["id"] for e in first + rest]
    assert got == [e["id"] for e in log] and len(set(got)) == len(got)
    assert [e["id"] for e in query] == got[2:]


async def test_a_quiet_stream_sends_heartbeats(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
        body = spec(*"abcdef", backend="slow")  # more than it runs at once: some stay pending
        batch = (await http.post("/api/v1/batches", json=body)).json()
        await http.post(f"/api/v1/batches/{batch['id']}/pause")
        comments = 0
        async with http.stream("GET", f"/api/v1/batches/{batch['id']}/events") as r:
            async for event in sse_events(r):
                comments += "comment" in event
                if comments == 3:
                    break
        await http.post(f"/api/v1/batches/{batch['id']}/cancel")
    assert comments == 3


async def test_all_my_events_start_now_unless_asked(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
        old = (await http.post("/api/v1/batches?wait=true", json=spec("old"))).json()
        seen: list[dict[str, Any]] = []
        async with http.stream("GET", "/api/v1/events") as r:
            new = (await http.post("/api/v1/batches", json=spec("new"))).json()
            async for event in sse_events(r):
                if "id" in event:
                    seen.append(event)
                    if event["event"] == "done":
                        break
        assert {e["data"]["batch_id"] for e in seen} == {new["id"]}
        replay: list[dict[str, Any]] = []
        async with http.stream("GET", "/api/v1/events?after=0") as r:
            async for event in sse_events(r):
                if "id" in event:
                    replay.append(event)
                    if event["event"] == "done":
                        break
        assert {e["data"]["batch_id"] for e in replay} == {old["id"]}


async def test_a_lagging_subscriber_falls_back_to_the_database(tmp_path: Path) -> None:
    async with serving(api_settings(tmp_path / "data")) as live:
        ctx: ApiContext = live.app.state.ctx
        bus = ctx.kiln.bus
        bus.subscribe = functools.partial(bus.subscribe, maxsize=2)  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
            body = spec(*[f"p{i}" for i in range(30)])
            batch = (await http.post("/api/v1/batches", json=body)).json()
            events: list[dict[str, Any]] = []
            async with http.stream("GET", f"/api/v1/batches/{batch['id']}/events") as r:
                async for event in sse_events(r):
                    if "id" in event:
                        events.append(event)
                        await asyncio.sleep(0.01)  # a slow reader: the bus overflows
            log = (await http.get(f"/api/v1/batches/{batch['id']}/log?limit=1000")).json()["items"]
    assert [e["id"] for e in events] == [e["id"] for e in log]
    assert events[-1]["event"] == "done"


async def test_many_subscribers_all_get_everything(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        batch = (
            await http.post("/api/v1/batches", json=spec(*[f"p{i}" for i in range(10)]))
        ).json()
        path = f"/api/v1/batches/{batch['id']}/events"
        streams = await asyncio.gather(*[read_until_done(http, path) for _ in range(20)])
    ids = [[e["id"] for e in s] for s in streams]
    assert all(i == ids[0] for i in ids) and ids[0], [len(i) for i in ids]


async def test_the_async_client_streams_and_reconnects_after_a_drop(live: Live) -> None:
    class DropOnce(httpx.AsyncHTTPTransport):
        """Cuts the first event stream after its first chunks, like a flaky proxy."""

        def __init__(self) -> None:
            super().__init__()
            self.dropped = False
            self.resumed_from: list[str | None] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if not request.url.path.endswith("/events"):
                return response
            self.resumed_from.append(request.headers.get("last-event-id"))
            if self.dropped:
                return response
            self.dropped = True
            inner = response.stream

            async def cut() -> AsyncIterator[bytes]:
                async for chunk in inner:  # type: ignore[union-attr]
                    yield chunk
                    if b"id: " in chunk:  # at least one event got through
                        raise httpx.ReadError("connection reset")

            return httpx.Response(
                response.status_code, headers=response.headers, stream=_Stream(cut())
            )

    class _Stream(httpx.AsyncByteStream):
        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._chunks:
                yield chunk

    transport = DropOnce()
    async with AsyncClient(live.url, transport=transport, timeout=20) as kiln:
        batch = await kiln.create_batch(spec(*"abcd", backend="slow"))
        events = [e async for e in kiln.stream(batch.id, reconnect_delay=0.05)]
        async with httpx.AsyncClient(base_url=live.url) as http:
            log = (await http.get(f"/api/v1/batches/{batch.id}/log")).json()["items"]
    assert transport.dropped and len(transport.resumed_from) >= 2
    assert transport.resumed_from[0] is None and transport.resumed_from[1] is not None
    assert [e.id for e in events] == [e["id"] for e in log]
    assert events[-1].type == "done"


async def test_my_stream_keeps_its_heartbeat_while_other_users_are_busy(tmp_path: Path) -> None:
    """Bob's events keep the bus busy but are not Alice's: her stream still pings."""
    busy = [{"name": "placeholder", "type": "placeholder", "concurrency": 1, "latency": 0.03}]
    settings = api_settings(tmp_path / "data", auth={"enabled": True}, backends=busy)
    async with serving(settings) as live:
        ctx: ApiContext = live.app.state.ctx
        _, alice = await ctx.write(add_user, "alice")
        _, bob = await ctx.write(add_user, "bob")
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=20, headers=_bearer(alice)) as a,
            httpx.AsyncClient(base_url=live.url, timeout=20, headers=_bearer(bob)) as b,
        ):
            batch = await b.post("/api/v1/batches", json=spec(*[f"p{i}" for i in range(200)]))
            comments = 0

            async def listen() -> None:
                nonlocal comments
                async with a.stream("GET", "/api/v1/events") as r:
                    async for event in sse_events(r):
                        comments += "comment" in event
                        if comments == 3:  # heartbeat 0.2 s; a loaded machine is slower
                            return

            await asyncio.wait_for(listen(), 30)
            running = (await b.get(f"/api/v1/batches/{batch.json()['id']}")).json()
            await b.post(f"/api/v1/batches/{batch.json()['id']}/cancel")
    assert running["status"] == "running"  # bob's events flowed the whole time
    assert comments >= 3
