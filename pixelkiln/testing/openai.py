"""A fake OpenAI-compatible Images API: ``/v1/images/generations`` and ``/v1/images/edits``.

Bearer key check (401), the OpenAI error body ``{"error": {"message", "type",
"param", "code"}}``, ``n`` 1–10, ``size`` as ``WxH`` or ``auto`` (optionally
limited to ``sizes``), ``response_format`` ``b64_json`` or ``url`` (images then
served from ``/files/...``), and ``reject_response_format=True`` to behave like
GPT image models, which refuse that parameter. ``blocked_words`` make a prompt
fail moderation (400 ``moderation_blocked``). Edits take ``image`` or repeated
``image[]`` parts.

``flavour="jimeng"`` answers ``/v1/images/generations`` as jimeng-api (a
jimeng-style proxy) does: the size comes from ``ratio`` (default ``1:1``) and
``resolution`` (default ``2k``) and the image has the shape of its table
(``JIMENG_SIZES``); ``size``, ``width`` or ``height`` are refused, as are a
ratio or resolution it does not know; ``n`` is ignored (``jimeng_images``
images per request, 4 like the real service); ``response_format`` defaults to
``url``. Failures come as jimeng-api sends them: HTTP 200 with ``{"code",
"message", "data": null}``.
"""

from __future__ import annotations

import base64
import io
import re
import secrets
import time
from collections.abc import Collection
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pixelkiln.backends.placeholder import draw
from pixelkiln.testing.server import FakeServer, bearer_accepted, read_form

_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")

#: jimeng-api's sizes per resolution and ratio (its RESOLUTION_OPTIONS; the image
#: returned has the ratio's orientation, landscape for 4:3 at 1k too)
JIMENG_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "1k": {
        "1:1": (1024, 1024),
        "4:3": (1024, 768),
        "3:4": (768, 1024),
        "16:9": (1024, 576),
        "9:16": (576, 1024),
        "3:2": (1024, 682),
        "2:3": (682, 1024),
        "21:9": (1195, 512),
    },
    "2k": {
        "1:1": (2048, 2048),
        "4:3": (2304, 1728),
        "3:4": (1728, 2304),
        "16:9": (2560, 1440),
        "9:16": (1440, 2560),
        "3:2": (2496, 1664),
        "2:3": (1664, 2496),
        "21:9": (3024, 1296),
    },
    "4k": {
        "1:1": (4096, 4096),
        "4:3": (4608, 3456),
        "3:4": (3456, 4608),
        "16:9": (5120, 2880),
        "9:16": (2880, 5120),
        "3:2": (4992, 3328),
        "2:3": (3328, 4992),
        "21:9": (6048, 2592),
    },
}
#: jimeng-api's failure codes: its generic error, and parameters that fail validation
JIMENG_ERROR, JIMENG_INVALID = -1000, -2000


