"""The API under test: a real app with its lifespan (Kiln, SQLite in tmp_path, scheduler).

``api`` talks to it through ``httpx.ASGITransport``; ``live`` serves the same
kind of app with uvicorn on a loopback port, for what needs real HTTP
(streaming responses, disconnects, the Python client's reconnects).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, Live, api_settings, held_slow_backends, running_api, serving

from pixelkiln.config import Settings
from pixelkiln.testing import FakeSDWebUI


@pytest.fixture
def make_api(tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[Api]]:
    """``async with make_api(auth={"enabled": True}) as api`` for tests that need settings."""

    def make(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Api]:
        return running_api(api_settings(tmp_path / "data", **overrides))

    return make


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """No auth, no credits: the single local user."""
    async with running_api(api_settings(tmp_path / "data")) as running:
        yield running


@pytest.fixture
async def auth_api(tmp_path: Path) -> AsyncIterator[Api]:
    """Auth and credits on (1 credit per image, 3 on the slow backend)."""
    settings = api_settings(
        tmp_path / "data",
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1, "backends": {"slow": 3}},
    )
    async with running_api(settings) as running:
        yield running


def _on(database_url: str, tmp_path: Path, **sections: Any) -> Settings:
    """api_settings with the database of ``database_url`` (SQLite or PostgreSQL)."""
    data = tmp_path / "data"
    return api_settings(
        data, storage={"data_dir": str(data), "database_url": database_url}, **sections
    )


@pytest.fixture
async def auth_db_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Auth on, on SQLite and on PostgreSQL."""
    async with running_api(_on(database_url, tmp_path, auth={"enabled": True})) as running:
        yield running


@pytest.fixture
async def credits_db_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """Auth and credits on (1 credit per image, 3 on "slow"), on SQLite and PostgreSQL."""
    settings = _on(
        database_url,
        tmp_path,
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1, "backends": {"slow": 3}},
    )
    async with running_api(settings) as running:
        yield running


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async with serving(api_settings(tmp_path / "data")) as running:
        yield running


@pytest.fixture
async def held_api(tmp_path: Path) -> AsyncIterator[Api]:
    """Like ``api``, but the "slow" backend is a held fake WebUI: its tasks run until the end."""
    with FakeSDWebUI() as webui:
        webui.hold()
        settings = api_settings(tmp_path / "data", backends=held_slow_backends(webui.url))
        async with running_api(settings) as running:
            yield running


@pytest.fixture
async def held_live(tmp_path: Path) -> AsyncIterator[Live]:
    """Like ``live``, with the "slow" backend a held fake WebUI (see ``held_api``)."""
    with FakeSDWebUI() as webui:
        webui.hold()
        settings = api_settings(tmp_path / "data", backends=held_slow_backends(webui.url))
        async with serving(settings) as running:
            yield running
