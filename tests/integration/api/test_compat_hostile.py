"""Every compat route, fed odd bodies, ids and numbers: always a 4xx in its tool's shape."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, api_settings, png_bytes, running_api

pytestmark = pytest.mark.anyio

BIG = 10**20  # past 64-bit integers
ODD_BODIES: list[dict[str, Any]] = [
    {},
    {"content": b"{not json", "headers": {"content-type": "application/json"}},
    {"json": []},
    {"json": "text"},
    {"json": {"concurrency": BIG, "batch_id": BIG, "slides": [{"id": BIG}], "title": BIG}},
    {"json": {"slides": [{"id": "x", "page_num": "one"}], "max_workers": "many"}},
    {"json": {"batch_id": -1, "concurrency": "5", "isActive": "maybe", "sortOrder": BIG}},
    {"data": {"prompt": "x" * 30_000, "presetId": str(BIG), "batchName": "n" * 300}},
    {"files": [("images", ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png"))]},
    # NUL characters: PostgreSQL stores no text holding one
    {
        "json": {
            "slides": [{"id": "s\x00", "title": "t\x00"}],
            "style_prompt": "ink\x00",
            "batch_id": "1\x00",
            "title": "a\x00",
            "content": "b\x00",
        }
    },
    {"json": {"slides": [{"id": 1, "visual_desc": "\x00"}]}},
    {
        "data": {"prompt": "a\x00", "batchName": "b\x00", "model": "m\x00"},
        "files": [("images", ("p\x00.png", png_bytes(), "image/png"))],
    },
]
ODD_IDS = ["0", "-3", str(BIG), "abc", "1.5", "%F0%9F%90%88"]


@pytest.fixture
async def both_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Both compat APIs on, with auth and credits, on SQLite and on PostgreSQL."""
    data = tmp_path / "data"
    settings = api_settings(
        data,
        storage={"data_dir": str(data), "database_url": database_url},
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1},
        compat={"slides": True, "img2img_service": True},
    )
    async with running_api(settings) as running:
        yield running


def _compat_routes(api: Api) -> list[tuple[str, str]]:
    """(method, path) of every route outside /api/v1 under /api/, as OpenAPI lists them."""
    paths: dict[str, dict[str, Any]] = api.app.openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/api/") and not path.startswith("/api/v1/")
        for method in operations
    ]


def _in_its_shape(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.request.url, response.text)
    body = response.json()
    if response.request.url.path.startswith("/api/slide/"):
        assert isinstance(body["detail"], str) and body["detail"]
    else:
        assert body["success"] is False and body["error"]


async def test_no_odd_request_is_answered_with_a_5xx(both_api: Api) -> None:
    _, root = await both_api.add_user("root", admin=True, credits=0)
    routes = _compat_routes(both_api)
    assert len(routes) >= 17
    for method, path in routes:
        for odd_id in ODD_IDS if "{" in path else [""]:
            url = re.sub(r"\{[^}]*\}", odd_id, path)
            for body in ODD_BODIES if method != "GET" else [{}]:
                response = await root.request(method, url, **body)
                if response.status_code < 400:
                    continue  # a harmless request that worked (a GET, an empty body ignored)
                _in_its_shape(response)


async def test_anonymous_callers_are_refused_in_each_shape(both_api: Api) -> None:
    anonymous = both_api.with_token("not-a-token")
    for method, path in _compat_routes(both_api):
        response = await anonymous.request(method, re.sub(r"\{[^}]*\}", "1", path))
        assert response.status_code in (401, 422), (path, response.text)
        _in_its_shape(response)
