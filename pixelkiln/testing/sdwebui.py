"""A fake Stable Diffusion WebUI (AUTOMATIC1111 / Forge) speaking ``/sdapi/v1``.

Faithful where clients can tell: request fields and defaults, ``info`` as a
JSON *string* with ``all_seeds`` and ``index_of_first_image``, grids first when
asked, the WebUI's error body ``{"error", "detail", "body", "errors"}``,
``Sampler not found`` (400), ``Init image not found`` (404), ``Invalid encoded
image`` (500), unknown checkpoints silently ignored, HTTP Basic with
``--api-auth``, ``/sdapi/v1/interrupt`` ending the running generations early, and
``/internal/progress`` for a ``force_task_id``. Unlike one real WebUI it runs
requests in parallel unless ``serial=True`` (so one fake can stand in for a
fast GPU in benchmarks). A generation held by :meth:`FakeServer.hold` is
active (``/internal/progress``) until released or interrupted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import random
import secrets
import time
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from pixelkiln.backends.placeholder import draw
from pixelkiln.testing.server import FakeServer

DEFAULT_MODELS = (
    "v1-5-pruned-emaonly.safetensors [6ce0161689]",
    "sd_xl_base_1.0.safetensors [31e35c80fc]",
)
DEFAULT_SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC")

#: request fields and defaults of StableDiffusionProcessingTxt2Img the fake reads
TXT2IMG_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "width": 512,
    "height": 512,
    "steps": 50,
    "cfg_scale": 7.0,
    "sampler_name": None,
    "scheduler": None,
    "seed": -1,
    "batch_size": 1,
    "n_iter": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "send_images": True,
    "save_images": False,
    "force_task_id": None,
}
IMG2IMG_DEFAULTS: dict[str, Any] = {
    **TXT2IMG_DEFAULTS,
    "init_images": None,
    "denoising_strength": 0.75,
    "mask": None,
}
_INT_FIELDS = ("width", "height", "steps", "seed", "batch_size", "n_iter")


class WebUIError(Exception):
    """Raised by handlers; answered with the WebUI's error body."""

    def __init__(self, status: int, detail: str, error: str = "HTTPException") -> None:
        super().__init__(detail)
        self.status, self.detail, self.error = status, detail, error


