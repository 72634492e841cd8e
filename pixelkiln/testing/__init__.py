"""Fake generators for tests, demos and benchmarks (``kiln dev fake-backend``).

Protocol-faithful local HTTP servers for the Stable Diffusion WebUI, ComfyUI
(websocket included), the OpenAI Images API and OpenRouter. They return real
PNGs, record every request, and misbehave on demand (:class:`Faults`)::

    from pixelkiln.testing import FakeSDWebUI

    with FakeSDWebUI(latency=0.1) as webui:
        webui.faults.error_rates = {500: 0.1}
        settings = BackendSettings(name="sd", type="sdwebui", urls=[webui.url])
        ...
        assert len(webui.received("/sdapi/v1/txt2img")) == 3

To catch a generation in progress, hold it there instead of timing it::

    webui.hold()
    task = asyncio.create_task(backend.generate(request))
    await wait_until(lambda: webui.held == 1)   # running until released
    webui.release()
"""

from __future__ import annotations

from pixelkiln.testing.comfyui import FakeComfyUI
from pixelkiln.testing.faults import Faults, Outcome, parse_error_rates, parse_outcome
from pixelkiln.testing.fleet import FakeFleet
from pixelkiln.testing.gate import Gate
from pixelkiln.testing.helpers import generation_request, settings_for, wait_until
from pixelkiln.testing.openai import FakeOpenAI
from pixelkiln.testing.openrouter import FakeOpenRouter
from pixelkiln.testing.sdwebui import FakeSDWebUI
from pixelkiln.testing.server import FakeServer, RecordedRequest
from pixelkiln.testing.webhook import FakeWebhookReceiver

#: kind name → fake server class (the names backends use as ``type``)
FAKES: dict[str, type[FakeServer]] = {
    "sdwebui": FakeSDWebUI,
    "comfyui": FakeComfyUI,
    "openai": FakeOpenAI,
    "openrouter": FakeOpenRouter,
}

__all__ = [
    "FAKES",
    "FakeComfyUI",
    "FakeFleet",
    "FakeOpenAI",
    "FakeOpenRouter",
    "FakeSDWebUI",
    "FakeServer",
    "FakeWebhookReceiver",
    "Faults",
    "Gate",
    "Outcome",
    "RecordedRequest",
    "generation_request",
    "parse_error_rates",
    "parse_outcome",
    "settings_for",
    "wait_until",
]
