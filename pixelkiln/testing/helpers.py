"""Small builders for tests of backends (ours, or a third party's against our fakes)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from pixelkiln.backends.base import GenerationRequest
from pixelkiln.config import BackendSettings
from pixelkiln.testing.server import FakeServer


def generation_request(**overrides: Any) -> GenerationRequest:
    """A small, valid request (64×64, 4 steps, seed 42, one image) with ``overrides``."""
    values: dict[str, Any] = {
        "task_id": 1,
        "prompt": "a red fox in the snow",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "cfg_scale": 7.0,
        "sampler": "",
        "seed": 42,
        "n": 1,
        "model": "",
        "denoise": 0.6,
    }
    values.update(overrides)
    return GenerationRequest(**values)


def settings_for(*fakes: FakeServer, **overrides: Any) -> BackendSettings:
    """Backend settings pointing at ``fakes`` (all of one kind), named after the kind."""
    kind = fakes[0].kind
    values: dict[str, Any] = {
        "name": kind,
        "type": kind,
        "urls": [f.url for f in fakes],
        "timeout": 10.0,
    }
    values.update(overrides)
    return BackendSettings(**values)


async def wait_until(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.01
) -> None:
    """Poll ``condition()`` until it is true, for state another thread or process changes.

    A fake serves from its own thread, so a test waits for what it needs (a request
    received, a generation held) instead of sleeping. The deadline is generous
    because a loaded machine is slow; a passing test never waits for it.
    ``condition`` may be a coroutine function (to ask an API, say)::

        await wait_until(lambda: server.held == 1)
        await wait_until(lambda: finished(client, batch_id), interval=0.05)

    Raises TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition still false after {timeout:g} s: {condition}")
        await asyncio.sleep(interval)