class FakeSDWebUI(FakeServer):
    """See the module docstring. ``auth`` is ``"user:password"`` (like ``--api-auth``)."""

    kind = "sdwebui"
    fault_paths = frozenset({"/sdapi/v1/txt2img", "/sdapi/v1/img2img"})

    def __init__(
        self,
        *,
        auth: str | None = None,
        models: tuple[str, ...] = DEFAULT_MODELS,
        samplers: tuple[str, ...] = DEFAULT_SAMPLERS,
        grid: bool = False,
        serial: bool = False,
        **kwargs: Any,
    ) -> None:
        self.auth = auth
        self.models = models
        self.samplers = samplers
        self.grid = grid  #: put a grid image first when a request makes several images
        self.serial = serial  #: one generation at a time, as a real WebUI
        self.current_model = models[0] if models else ""
        self.interrupts = 0  #: how many times /sdapi/v1/interrupt was called
        self._active: dict[str, asyncio.Event] = {}  # task id → its interrupt flag
        self._done: set[str] = set()
        self._lock: asyncio.Lock | None = None
        super().__init__(**kwargs)

    def build_app(self) -> ASGIApp:
        api = [
            Route("/sdapi/v1/txt2img", self._txt2img, methods=["POST"]),
            Route("/sdapi/v1/img2img", self._img2img, methods=["POST"]),
            Route("/sdapi/v1/sd-models", self._sd_models, methods=["GET"]),
            Route("/sdapi/v1/samplers", self._samplers, methods=["GET"]),
            Route("/sdapi/v1/options", self._options, methods=["GET", "POST"]),
            Route("/sdapi/v1/progress", self._progress, methods=["GET"]),
            Route("/sdapi/v1/interrupt", self._interrupt, methods=["POST"]),
            Route("/sdapi/v1/skip", self._interrupt, methods=["POST"]),
        ]
        ui = [
            Route("/internal/ping", lambda _: JSONResponse({}), methods=["GET"]),
            Route("/internal/progress", self._internal_progress, methods=["POST"]),
        ]
        app = Starlette(routes=[*(_guarded(self, r) for r in api), *ui])
        return app

    def error_response(self, status: int, message: str) -> Response:
        return _error_body(
            WebUIError(status, message, "RuntimeError" if status >= 500 else "HTTPException")
        )

    # -- generation ------------------------------------------------------------------

    async def _txt2img(self, request: Request) -> Response:
        return await self._generate(await _payload(request, TXT2IMG_DEFAULTS), img2img=False)

    async def _img2img(self, request: Request) -> Response:
        return await self._generate(await _payload(request, IMG2IMG_DEFAULTS), img2img=True)

    async def _generate(self, p: dict[str, Any], *, img2img: bool) -> Response:
        if p["sampler_name"] and p["sampler_name"] not in self.samplers:
            raise WebUIError(400, "Sampler not found")
        if img2img:
            _check_init_images(p["init_images"])
        model = self._model_for(p["override_settings"])
        seed = p["seed"] if p["seed"] != -1 else random.randrange(4294967294)
        count = p["batch_size"] * p["n_iter"]
        task_id = p["force_task_id"] or f"task({secrets.token_hex(8)})"
        interrupted = await self._work(task_id)
        seeds = [seed + i for i in range(count)]
        images = (
            [] if interrupted else [draw(p["prompt"], s, p["width"], p["height"]) for s in seeds]
        )
        first = 0
        if self.grid and len(images) > 1:
            images.insert(0, draw("grid", seed, p["width"], p["height"]))
            first = 1
        info = _info(p, seeds, model, first, img2img)
        parameters = {k: v for k, v in p.items() if k != "init_images"}
        return JSONResponse(
            {
                "images": [base64.b64encode(b).decode() for b in images],
                "parameters": parameters,
                "info": json.dumps(info),
            }
        )

    async def _work(self, task_id: str) -> bool:
        """Spend the generation time; True when interrupted."""
        if self.serial:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                return await self._run(task_id)
        return await self._run(task_id)

    async def _run(self, task_id: str) -> bool:
        flag = self._active[task_id] = asyncio.Event()
        try:
            return await self.generating(flag)
        finally:
            del self._active[task_id]
            self._done.add(task_id)

    def _model_for(self, override: Any) -> str:
        wanted = override.get("sd_model_checkpoint") if isinstance(override, dict) else None
        for title in self.models:
            if wanted and (
                wanted == title or title.startswith(f"{wanted} ") or title.split(" [")[0] == wanted
            ):
                return title
        return self.current_model  # the WebUI ignores an unknown checkpoint without a word

    # -- the other routes --------------------------------------------------------------

    async def _sd_models(self, request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "title": t,
                    "model_name": t.split(" [")[0].rsplit(".", 1)[0],
                    "hash": t.split("[")[-1].rstrip("]") if "[" in t else None,
                    "sha256": None,
                    "filename": f"/models/Stable-diffusion/{t.split(' [')[0]}",
                    "config": None,
                }
                for t in self.models
            ]
        )

    async def _samplers(self, request: Request) -> Response:
        return JSONResponse([{"name": n, "aliases": [], "options": {}} for n in self.samplers])

    async def _options(self, request: Request) -> Response:
        if request.method == "POST":
            wanted = (await request.json()).get("sd_model_checkpoint")
            if wanted is not None:
                if wanted not in self.models:
                    raise WebUIError(500, f"model {wanted!r} not found", "RuntimeError")
                self.current_model = wanted
            return JSONResponse(None)
        return JSONResponse({"sd_model_checkpoint": self.current_model, "samples_format": "png"})

    async def _progress(self, request: Request) -> Response:
        busy = bool(self._active)
        return JSONResponse(
            {
                "progress": 0.5 if busy else 0.0,
                "eta_relative": 0.0,
                "state": {"interrupted": False, "job_count": len(self._active)},
                "current_image": None,
                "textinfo": None,
            }
        )

    async def _interrupt(self, request: Request) -> Response:
        self.interrupts += 1
        for flag in self._active.values():
            flag.set()
        return JSONResponse({})

    async def _internal_progress(self, request: Request) -> Response:
        task_id = (await request.json()).get("id_task")
        return JSONResponse(
            {
                "active": task_id in self._active,
                "queued": False,
                "completed": task_id in self._done,
                "progress": None,
                "eta": None,
                "live_preview": None,
                "id_live_preview": -1,
                "textinfo": None,
            }
        )


