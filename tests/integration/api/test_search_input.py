"""A NUL in a search is bad input (422 naming ``q``), on every search and both databases:
SQLite's index would read it as the end of the text, PostgreSQL cannot hold it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from apikit import Api, api_settings, running_api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    data = tmp_path / "data"
    settings = api_settings(
        data, storage={"data_dir": str(data), "database_url": database_url}, auth={"enabled": True}
    )
    async with running_api(settings) as running:
        yield running


@pytest.mark.parametrize("q", ["abc\x00", "\x00abc", "a\x00"])
async def test_a_nul_in_a_search_is_refused(api: Api, q: str) -> None:
    _, root = await api.add_user("root", admin=True)
    for path in ("/api/v1/images", "/api/v1/batches", "/api/v1/admin/batches"):
        r = await root.get(path, params={"q": q})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["field"] == "q"
