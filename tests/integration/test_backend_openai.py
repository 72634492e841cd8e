"""The openai backend against the fake OpenAI-compatible Images API."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.openai import OpenAIBackend, create
from pixelkiln.backends.placeholder import draw
from pixelkiln.exceptions import BackendUnavailableError, RejectedInputError, ServerError
from pixelkiln.testing import FakeOpenAI, generation_request, settings_for, wait_until

pytestmark = pytest.mark.anyio
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def make(fake: FakeOpenAI, http: httpx.AsyncClient, **overrides: Any) -> OpenAIBackend:
    values: dict[str, Any] = {"api_key": KEY, "model": "gpt-image-1"}
    values.update(overrides)
    return create(settings_for(fake, **values), BackendDeps(http))


async def test_generations_request_and_images(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    backend = await make(fake, http)
    images = await backend.generate(generation_request(n=3, width=96, height=64, seed=5))

    assert [i.seed for i in images] == [5, 6, 7]
    assert Image.open(io.BytesIO(images[0].data)).size == (96, 64)
    assert images[0].info["revised_prompt"] == "a red fox in the snow"
    (sent,) = fake.received("/v1/images/generations")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json() == {
        "prompt": "a red fox in the snow",
        "n": 3,
        "size": "96x64",
        "model": "gpt-image-1",
        "response_format": "b64_json",
    }


async def test_a_held_request_answers_when_released_even_a_failure(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    backend = await make(fake, http, concurrency=2)
    fake.hold()
    fake.faults.fail_next(500)  # a failure comes after the work, so it is held too
    failing = asyncio.create_task(backend.generate(generation_request(task_id=1)))
    await wait_until(lambda: fake.held == 1)
    fine = asyncio.create_task(backend.generate(generation_request(task_id=2)))
    await wait_until(lambda: fake.held == 2)
    assert not failing.done() and not fine.done()
    fake.release()
    with pytest.raises(ServerError):
        await failing
    assert len(await fine) == 1


async def test_bare_host_gets_v1_and_hosted_default(fake: FakeOpenAI) -> None:
    assert OpenAIBackend.normalize_url(fake.url) == f"{fake.url}/v1"
    assert OpenAIBackend.normalize_url("http://proxy:5100/v1/") == "http://proxy:5100/v1"
    assert OpenAIBackend.default_url == "https://api.openai.com/v1"


async def test_response_format_can_be_left_out(http: httpx.AsyncClient) -> None:
    with FakeOpenAI(reject_response_format=True) as fake:
        strict = await make(fake, http)
        with pytest.raises(RejectedInputError, match="Unknown parameter: 'response_format'"):
            await strict.generate(generation_request())
        lenient = await make(fake, http, options={"response_format": ""})
        assert len(await lenient.generate(generation_request())) == 1
        assert "response_format" not in fake.requests[-1].json()


async def test_url_answers_are_fetched(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    backend = await make(fake, http, options={"response_format": "url"})
    (image,) = await backend.generate(generation_request(width=72, height=72))
    assert Image.open(io.BytesIO(image.data)).size == (72, 72)
    assert fake.received(f"/files/{next(iter(fake.hosted))}")


async def test_single_init_image_is_sent_as_image(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    backend = await make(fake, http)
    await backend.generate(generation_request(init_image=draw("init", 1, 64, 64)))
    (sent,) = fake.received("/v1/images/edits")
    assert sent.extra["image_parts"] == ["image"]
    assert sent.extra["fields"]["prompt"] == "a red fox in the snow"
    assert sent.extra["fields"]["size"] == "64x64"


async def test_init_and_reference_images_are_sent_as_image_array(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    backend = await make(fake, http)
    refs = (draw("ref1", 1, 32, 32), draw("ref2", 2, 32, 32))
    images = await backend.generate(
        generation_request(init_image=draw("init", 1, 64, 64), reference_images=refs, n=2)
    )
    assert len(images) == 2
    (sent,) = fake.received("/v1/images/edits")
    assert sent.extra["image_parts"] == ["image[]", "image[]", "image[]"]
    assert sent.extra["fields"]["n"] == "2"


async def test_n_is_split_by_max_n(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    backend = await make(fake, http, options={"max_n": 2})
    images = await backend.generate(generation_request(n=5, seed=100))
    assert [i.seed for i in images] == [100, 101, 102, 103, 104]
    assert [r.json()["n"] for r in fake.received("/v1/images/generations")] == [2, 2, 1]


async def test_wrong_key_is_rejected_without_leaking(
    fake: FakeOpenAI, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = await make(fake, http, api_key="sk-wrong-key-999999")
    with pytest.raises(RejectedInputError, match="Incorrect API key") as info:
        await backend.generate(generation_request())
    assert "sk-wrong-key-999999" not in str(info.value)
    assert not [r for r in caplog.records if "sk-wrong-key" in r.getMessage()]
    assert "sk-wrong" not in repr(backend)


async def test_moderation_is_not_retried(http: httpx.AsyncClient) -> None:
    with FakeOpenAI(blocked_words=("forbidden",)) as fake:
        backend = await make(fake, http)
        with pytest.raises(RejectedInputError, match="safety system") as info:
            await backend.generate(generation_request(prompt="a forbidden thing"))
    assert not info.value.retryable


async def test_negative_prompt_append_option(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    plain = await make(fake, http)
    await plain.generate(generation_request(negative_prompt="text"))
    assert fake.requests[-1].json()["prompt"] == "a red fox in the snow"
    appending = await make(fake, http, options={"negative_prompt": "append"})
    await appending.generate(generation_request(negative_prompt="text"))
    assert fake.requests[-1].json()["prompt"].endswith("Avoid: text")


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (500, ServerError),
        (400, RejectedInputError),
        ("malformed", ServerError),
        ("reset", BackendUnavailableError),
    ],
)
async def test_faults(
    fake: FakeOpenAI, http: httpx.AsyncClient, outcome: Any, kind: type[Exception]
) -> None:
    backend = await make(fake, http)
    fake.faults.fail_next(outcome)
    with pytest.raises(kind):
        await backend.generate(generation_request())


async def test_list_models(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    backend = await make(fake, http)
    assert await backend.list_models(f"{fake.url}/v1") == list(fake.models)
