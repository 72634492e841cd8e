"""The openrouter backend against the fake OpenRouter chat completions API."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.openrouter import OpenRouterBackend, aspect_ratio, create, image_config
from pixelkiln.backends.placeholder import draw
from pixelkiln.exceptions import QuotaExhaustedError, RejectedInputError, ServerError
from pixelkiln.testing import FakeOpenRouter, generation_request, settings_for, wait_until

pytestmark = pytest.mark.anyio
KEY = "sk-or-v1-abcdef0123456789"
MODEL = "google/gemini-2.5-flash-image"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(api_key=KEY, image_scale=0.1) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make(fake: FakeOpenRouter, http: httpx.AsyncClient, **overrides: Any) -> OpenRouterBackend:
    values: dict[str, Any] = {"api_key": KEY, "model": MODEL}
    values.update(overrides)
    return create(settings_for(fake, **values), BackendDeps(http))


async def test_image_request_and_answer(fake: FakeOpenRouter, http: httpx.AsyncClient) -> None:
    backend = make(fake, http)
    request = generation_request(n=2, width=1344, height=768, seed=3, negative_prompt="text")
    images = await backend.generate(request)

    assert [i.seed for i in images] == [3, 4]
    assert Image.open(io.BytesIO(images[0].data)).size == (134, 76)  # 16:9 at image_scale 0.1
    sent = fake.received("/api/v1/chat/completions")
    assert len(sent) == 2  # one image per request
    body = sent[0].json()
    assert sent[0].headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == MODEL
    assert body["modalities"] == ["image", "text"]
    assert body["image_config"] == {"aspect_ratio": "16:9", "image_size": "1K"}
    assert body["messages"] == [{"role": "user", "content": "a red fox in the snow\n\nAvoid: text"}]


async def test_held_request_waits_for_its_release(
    fake: FakeOpenRouter, http: httpx.AsyncClient
) -> None:
    backend = make(fake, http)
    fake.hold()
    fake.release(1)  # let the next one through before it arrives
    assert len(await backend.generate(generation_request())) == 1
    held = asyncio.create_task(backend.generate(generation_request()))
    await wait_until(lambda: fake.held == 1)
    assert not held.done()
    fake.release(1)
    assert len(await held) == 1 and fake.held == 0


async def test_init_and_reference_images_go_as_data_urls(
    fake: FakeOpenRouter, http: httpx.AsyncClient
) -> None:
    backend = make(fake, http)
    init, ref = draw("init", 1, 32, 32), draw("ref", 2, 32, 32)
    await backend.generate(generation_request(init_image=init, reference_images=(ref,)))
    content = fake.requests[-1].json()["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "a red fox in the snow"}
    urls = [part["image_url"]["url"] for part in content[1:]]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [init, ref]
    assert all(u.startswith("data:image/png;base64,") for u in urls)


async def test_error_with_http_200_is_detected(
    fake: FakeOpenRouter, http: httpx.AsyncClient
) -> None:
    backend = make(fake, http)
    fake.faults.fail_next("error200")
    with pytest.raises(ServerError, match="Provider returned error") as info:
        await backend.generate(generation_request())
    assert info.value.retryable


async def test_out_of_credits(http: httpx.AsyncClient) -> None:
    with FakeOpenRouter(credits=1, image_scale=0.05) as fake:
        backend = make(fake, http)
        assert len(await backend.generate(generation_request())) == 1
        with pytest.raises(QuotaExhaustedError, match="out of credits") as info:
            await backend.generate(generation_request())
    assert not info.value.retryable


async def test_moderation_and_refusals(http: httpx.AsyncClient) -> None:
    with FakeOpenRouter(blocked_words=("gore",), refuse_words=("logo",), image_scale=0.05) as fake:
        backend = make(fake, http)
        with pytest.raises(RejectedInputError, match="flagged"):
            await backend.generate(generation_request(prompt="gore"))
        with pytest.raises(ServerError, match="without an image"):
            await backend.generate(generation_request(prompt="a famous logo"))


async def test_text_only_modalities_get_no_image(
    fake: FakeOpenRouter, http: httpx.AsyncClient
) -> None:
    backend = make(fake, http, options={"modalities": ["text"]})
    with pytest.raises(ServerError, match="without an image"):
        await backend.generate(generation_request())


async def test_no_model_is_rejected(fake: FakeOpenRouter, http: httpx.AsyncClient) -> None:
    backend = make(fake, http, model="")
    with pytest.raises(RejectedInputError, match="no model"):
        await backend.generate(generation_request())
    assert not fake.requests


async def test_bad_key_never_shown(
    fake: FakeOpenRouter, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = make(fake, http, api_key="sk-or-wrong-55555555")
    with pytest.raises(RejectedInputError) as info:
        await backend.generate(generation_request())
    assert "wrong-55555555" not in str(info.value)
    assert not [r for r in caplog.records if "wrong-55555555" in r.getMessage()]


@pytest.mark.parametrize(
    ("outcome", "kind"), [(502, ServerError), (400, RejectedInputError), ("malformed", ServerError)]
)
async def test_faults(
    fake: FakeOpenRouter, http: httpx.AsyncClient, outcome: Any, kind: type[Exception]
) -> None:
    fake.faults.fail_next(outcome)
    with pytest.raises(kind):
        await make(fake, http).generate(generation_request())


def test_url_normalisation() -> None:
    assert OpenRouterBackend.normalize_url("http://127.0.0.1:9") == "http://127.0.0.1:9/api/v1"
    assert OpenRouterBackend.default_url == "https://openrouter.ai/api/v1"


@pytest.mark.parametrize(
    ("width", "height", "ratio"),
    [
        (1024, 1024, "1:1"),
        (832, 1248, "2:3"),
        (1344, 768, "16:9"),
        (768, 1344, "9:16"),
        (1000, 1003, "1:1"),
        (1000, 700, None),
        (2048, 878, "21:9"),
    ],
)
def test_aspect_ratio(width: int, height: int, ratio: str | None) -> None:
    assert aspect_ratio(width, height) == ratio


def test_image_size_from_the_longer_side() -> None:
    assert image_config(1024, 1024)["image_size"] == "1K"
    assert image_config(2048, 2048)["image_size"] == "2K"
    assert image_config(4096, 2304) == {"aspect_ratio": "16:9", "image_size": "4K"}
    assert image_config(1000, 700) == {"image_size": "1K"}
    assert image_config(1024, 1024, "2K")["image_size"] == "2K"


async def test_a_users_own_key_goes_instead_of_ours(http: httpx.AsyncClient) -> None:
    own = "sk-or-v1-users-own-4321"
    with FakeOpenRouter(api_key=(KEY, own), image_scale=0.1) as fake:
        backend = make(fake, http)
        await backend.generate(generation_request(api_key=own))
        await backend.generate(generation_request())
        sent = [r.headers["authorization"] for r in fake.received("/api/v1/chat/completions")]
        assert sent == [f"Bearer {own}", f"Bearer {KEY}"]
        with pytest.raises(RejectedInputError) as info:
            await backend.generate(generation_request(api_key="sk-or-v1-wrong-0000"))
        assert "sk-or-v1-wrong-0000" not in str(info.value)
        assert "sk-or-v1-users-own-4321" not in repr(generation_request(api_key=own))