class OpenAIError(Exception):
    """Raised by handlers; answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = (
            status,
            message,
            code,
            param,
            kind,
        )


class JimengFailure(Exception):
    """Raised by the jimeng flavour; answered as jimeng-api does (HTTP 200, a code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FakeOpenAI(FakeServer):
    """See the module docstring."""

    kind = "openai"
    fault_paths = frozenset({"/v1/images/generations", "/v1/images/edits"})

    def __init__(
        self,
        *,
        api_key: str | Collection[str] | None = None,
        models: tuple[str, ...] = ("gpt-image-1", "dall-e-3", "jimeng-4.0"),
        sizes: tuple[str, ...] | None = None,
        reject_response_format: bool = False,
        blocked_words: tuple[str, ...] = (),
        flavour: str = "openai",
        jimeng_images: int = 4,
        **kwargs: Any,
    ) -> None:
        #: keys accepted as ``Authorization: Bearer`` (None: any request is let in)
        self.api_keys = (api_key,) if isinstance(api_key, str) else api_key
        self.models = models
        self.sizes = sizes
        self.reject_response_format = reject_response_format
        self.blocked_words = blocked_words
        self.flavour = flavour  #: "openai", or "jimeng" (see the module docstring)
        self.jimeng_images = jimeng_images
        self.hosted: dict[str, bytes] = {}  # /files/<name> → bytes
        super().__init__(**kwargs)

    def build_app(self) -> ASGIApp:
        routes = [
            Route("/v1/images/generations", self._generations, methods=["POST"]),
            Route("/v1/images/edits", self._edits, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]
        return Starlette(routes=[_guarded(self, r) for r in routes])

    def error_response(self, status: int, message: str) -> Response:
        kind = (
            "server_error"
            if status >= 500
            else "requests"
            if status == 429
            else "invalid_request_error"
        )
        return _error_body(OpenAIError(status, message, kind=kind))

    # -- routes ------------------------------------------------------------------------

    async def _generations(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise OpenAIError(400, "We could not parse the JSON body of your request.") from None
        body = body if isinstance(body, dict) else {}
        if self.flavour == "jimeng":
            try:
                params = self._jimeng_params(body)
            except JimengFailure as exc:
                return JSONResponse({"code": exc.code, "message": exc.message, "data": None})
        else:
            params = self._params(body)
        return await self._answer(request, params, [])

    async def _edits(self, request: Request) -> Response:
        fields, files = await read_form(request)
        parts = [
            (name, filename, data) for name, filename, data in files if name in ("image", "image[]")
        ]
        request.scope["state"]["record"].extra.update(
            {"fields": fields, "image_parts": [name for name, _, _ in parts]}
        )
        images = [_read_image(filename, data) for _, filename, data in parts]
        if not images:
            raise OpenAIError(
                400, "Missing required parameter: 'image'.", "missing_required_parameter", "image"
            )
        body: dict[str, Any] = dict(fields)
        if "n" in body:
            body["n"] = _int(body["n"], "n")
        return await self._answer(request, self._params(body), images)

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                    for m in self.models
                ],
            }
        )

    async def _file(self, request: Request) -> Response:
        data = self.hosted.get(request.path_params["name"])
        if data is None:
            raise OpenAIError(404, "No such file")
        return Response(data, media_type="image/png")

    # -- the shared part ----------------------------------------------------------------

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError(
                400, "Missing required parameter: 'prompt'.", "missing_required_parameter", "prompt"
            )
        for word in self.blocked_words:
            if word in prompt:
                raise OpenAIError(
                    400,
                    "Your request was rejected as a result of our safety system.",
                    "moderation_blocked",
                    kind="image_generation_user_error",
                )
        model = body.get("model") or self.models[0]
        if model not in self.models:
            raise OpenAIError(400, f"Invalid model {model!r}.", "invalid_value", "model")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 10:
            raise OpenAIError(400, f"Invalid 'n': {n!r}; expected 1 to 10.", "invalid_value", "n")
        fmt = body.get("response_format")
        if fmt is not None and self.reject_response_format:
            raise OpenAIError(
                400, "Unknown parameter: 'response_format'.", "unknown_parameter", "response_format"
            )
        if fmt not in (None, "url", "b64_json"):
            raise OpenAIError(
                400, f"Invalid 'response_format': {fmt!r}.", "invalid_value", "response_format"
            )
        width, height = self._size(body.get("size", "auto"))
        return {
            "prompt": prompt,
            "model": model,
            "n": n,
            "format": fmt or "b64_json",
            "width": width,
            "height": height,
        }

    def _jimeng_params(self, body: dict[str, Any]) -> dict[str, Any]:
        refused = [name for name in ("size", "width", "height") if name in body]
        if refused:
            use = "请使用 ratio 和 resolution 参数控制图像尺寸。"
            raise JimengFailure(JIMENG_ERROR, f"不支持的参数: {', '.join(refused)}。{use}")
        if not isinstance(body.get("prompt"), str):
            raise JimengFailure(JIMENG_INVALID, "Params body.prompt invalid")
        for name in ("ratio", "resolution", "model", "response_format"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise JimengFailure(JIMENG_INVALID, f"Params body.{name} invalid")
        resolution, ratio = body.get("resolution", "2k"), body.get("ratio", "1:1")
        sizes = JIMENG_SIZES.get(resolution)
        if sizes is None:
            known = ", ".join(JIMENG_SIZES)
            raise JimengFailure(
                JIMENG_ERROR, f'不支持的分辨率 "{resolution}"。支持的分辨率: {known}'
            )
        if ratio not in sizes:
            known = ", ".join(sizes)
            where = f'在 "{resolution}" 分辨率下\uff0c'  # a full-width comma, as jimeng-api writes
            raise JimengFailure(JIMENG_ERROR, f'{where}不支持的比例 "{ratio}"。支持的比例: {known}')
        width, height = sizes[ratio]
        return {
            "prompt": body["prompt"],
            "model": body.get("model") or self.models[0],
            "n": self.jimeng_images,
            "format": body.get("response_format") or "url",
            "width": width,
            "height": height,
        }

    def _size(self, size: Any) -> tuple[int, int]:
        if size == "auto":
            return 1024, 1024
        match = _SIZE.match(str(size))
        if match is None or (self.sizes is not None and size not in self.sizes):
            allowed = ", ".join(self.sizes or ("WxH", "auto"))
            raise OpenAIError(
                400,
                f"Invalid value: {size!r}. Supported values are: {allowed}.",
                "invalid_value",
                "size",
            )
        return int(match[1]), int(match[2])

    async def _answer(
        self, request: Request, p: dict[str, Any], images: list[Image.Image]
    ) -> Response:
        await self.generating()
        seed = secrets.randbelow(2**31)
        data = []
        for i in range(p["n"]):
            png = draw(p["prompt"], seed + i, p["width"], p["height"])
            if p["format"] == "url":
                name = f"img-{secrets.token_hex(8)}.png"
                self.hosted[name] = png
                data.append(
                    {
                        "url": f"{str(request.base_url).rstrip('/')}/files/{name}",
                        "revised_prompt": p["prompt"],
                    }
                )
            else:
                data.append(
                    {"b64_json": base64.b64encode(png).decode(), "revised_prompt": p["prompt"]}
                )
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "size": f"{p['width']}x{p['height']}",
                "output_format": "png",
                "usage": {
                    "input_tokens": 10 + 100 * len(images),
                    "output_tokens": 1000 * p["n"],
                    "total_tokens": 10 + 100 * len(images) + 1000 * p["n"],
                },
            }
        )


def _guarded(fake: FakeOpenAI, route: Route) -> Route:
    """The route with the bearer key checked and OpenAIError turned into its error body."""
    endpoint = route.endpoint

    async def guarded(request: Request) -> Response:
        try:
            if not route.path.startswith("/files/") and not bearer_accepted(
                request.headers, fake.api_keys
            ):
                raise OpenAIError(401, "Incorrect API key provided.", "invalid_api_key")
            response: Response = await endpoint(request)
            return response
        except OpenAIError as exc:
            return _error_body(exc)

    return Route(route.path, guarded, methods=list(route.methods or ()))


def _error_body(exc: OpenAIError) -> Response:
    return JSONResponse(
        {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}},
        status_code=exc.status,
    )


def _read_image(filename: str, data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError):
        raise OpenAIError(
            400, f"Invalid image file: {filename!r}.", "invalid_image", "image"
        ) from None
    return image


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise OpenAIError(400, f"Invalid '{name}': {value!r}.", "invalid_value", name) from None
