"""A fake OpenRouter: image output through ``/api/v1/chat/completions``.

Answers with ``choices[0].message.images[].image_url.url`` data URLs sized
from ``image_config`` (``aspect_ratio`` from OpenRouter's table, ``image_size``
1K/2K/4K), text-only when ``modalities`` lacks ``"image"`` or the prompt holds
one of ``refuse_words``, OpenRouter's error body ``{"error": {"code",
"message", "metadata"}}``, 402 once ``credits`` run out, 403 for
``blocked_words`` (moderation), and — through the ``error200`` fault — an
error body with HTTP 200, as OpenRouter sends when a provider fails mid-way.
``image_scale`` draws smaller pictures than the real sizes (faster tests).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Collection
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pixelkiln.backends.placeholder import draw
from pixelkiln.testing.server import FakeServer, bearer_accepted

#: OpenRouter's documented 1K sizes per aspect ratio
ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
IMAGE_SIZES = {"1K": 1, "2K": 2, "4K": 4}


class OpenRouterError(Exception):
    """Raised by handlers; answered with OpenRouter's error body."""

    def __init__(self, status: int, message: str, metadata: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.metadata = status, message, metadata


class FakeOpenRouter(FakeServer):
    """See the module docstring."""

    kind = "openrouter"
    fault_paths = frozenset({"/api/v1/chat/completions"})

    def __init__(
        self,
        *,
        api_key: str | Collection[str] | None = None,
        models: tuple[str, ...] = ("google/gemini-2.5-flash-image", "openai/gpt-5-image"),
        credits: int | None = None,
        blocked_words: tuple[str, ...] = (),
        refuse_words: tuple[str, ...] = (),
        image_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        #: keys accepted as ``Authorization: Bearer`` (None: any request is let in)
        self.api_keys = (api_key,) if isinstance(api_key, str) else api_key
        self.models = models
        self.credits = credits  #: images left before 402 (None: unlimited)
        self.blocked_words = blocked_words
        self.refuse_words = refuse_words
        self.image_scale = image_scale
        super().__init__(**kwargs)

    def build_app(self) -> ASGIApp:
        return Starlette(
            routes=[
                Route("/api/v1/chat/completions", self._guard(self._completions), methods=["POST"]),
                Route("/api/v1/models", self._guard(self._models), methods=["GET"]),
            ]
        )

    def error_response(self, status: int, message: str) -> Response:
        return _error_body(OpenRouterError(status, message))

    def error200_response(self) -> Response:
        return JSONResponse(
            {
                "error": {
                    "code": 502,
                    "message": "Provider returned error",
                    "metadata": {"provider_name": "Google", "raw": "upstream failed (injected)"},
                }
            }
        )

    def _guard(self, endpoint: Any) -> Any:
        async def guarded(request: Request) -> Response:
            try:
                if not request.url.path.endswith("/models") and not bearer_accepted(
                    request.headers, self.api_keys
                ):
                    raise OpenRouterError(401, "No auth credentials found")
                response: Response = await endpoint(request)
                return response
            except OpenRouterError as exc:
                return _error_body(exc)

        return guarded

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "data": [
                    {
                        "id": m,
                        "name": m,
                        "architecture": {
                            "input_modalities": ["text", "image"],
                            "output_modalities": ["image", "text"],
                        },
                    }
                    for m in self.models
                ]
            }
        )

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        if model not in self.models:
            raise OpenRouterError(400, f"{model} is not a valid model ID")
        text = _prompt_text(body.get("messages"))
        for word in self.blocked_words:
            if word in text:
                raise OpenRouterError(
                    403,
                    f"{model} requires moderation; your input was flagged",
                    {"reasons": ["sexual"], "flagged_input": word},
                )
        if self.credits is not None and self.credits <= 0:
            raise OpenRouterError(
                402, "Insufficient credits. Add more using https://openrouter.ai/settings/credits"
            )
        await self.generating()
        images: list[dict[str, Any]] = []
        wants_image = "image" in (body.get("modalities") or [])
        if wants_image and not any(w in text for w in self.refuse_words):
            images = [self._image(text, body.get("image_config") or {})]
            if self.credits is not None:
                self.credits -= 1
        return JSONResponse(_completion(model, images))

    def _image(self, text: str, config: dict[str, Any]) -> dict[str, Any]:
        ratio = config.get("aspect_ratio", "1:1")
        if ratio not in ASPECT_SIZES:
            raise OpenRouterError(400, f"Invalid aspect_ratio {ratio!r}")
        size = config.get("image_size", "1K")
        if size not in IMAGE_SIZES:
            raise OpenRouterError(400, f"Invalid image_size {size!r}")
        scale = IMAGE_SIZES[size] * self.image_scale
        width, height = (max(8, int(v * scale)) for v in ASPECT_SIZES[ratio])
        png = draw(text, secrets.randbelow(2**31), width, height)
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        return {"type": "image_url", "image_url": {"url": url}, "index": 0}


def _prompt_text(messages: Any) -> str:
    """The user's text, whether content is a string or a list of parts."""
    if not isinstance(messages, list) or not messages:
        raise OpenRouterError(400, "messages: expected a non-empty array")
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    raise OpenRouterError(400, "messages[].content: expected a string or an array")


def _completion(model: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    content = "Here is your image." if images else "I can't make that picture."
    return {
        "id": f"gen-{secrets.token_hex(12)}",
        "provider": "Google",
        "model": model,
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": [
            {
                "logprobs": None,
                "finish_reason": "stop",
                "native_finish_reason": "STOP",
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "reasoning": None,
                    "images": images,
                },
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 1290 * len(images) + 8,
            "total_tokens": 12 + 1290 * len(images) + 8,
        },
    }


def _error_body(exc: OpenRouterError) -> Response:
    error: dict[str, Any] = {"code": exc.status, "message": exc.message}
    if exc.metadata:
        error["metadata"] = exc.metadata
    return JSONResponse({"error": error, "user_id": "user_fake"}, status_code=exc.status)
