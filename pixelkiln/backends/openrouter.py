"""The ``openrouter`` backend: image models through OpenRouter's chat completions.

Each image is one ``POST {base}/chat/completions`` with ``modalities``
(``options.modalities``, default ``["image", "text"]``; image-only models want
``["image"]``) and ``image_config``: ``aspect_ratio`` when width:height is one
OpenRouter knows (within 2%), ``image_size`` 1K/2K/4K from the longer side
(``options.image_size`` overrides; ``options.image_config = false`` sends
none). Init and reference images go in the message as ``image_url`` data URLs;
the negative prompt is appended as "Avoid: ..." (``options.negative_prompt =
"ignore"`` drops it). Images come back as data URLs in
``choices[0].message.images``.

OpenRouter can report a failure with HTTP 200 and an ``error`` body; that is
read like the status it names. 402 means the account is out of credits
(:class:`QuotaExhaustedError`: not retried here; a fallback backend takes
over); an answer with text but no image is a refusal when the model says so
(safety), else a retryable server error. ``urls`` default to
``https://openrouter.ai/api/v1`` (a bare host gets ``/api/v1``).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

from pixelkiln.backends.base import (
    BackendDeps,
    GeneratedImage,
    GenerationRequest,
    answered_model,
)
from pixelkiln.backends.http import (
    data_url,
    decode_image,
    error_for_status,
    error_message,
    join_url,
    json_object,
)
from pixelkiln.backends.pool import Server
from pixelkiln.backends.pooled import PooledBackend
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import QuotaExhaustedError, RejectedInputError, ServerError

#: aspect ratios OpenRouter's image_config accepts
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
#: relative error tolerated when matching width/height to a known ratio
RATIO_TOLERANCE = 0.02


class OpenRouterBackend(PooledBackend):
    """See the module docstring."""

    default_url = "https://openrouter.ai/api/v1"
    api_path = "/api/v1"

    accepts_user_keys = True  #: a user's own OpenRouter key goes instead of ours when given
    #: chat completions take no seed, steps, cfg, sampler or strength; the negative prompt
    #: goes as "Avoid: ..." unless ``options.negative_prompt = "ignore"``
    honours = frozenset({"negative_prompt"})

    def __init__(self, settings: BackendSettings, deps: BackendDeps) -> None:
        super().__init__(settings, deps)
        if settings.options.get("negative_prompt") == "ignore":
            self.honours = frozenset()

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        body = self.build_body(request)
        images: list[GeneratedImage] = []
        while len(images) < request.n:  # one image per request; the slot is held per request
            call = functools.partial(
                self._generate_on, body=body, request=request, first=len(images)
            )
            images += await self.pool.run(call)
        return images[: request.n]

    def build_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The chat completion request for one image of ``request``."""
        model = request.model or self.settings.model
        if not model:
            raise RejectedInputError(
                f"backend '{self.settings.name}': no model: set `model` in the backend "
                "config or in the task"
            )
        options = self.settings.options
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": self._content(request)}],
            "modalities": list(options.get("modalities", ["image", "text"])),
        }
        if options.get("image_config", True):
            body["image_config"] = image_config(
                request.width, request.height, options.get("image_size")
            )
        extra = options.get("params", {})
        if isinstance(extra, dict):
            body.update(extra)
        return body

    def _content(self, request: GenerationRequest) -> str | list[dict[str, Any]]:
        text = request.prompt
        if request.negative_prompt and self.settings.options.get("negative_prompt") != "ignore":
            text = f"{text}\n\nAvoid: {request.negative_prompt}"
        pictures = [request.init_image] if request.init_image is not None else []
        pictures += list(request.reference_images)
        if not pictures:
            return text
        return [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": data_url(p)}} for p in pictures
        ]

    async def _generate_on(
        self, server: Server, body: dict[str, Any], request: GenerationRequest, first: int
    ) -> list[GeneratedImage]:
        response = await self.request(
            "POST",
            join_url(server.url, "chat/completions"),
            server=server.url,
            headers=self.bearer(request),
            json=body,
            check=False,
        )
        if response.status_code == 402:
            raise QuotaExhaustedError(
                f"{server.url}: out of credits: {error_message(response.content)}",
                server=server.url,
            )
        self.check(response, server=server.url, request=request)
        data = json_object(response, server=server.url)
        self._raise_body_error(data, server.url, request)
        info = {"server": server.url, "model": str(data.get("model", ""))}
        # the answer names the model that ran (a routed or aliased id resolves to it)
        model = answered_model(data) or str(body["model"])
        return [
            GeneratedImage(
                await self._bytes(url, server.url),
                request.seed + first + i,
                info,
                server=server.url,
                model=model,
            )
            for i, url in enumerate(_image_urls(data, server.url))
        ]

    async def _bytes(self, url: str, server: str) -> bytes:
        """A data URL decoded, or an http(s) URL fetched (no key goes with it)."""
        if not url.startswith(("http://", "https://")):
            return decode_image(url, server=server)
        try:
            return (await self.request("GET", url, server=server)).content
        except RejectedInputError as exc:
            raise ServerError(
                f"{server}: cannot fetch the image URL: {exc}", server=server
            ) from exc

    def _raise_body_error(
        self, data: dict[str, Any], server: str, request: GenerationRequest
    ) -> None:
        """An error that arrived with HTTP 200, at the top or inside the choice."""
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        error = data.get("error") or (choice.get("error") if isinstance(choice, dict) else None)
        if not error:
            return
        code = str(error.get("code")) if isinstance(error, dict) else ""
        status = int(code) if code.isascii() and code.isdigit() and len(code) == 3 else 502
        message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        if status == 402:
            exc: Exception = QuotaExhaustedError(
                f"{server}: out of credits: {message}", server=server
            )
        else:
            exc = error_for_status(status if status >= 400 else 502, message, server=server)
        if isinstance(exc, RejectedInputError | ServerError):
            self.hide_secrets(exc, request.api_key)
        raise exc

    async def list_models(self, url: str) -> list[str]:
        response = await self.request(
            "GET",
            join_url(url, "models"),
            server=url,
            headers=self.bearer(),
            params={"output_modalities": "image"},
        )
        items = json_object(response, server=url).get("data", [])
        return (
            [str(m.get("id")) for m in items if isinstance(m, dict)]
            if isinstance(items, list)
            else []
        )


