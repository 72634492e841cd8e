"""Retry policy, the event bus and the placeholder backend on their own."""

from __future__ import annotations

import asyncio
import random

import pytest

from pixelkiln.backends.base import GenerationRequest
from pixelkiln.backends.placeholder import PlaceholderBackend, draw
from pixelkiln.config import BackendSettings
from pixelkiln.engine.bus import EventBus
from pixelkiln.engine.owners import dead_local_owners, new_owner_id
from pixelkiln.engine.retry import backoff_delay, is_retryable, minimum_delay, spends_attempt
from pixelkiln.exceptions import (
    NoServerAvailableError,
    RateLimitedError,
    RejectedInputError,
    ServerError,
)
from pixelkiln.models import Event, EventType


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    for attempt, full in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        delays = [backoff_delay(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full
        assert max(delays) - min(delays) > full / 4  # actually jittered


def test_which_errors_are_retried() -> None:
    assert is_retryable(ServerError("x")) and not is_retryable(RejectedInputError("x"))
    assert is_retryable(RuntimeError("unexpected"))
    assert not spends_attempt(NoServerAvailableError("down")) and spends_attempt(ServerError("x"))
    assert minimum_delay(RateLimitedError("slow", retry_after=12)) == 12
    assert minimum_delay(ServerError("x")) == 0


def test_dead_owners_are_only_local_dead_processes() -> None:
    me = new_owner_id()
    host = me.split(":")[0]
    owners = [me, f"{host}:{2**22 + 12345}:aa", "otherhost:1:bb", f"{host}:1:cc"]
    assert dead_local_owners(owners, me) == [f"{host}:{2**22 + 12345}:aa"]


@pytest.mark.anyio
async def test_bus_delivers_filters_and_marks_laggards() -> None:
    bus = EventBus(asyncio.get_running_loop())
    everything, one_batch, tiny = (
        bus.subscribe(),
        bus.subscribe(batch_id=2),
        bus.subscribe(maxsize=1),
    )
    events = [Event(i, 1 + i % 2, None, EventType.INFO, {}, 0.0) for i in range(4)]
    bus.publish(events)
    await asyncio.sleep(0.01)
    assert [e.id for e in everything.drain()] == [0, 1, 2, 3]
    assert [e.id for e in one_batch.drain()] == [1, 3]
    assert tiny.lagged and len(tiny.drain()) == 1
    one_batch.close()
    bus.publish(events)
    await asyncio.sleep(0.01)
    assert one_batch.drain() == []


def _request(prompt: str = "a fox", n: int = 2, size: int = 64) -> GenerationRequest:
    return GenerationRequest(1, prompt, "", size, size, 20, 7.0, "", 5, n, "", 0.75)


def test_placeholder_is_deterministic_and_seed_dependent() -> None:
    assert draw("a", 1, 64, 64) == draw("a", 1, 64, 64)
    assert draw("a", 1, 64, 64) != draw("a", 2, 64, 64) != draw("b", 1, 64, 64)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [64, 256])  # inline and threaded paths
async def test_placeholder_makes_n_images_with_consecutive_seeds(size: int) -> None:
    backend = PlaceholderBackend(BackendSettings(name="p", type="placeholder"))
    images = await backend.generate(_request(n=3, size=size))
    assert [i.seed for i in images] == [5, 6, 7]
    assert all(i.data.startswith(b"\x89PNG") for i in images)


@pytest.mark.anyio
async def test_placeholder_failures_and_rejections() -> None:
    failing = PlaceholderBackend(
        BackendSettings(name="p", type="placeholder", fail_rate=1.0), random.Random(0)
    )
    with pytest.raises(ServerError, match="simulated failure"):
        await failing.generate(_request())
    picky = PlaceholderBackend(
        BackendSettings(name="p", type="placeholder", options={"reject_if_prompt_contains": "nsfw"})
    )
    with pytest.raises(RejectedInputError):
        await picky.generate(_request("nsfw thing"))
