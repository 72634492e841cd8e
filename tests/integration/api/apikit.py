"""Helpers for the API tests: settings, specs, a running app, a live uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from PIL import Image

from pixelkiln.api.app import create_app
from pixelkiln.api.deps import ApiContext
from pixelkiln.config import Settings, load_settings
from pixelkiln.db.users import add_user

SMALL = {"width": 64, "height": 64}  # placeholder images this size cost next to nothing


def api_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Fast polling and retries; a quick backend, a slow one, one that rejects on a word."""
    sections: dict[str, Any] = {
        "storage": {"data_dir": str(data_dir)},
        "scheduler": {
            "poll_interval": 0.02,
            "retry_base_delay": 0.01,
            "retry_max_delay": 0.02,
            "lease_seconds": 5,
        },
        "backends": [
            {
                "name": "placeholder",
                "type": "placeholder",
                "concurrency": 4,
                "options": {"reject_if_prompt_contains": "REJECT"},
            },
            {"name": "slow", "type": "placeholder", "concurrency": 2, "latency": 0.3},
        ],
        "server": {"heartbeat_seconds": 0.2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return load_settings(None, **sections)


def held_slow_backends(url: str) -> list[dict[str, Any]]:
    """The same backends, with "slow" on a fake WebUI that a test holds (see FakeServer.hold).

    For tests that look at a batch while it runs: a latency ends on its own, and on a
    loaded machine it may end before the test looks.
    """
    quick = {
        "name": "placeholder",
        "type": "placeholder",
        "concurrency": 4,
        "options": {"reject_if_prompt_contains": "REJECT"},
    }
    return [quick, {"name": "slow", "type": "sdwebui", "urls": [url], "concurrency": 2}]


def spec(*prompts: str, name: str = "test", **defaults: Any) -> dict[str, Any]:
    """A batch spec of small images, one task per prompt."""
    return {
        "name": name,
        "defaults": {**SMALL, **defaults},
        "tasks": [{"prompt": p, "key": f"k{i}"} for i, p in enumerate(prompts, start=1)],
    }


def png_bytes(width: int = 64, height: int = 64, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(out, format=fmt)
    return out.getvalue()


@dataclass
class Api:
    """A running app and a client for it; ``as_user`` makes clients with tokens."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def ctx(self) -> ApiContext:
        ctx: ApiContext = self.app.state.ctx
        return ctx

    def with_token(self, token: str | None) -> httpx.AsyncClient:
        client = _asgi_client(self.app, token)
        self.clients.append(client)
        return client

    async def add_user(
        self, name: str, *, admin: bool = False, credits: int = 0
    ) -> tuple[int, httpx.AsyncClient]:
        user, token = await self.ctx.write(add_user, name, is_admin=admin, credits=credits)
        return user.id, self.with_token(token)

    async def wait_finished(
        self, batch_id: int, client: httpx.AsyncClient | None = None, timeout: float = 20
    ) -> dict[str, Any]:
        """Poll until the batch reaches a final status; its JSON."""
        client = client or self.client
        for _ in range(int(timeout / 0.02)):
            body: dict[str, Any] = (await client.get(f"/api/v1/batches/{batch_id}")).json()
            if body.get("finished"):
                return body
            await asyncio.sleep(0.02)
        raise AssertionError(f"batch {batch_id} did not finish: {body}")


@contextlib.asynccontextmanager
async def running_api(settings: Settings, *, run_scheduler: bool = True) -> AsyncIterator[Api]:
    app = create_app(settings, run_scheduler=run_scheduler)
    async with app.router.lifespan_context(app):
        # no client of httpx's own transport here: each builds an SSL context (30 ms)
        api = Api(app, _asgi_client(app, None), settings)
        api.clients.append(api.client)
        try:
            yield api
        finally:
            for client in api.clients:
                await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Live:
    url: str
    app: FastAPI
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def serving(settings: Settings, *, run_scheduler: bool = True) -> AsyncIterator[Live]:
    """The app under uvicorn on 127.0.0.1, in this event loop."""
    app = create_app(settings, run_scheduler=run_scheduler)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield Live(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        await task


def _asgi_client(app: FastAPI, token: str | None) -> httpx.AsyncClient:
    """A client that calls the app in process, as ``token``'s user (or no one)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost", headers=headers
    )