def _image_urls(data: dict[str, Any], server: str) -> list[str]:
    """The image data URLs of an answer; a refusal or a text-only answer raises."""
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise ServerError(f"{server}: answer has no choices[0].message", server=server) from None
    images = message.get("images") if isinstance(message, dict) else None
    urls = [
        str(i["image_url"]["url"])
        for i in images or []
        if isinstance(i, dict)
        and isinstance(i.get("image_url"), dict)
        and i["image_url"].get("url")
    ]
    if urls:
        return urls
    text = str(message.get("content") or message.get("refusal") or "")[:300]
    choice = data["choices"][0]
    reason = f"{choice.get('finish_reason', '')} {choice.get('native_finish_reason', '')}"
    if message.get("refusal") or "content_filter" in reason or "SAFETY" in reason.upper():
        raise RejectedInputError(f"{server}: the model refused: {text}", server=server)
    raise ServerError(f"{server}: the model answered without an image: {text!r}", server=server)


def image_config(width: int, height: int, size: Any = None) -> dict[str, str]:
    """``image_config`` for width × height: a known aspect ratio if close, and 1K/2K/4K."""
    config: dict[str, str] = {}
    ratio = aspect_ratio(width, height)
    if ratio:
        config["aspect_ratio"] = ratio
    longest = max(width, height)
    config["image_size"] = (
        str(size) if size else ("1K" if longest <= 1600 else "2K" if longest <= 3200 else "4K")
    )
    return config


def aspect_ratio(width: int, height: int) -> str | None:
    """The known ratio within :data:`RATIO_TOLERANCE` of width:height, or None."""
    wanted = Fraction(width, height)
    best = min(ASPECT_RATIOS, key=lambda r: abs(_ratio(r) - wanted))
    return best if abs(_ratio(best) / wanted - 1) <= RATIO_TOLERANCE else None


def _ratio(text: str) -> Fraction:
    w, h = text.split(":")
    return Fraction(int(w), int(h))


def create(settings: BackendSettings, deps: BackendDeps) -> OpenRouterBackend:
    """Entry-point factory (``pixelkiln.backends`` group)."""
    return OpenRouterBackend(settings, deps)
