"""Text with a NUL character, wherever a caller can put it, is a 4xx naming where it is —
on PostgreSQL too, which stores no such text (and on SQLite, which would)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from apikit import Api, api_settings, running_api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def nul_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    data = tmp_path / "data"
    settings = api_settings(data, storage={"data_dir": str(data), "database_url": database_url})
    async with running_api(settings, run_scheduler=False) as running:
        yield running


async def test_a_nul_in_a_batch_is_refused_where_it_is(nul_api: Api) -> None:
    post = nul_api.client.post
    bodies = [
        ({"name": "n", "tasks": [{"prompt": "a\x00"}]}, "tasks[0].prompt"),
        ({"name": "n\x00", "tasks": [{"prompt": "a"}]}, "name"),
        ({"name": "n", "items": [{"id": "k\x00", "prompt": "a"}]}, "items[0].id"),
        ({"name": "n", "items": [{"id": 1, "title\x00": "a"}], "template": "{x}"}, "items[0]"),
        ({"name": "n", "tasks": [{"prompt": "a"}], "webhook": "http://a\x00b/"}, "webhook"),
        ({"name": "n", "tasks": [{"prompt": "a"}], "vars": {"s": "\x00"}}, "vars.s"),
    ]
    for body, where in bodies:
        refused = await post("/api/v1/batches", json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert "NUL" in refused.text and where in refused.text, refused.text


async def test_a_nul_in_other_requests_is_a_4xx(nul_api: Api) -> None:
    client = nul_api.client
    made = await client.post("/api/v1/batches", json={"name": "n", "tasks": [{"prompt": "a"}]})
    batch_id = made.json()["id"]
    await client.post(f"/api/v1/batches/{batch_id}/cancel")
    regenerate = await client.post(
        f"/api/v1/batches/{batch_id}/regenerate", json={"keys": ["1\x00"]}
    )
    assert regenerate.status_code == 422 and "NUL" in regenerate.text
    preset = await client.post("/api/v1/presets", json={"title": "t\x00", "content": "c"})
    assert preset.status_code == 422 and "NUL" in preset.text
    for path in ("/api/v1/images", "/api/v1/batches"):  # a search for such text
        found = await client.get(path, params={"q": "a\x00"})
        assert found.status_code in (200, 422), (path, found.text)
    assert (await client.get("/healthz")).status_code in (200, 503)  # the server goes on
