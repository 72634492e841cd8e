"""The two routes that take one batch file, ``POST /tables/parse`` and ``POST /batches/import``,
read it the same way (``pixelkiln.api.uploads.read_one_file``): every malformed upload gets
the same status, code, message and field from both, and neither keeps anything from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, api_settings, running_api

pytestmark = pytest.mark.anyio

ROUTES = ("/api/v1/tables/parse", "/api/v1/batches/import")
LIMIT = 2048  #: [server] max_spec_bytes here
TABLE = b"prompt,width,height\na fox,64,64\n"

#: name → (multipart parts, expected status, code, field, message)
BAD: dict[str, tuple[dict[str, Any], int, str, str, str]] = {
    "no file": ({"data": {"name": "x"}}, 422, "invalid_request", "file", "send exactly one 'file'"),
    "two files": (
        {"files": [("file", ("a.csv", TABLE)), ("file", ("b.csv", TABLE))]},
        422,
        "invalid_request",
        "file",
        "send exactly one 'file'",
    ),
    "a text field": (
        {"data": {"file": "prompt\na fox"}},
        422,
        "invalid_request",
        "file",
        "'file' must be file parts",
    ),
    "too large": (
        {"files": {"file": ("big.csv", TABLE + b"x" * LIMIT)}},
        413,
        "too_large",
        "file",
        f"batch files are limited to {LIMIT:,} bytes",
    ),
    "no table": (
        {"files": {"file": ("notes.txt", TABLE)}},
        415,
        "unsupported_media_type",
        "file",
        "batch files must end in .csv, .xlsx, .json, .yaml, .yml, .toml",
    ),
}


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Auth on, a small batch-file limit; SQLite and PostgreSQL."""
    data = tmp_path / "data"
    settings = api_settings(
        data,
        storage={"data_dir": str(data), "database_url": database_url},
        auth={"enabled": True},
        server={"max_spec_bytes": LIMIT},
    )
    async with running_api(settings) as running:
        yield running


async def _kept(client: httpx.AsyncClient) -> tuple[int, int]:
    """How many batches and uploads the user has."""
    batches = (await client.get("/api/v1/batches")).json()["total"]
    assets = len((await client.get("/api/v1/assets")).json()["items"])
    return batches, assets


@pytest.mark.parametrize("case", list(BAD))
async def test_both_routes_refuse_a_bad_upload_alike(api: Api, case: str) -> None:
    _, alice = await api.add_user("alice")
    parts, status, code, field, message = BAD[case]
    for route in ROUTES:
        r = await alice.post(route, **parts)
        assert r.status_code == status, (route, r.text)
        error = r.json()["error"]
        assert (error["code"], error["field"], error["message"]) == (code, field, message), route
    assert await _kept(alice) == (0, 0)


async def test_a_file_at_the_limit_is_read_by_both(api: Api) -> None:
    _, alice = await api.add_user("alice")
    table = TABLE + b"x" * (LIMIT - len(TABLE) - 1) + b"\n"  # the last row: a prompt "xxx…"
    assert len(table) == LIMIT
    parsed = await alice.post(ROUTES[0], files={"file": ("rows.csv", table)})
    assert parsed.status_code == 200, parsed.text
    assert [row["prompt"][:5] for row in parsed.json()["rows"]] == ["a fox", "xxxxx"]
    made = await alice.post(
        ROUTES[1], files={"file": ("rows.csv", table)}, data={"name": "at the limit"}
    )
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "at the limit" and made.json()["counts"]["total"] == 2
