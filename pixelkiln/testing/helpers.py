"""Small builders for tests of backends (ours, or a third party's against our fakes)."""

from __future__ import annotations

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
