"""The ``openai`` backend: any OpenAI-compatible Images API.

``POST {base}/images/generations`` (JSON) for text-to-image and ``POST
{base}/images/edits`` (multipart) when the task has an init image or reference
images: one image goes as ``image``, several as repeated ``image[]`` parts, as
openai-python sends them. ``size`` is ``"{width}x{height}"``, ``n`` the image
count (split into requests of at most ``options.max_n``), ``model`` the task's
or the configured one, and ``response_format = "b64_json"`` unless
``options.response_format`` says otherwise (``""`` leaves it out, for GPT image
models and servers that refuse it). ``url`` answers are fetched.

``urls`` are API base URLs including the version, as openai-python's
``base_url`` (``https://api.openai.com/v1``; a bare ``http://host:port`` gets
``/v1``). Without ``urls`` the backend talks to api.openai.com. The key goes as
``Authorization: Bearer``. The Images API has no seed and no negative prompt:
``options.negative_prompt = "append"`` adds it to the prompt as "Avoid: ...";
the recorded seed is the task's, for reference only.

Jimeng-style proxies (jimeng-api and its forks) size images by an aspect ratio
and a resolution instead: ``options.size_fields = "ratio"`` sends ``ratio``
(``"16:9"``) and ``resolution`` (``"1k"``, ``"2k"``, ``"4k"``) for the task's
size and no ``size`` (which jimeng-api refuses); ``"both"`` sends all three.
Such a proxy reports a failure with HTTP 200 and ``{"code", "message"}`` (no
``data``): its message is the error; a request it refuses (``不支持…``, invalid
parameters, content filtered) is not retried, and code -2009 (out of points)
is an exhausted quota.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from pixelkiln.backends.base import (
    BackendDeps,
    GeneratedImage,
    GenerationRequest,
    answered_model,
)
from pixelkiln.backends.http import (
    decode_image,
    image_mime,
    join_url,
    json_object,
)
from pixelkiln.backends.pool import Server
from pixelkiln.backends.pooled import PooledBackend
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import (
    BackendError,
    ConfigError,
    QuotaExhaustedError,
    RejectedInputError,
    ServerError,
)

logger = logging.getLogger(__name__)

#: how a request gives the image size (``options.size_fields``)
SIZE_FIELDS = ("size", "ratio", "both")
#: the ratios jimeng-style proxies take (jimeng-api's RESOLUTION_OPTIONS); a task's
#: size goes as the nearest of them
PROXY_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9")
#: jimeng-api's codes for a request it will refuse again (parameters invalid, content
#: filtered), and for an account out of points
_REFUSED_CODES = frozenset({-2000, -2006})
_NO_POINTS = -2009


class OpenAIBackend(PooledBackend):
    """See the module docstring."""

    default_url = "https://api.openai.com/v1"
    api_path = "/v1"

    accepts_user_keys = True  #: a user's own key goes instead of ours when given

    #: the Images API takes no seed, steps, cfg, sampler or strength; a negative prompt
    #: only when ``options.negative_prompt = "append"`` adds it to the prompt
    honours: frozenset[str] = frozenset()

    def __init__(self, settings: BackendSettings, deps: BackendDeps) -> None:
        super().__init__(settings, deps)
        self._max_n = max(1, int(settings.options.get("max_n", 10)))
        if settings.options.get("negative_prompt") == "append":
            self.honours = frozenset({"negative_prompt"})
        self._size_fields = str(settings.options.get("size_fields", "size"))
        if self._size_fields not in SIZE_FIELDS:
            raise ConfigError(
                f"backend '{settings.name}': options.size_fields must be one of "
                f"{', '.join(SIZE_FIELDS)} (got {self._size_fields!r})"
            )

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        images: list[GeneratedImage] = []
        while len(images) < request.n:
            count = min(self._max_n, request.n - len(images))
            first = len(images)
            call = functools.partial(self._generate_on, request=request, count=count, first=first)
            images += await self.pool.run(call)
        return images

    async def _generate_on(
        self, server: Server, request: GenerationRequest, count: int, first: int
    ) -> list[GeneratedImage]:
        fields = self._fields(request, count)
        uploads = [request.init_image] if request.init_image is not None else []
        uploads += list(request.reference_images)
        body: dict[str, Any]
        if uploads:  # an edit is multipart: the images as files, the fields as strings
            name = "image" if len(uploads) == 1 else "image[]"
            files = [
                (name, (f"image{i}.png", data, image_mime(data))) for i, data in enumerate(uploads)
            ]
            strings = {k: str(v) for k, v in fields.items()}
            path, body = "images/edits", {"files": files, "data": strings}
        else:
            path, body = "images/generations", {"json": fields}
        response = await self.request(
            "POST",
            join_url(server.url, path),
            server=server.url,
            headers=self.bearer(request),
            **body,
        )
        data = json_object(response, server=server.url)
        return await self._images(data, request, count, first, server.url)

    def _fields(self, request: GenerationRequest, count: int) -> dict[str, Any]:
        options = self.settings.options
        prompt = request.prompt
        if request.negative_prompt and options.get("negative_prompt") == "append":
            prompt = f"{prompt}\n\nAvoid: {request.negative_prompt}"
        fields: dict[str, Any] = {"prompt": prompt, "n": count}
        if self._size_fields != "ratio":
            fields["size"] = str(options.get("size") or f"{request.width}x{request.height}")
        if self._size_fields != "size":
            fields["ratio"], fields["resolution"] = request.ratio_and_resolution(PROXY_RATIOS)
        model = request.model or self.settings.model
        if model:
            fields["model"] = model
        response_format = options.get("response_format", "b64_json")
        if response_format:
            fields["response_format"] = response_format
        extra = options.get("params", {})
        if isinstance(extra, dict):
            fields.update(extra)
        return fields

    async def _images(
        self,
        data: dict[str, Any],
        request: GenerationRequest,
        count: int,
        first: int,
        server: str,
    ) -> list[GeneratedImage]:
        items = data.get("data")
        if not isinstance(items, list) and _refusal(data):
            raise _refused(data, server)
        if not isinstance(items, list) or not items:
            raise ServerError(f"{server}: answer has no images in 'data'", server=server)
        if len(items) != count:
            logger.info(
                "backend %s: asked %s for %d images, got %d",
                self.settings.name,
                server,
                count,
                len(items),
            )
        # an answer that names its model (some compatible servers do) says what was used
        model = answered_model(data) or request.model or self.settings.model
        images = []
        for i, item in enumerate(items[:count]):
            if not isinstance(item, dict):
                raise ServerError(f"{server}: 'data' holds a {type(item).__name__}", server=server)
            info = {"server": server}
            if item.get("revised_prompt"):
                info["revised_prompt"] = str(item["revised_prompt"])
            images.append(
                GeneratedImage(
                    await self._bytes(item, server),
                    seed=request.seed + first + i,
                    info=info,
                    server=server,
                    model=model,
                )
            )
        return images

    async def _bytes(self, item: dict[str, Any], server: str) -> bytes:
        if item.get("b64_json"):
            return decode_image(str(item["b64_json"]), server=server)
        url = item.get("url")
        if not url:
            raise ServerError(f"{server}: image has neither b64_json nor url", server=server)
        if str(url).startswith("data:"):
            return decode_image(str(url), server=server)
        try:  # a signed URL: no key goes with it
            response = await self.request("GET", str(url), server=server)
        except RejectedInputError as exc:  # expired or missing: the generation must be redone
            raise ServerError(
                f"{server}: cannot fetch the image URL: {exc}", server=server
            ) from exc
        return response.content

    async def list_models(self, url: str) -> list[str]:
        response = await self.request(
            "GET", join_url(url, "models"), server=url, headers=self.bearer()
        )
        items = json_object(response, server=url).get("data", [])
        return (
            [str(m.get("id")) for m in items if isinstance(m, dict)]
            if isinstance(items, list)
            else []
        )


def _refusal(data: dict[str, Any]) -> bool:
    """A jimeng-style failure envelope: HTTP 200 with a non-zero ``code`` and no images."""
    code = data.get("code")
    return isinstance(code, int) and code != 0 and isinstance(data.get("message"), str)


def _refused(data: dict[str, Any], server: str) -> BackendError:
    message = f"{server}: {data['message']} (code {data['code']})"
    if data["code"] == _NO_POINTS:
        return QuotaExhaustedError(message, server=server)
    if data["code"] in _REFUSED_CODES or str(data["message"]).startswith("不支持"):
        return RejectedInputError(message, server=server)  # the same request fails again
    return ServerError(message, server=server)


def create(settings: BackendSettings, deps: BackendDeps) -> OpenAIBackend:
    """Entry-point factory (``pixelkiln.backends`` group)."""
    return OpenAIBackend(settings, deps)
