"""HEAD answers what GET would, without the body: an image's URL under ``curl -I``."""

from __future__ import annotations

import httpx
import pytest
from apikit import Api, Live, spec

pytestmark = pytest.mark.anyio


async def test_head_on_an_image_file_gives_the_get_headers_and_no_body(api: Api) -> None:
    r = await api.client.post("/api/v1/batches?wait=true", json=spec("a lighthouse"))
    image = r.json()["tasks"][0]["images"][0]
    url = f"/api/v1/images/{image['id']}/file"
    got = await api.client.get(url)
    head = await api.client.head(url)
    assert (head.status_code, head.content) == (200, b"")
    for name in ("content-type", "content-length", "etag", "content-disposition"):
        assert head.headers[name] == got.headers[name], name
    assert int(head.headers["content-length"]) == len(got.content) > 0
    assert "content-security-policy" in head.headers  # the same security headers
    # revalidation by HEAD, as a cache does it
    again = await api.client.head(url, headers={"If-None-Match": got.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    # a JSON resource, and what does not exist
    batch = await api.client.head(f"/api/v1/batches/{r.json()['id']}")
    assert batch.status_code == 200 and batch.headers["content-type"] == "application/json"
    assert batch.content == b""
    missing = await api.client.head("/api/v1/images/999999/file")
    assert (missing.status_code, missing.content) == (404, b"")
    # a route without GET still refuses HEAD
    assert (await api.client.head(f"/api/v1/batches/{r.json()['id']}/cancel")).status_code == 405


async def test_head_asks_for_the_same_token_as_get(auth_api: Api) -> None:
    assert (await auth_api.client.head("/api/v1/batches")).status_code == 401
    _, alice = await auth_api.add_user("alice")
    assert (await alice.head("/api/v1/batches")).status_code == 200


async def test_head_on_a_live_event_stream_ends_at_once(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        head = await client.head("/api/v1/events")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""