def _guarded(fake: FakeSDWebUI, route: Route) -> Route:
    """The route with ``--api-auth`` checked and WebUIError turned into its error body."""
    endpoint = route.endpoint

    async def guarded(request: Request) -> Response:
        try:
            _check_auth(fake.auth, request.headers.get("authorization", ""))
            response: Response = await endpoint(request)
            return response
        except WebUIError as exc:
            return _error_body(exc)

    return Route(route.path, guarded, methods=list(route.methods or ()))


def _check_auth(expected: str | None, header: str) -> None:
    if expected is None:
        return
    scheme, _, value = header.partition(" ")
    try:
        given = base64.b64decode(value).decode() if scheme.lower() == "basic" else ""
    except (binascii.Error, UnicodeDecodeError):
        given = ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise WebUIError(401, "Incorrect username or password")


def _error_body(exc: WebUIError) -> Response:
    body = {
        "error": exc.error,
        "detail": exc.detail,
        "body": "",
        "errors": f"{exc.status}: {exc.detail}",
    }
    headers = {"WWW-Authenticate": "Basic"} if exc.status == 401 else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _payload(request: Request, defaults: dict[str, Any]) -> dict[str, Any]:
    """The request merged over the defaults; FastAPI's 422 for wrong types."""
    try:
        body = await request.json()
    except ValueError:
        raise WebUIError(422, "JSON decode error") from None
    if not isinstance(body, dict):
        raise WebUIError(422, "body must be an object")
    payload = {**defaults, **body}
    for name in _INT_FIELDS:
        if not isinstance(payload[name], int) or isinstance(payload[name], bool):
            raise WebUIError(422, f"{name}: value is not a valid integer")
    if payload["width"] < 8 or payload["height"] < 8 or payload["batch_size"] < 1:
        raise WebUIError(422, "width/height/batch_size out of range")
    return payload


def _check_init_images(images: Any) -> None:
    if not images:
        raise WebUIError(404, "Init image not found")
    for encoded in images:
        text = str(encoded)
        if text.startswith("data:image/"):
            text = text.split(";")[1].split(",")[1]
        try:
            Image.open(io.BytesIO(base64.b64decode(text))).verify()
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            raise WebUIError(500, "Invalid encoded image") from None


def _info(
    p: dict[str, Any], seeds: list[int], model: str, first: int, img2img: bool
) -> dict[str, Any]:
    info = {
        "prompt": p["prompt"],
        "all_prompts": [p["prompt"]] * len(seeds),
        "negative_prompt": p["negative_prompt"],
        "all_negative_prompts": [p["negative_prompt"]] * len(seeds),
        "seed": seeds[0] if seeds else p["seed"],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "width": p["width"],
        "height": p["height"],
        "sampler_name": p["sampler_name"] or "Euler",
        "cfg_scale": p["cfg_scale"],
        "steps": p["steps"],
        "batch_size": p["batch_size"],
        "sd_model_name": model.split(" [")[0].rsplit(".", 1)[0],
        "sd_model_hash": model.split("[")[-1].rstrip("]") if "[" in model else None,
        "index_of_first_image": first,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "infotexts": [f"{p['prompt']}\nSteps: {p['steps']}, Seed: {s}" for s in seeds],
        "version": "fake",
    }
    if img2img:
        info["denoising_strength"] = p["denoising_strength"]
    return info
