"""What each backend reports about its images (server, model) and which parameters it sends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from pixelkiln.backends import build_backend
from pixelkiln.backends.base import BackendDeps, honoured_params
from pixelkiln.config import BackendSettings
from pixelkiln.models import GENERATION_PARAMS
from pixelkiln.testing import FakeOpenAI, FakeOpenRouter, generation_request, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def deps() -> AsyncIterator[BackendDeps]:
    async with httpx.AsyncClient() as http:
        yield BackendDeps(http)


async def test_which_parameters_each_backend_sends(deps: BackendDeps) -> None:
    def honours(kind: str, **options: object) -> frozenset[str]:
        settings = BackendSettings(
            name=kind, type=kind, urls=["http://127.0.0.1:9"], options=options
        )
        return honoured_params(build_backend(settings, deps))

    assert honours("sdwebui") == honours("comfyui") == set(GENERATION_PARAMS)
    assert honours("openai") == set() and honours("openai", negative_prompt="append") == {
        "negative_prompt"
    }
    assert honours("openrouter") == {"negative_prompt"}
    assert honours("openrouter", negative_prompt="ignore") == set()
    assert honoured_params(build_backend(BackendSettings(name="p", type="placeholder"), deps)) == {
        "seed"
    }
    assert honoured_params(None) == set(GENERATION_PARAMS)  # one that declares nothing


async def test_openai_reports_the_model_it_sent_and_its_server(deps: BackendDeps) -> None:
    with FakeOpenAI() as fake:
        backend = build_backend(settings_for(fake, model="dall-e-3"), deps)
        [image] = await backend.generate(generation_request())
        await backend.aclose()
    assert (image.server, image.model) == (f"{fake.url}/v1", "dall-e-3")


async def test_openrouter_reports_the_model_its_answer_names(deps: BackendDeps) -> None:
    with FakeOpenRouter() as fake:
        settings = settings_for(fake, model="google/gemini-2.5-flash-image", api_key="k")
        backend = build_backend(settings, deps)
        [image] = await backend.generate(generation_request(model=""))
        await backend.aclose()
        answered = fake.received("/api/v1/chat/completions")[0].json()["model"]
    assert image.server == f"{fake.url}/api/v1"
    assert image.model == answered == "google/gemini-2.5-flash-image"
