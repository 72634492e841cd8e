"""The ``sdwebui`` backend: Stable Diffusion WebUI (AUTOMATIC1111, Forge, SD.Next).

One task is one ``txt2img`` (or, with an init image, ``img2img``) request with
``batch_size = n``; image i carries seed + i, read back from the response's
``info.all_seeds``. A grid image, if the server adds one, is skipped through
``index_of_first_image``.

Configuration (``[[backends]]``): ``urls`` (one per WebUI), ``api_key`` /
``api_key_env`` = ``"user:password"`` for ``--api-auth`` (or credentials in the
URL), ``model`` = default checkpoint title, and in ``options``: ``params`` (extra
request fields, e.g. ``{scheduler = "Karras"}``) and ``restore_model`` (ask the
WebUI to reload its previous checkpoint after each request; off by default
because a reload per task is slow).

Cancel: the WebUI's ``/sdapi/v1/interrupt`` stops *whatever* it is running, so
it is sent only when this request is the one running — known for sure when the
server's ``concurrency`` is 1, else asked of ``/internal/progress`` with our
``force_task_id``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from typing import Any

import httpx

from pixelkiln.backends.base import BackendDeps, GeneratedImage, GenerationRequest
from pixelkiln.backends.http import decode_image, encode_image, join_url, json_body, json_object
from pixelkiln.backends.pool import Server
from pixelkiln.backends.pooled import PooledBackend
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import BackendError, ConfigError, RejectedInputError, ServerError
from pixelkiln.models import GENERATION_PARAMS

logger = logging.getLogger(__name__)

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
#: seconds the interrupt sent on cancel may take
CANCEL_TIMEOUT = 5.0


class SDWebUIBackend(PooledBackend):
    """See the module docstring."""

    honours = frozenset(GENERATION_PARAMS)  #: the WebUI takes every generation parameter

    def __init__(self, settings: BackendSettings, deps: BackendDeps) -> None:
        super().__init__(settings, deps)
        self._auth = _basic_auth(settings.name, self._secret, settings.urls)
        # force_task_id tags: unique per request without a random syscall each time
        self._nonce = secrets.token_hex(4)
        self._tags = itertools.count()

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        if request.reference_images:
            raise RejectedInputError(
                f"backend '{self.settings.name}': the WebUI takes no reference images; "
                "use init_image (img2img) instead"
            )
        payload = build_payload(request, self.settings)
        path = IMG2IMG if request.init_image is not None else TXT2IMG
        return await self.pool.run(lambda server: self._generate_on(server, path, payload, request))

    async def _generate_on(
        self, server: Server, path: str, payload: dict[str, Any], request: GenerationRequest
    ) -> list[GeneratedImage]:
        tag = f"pixelkiln-{request.task_id}-{self._nonce}-{next(self._tags)}"
        try:
            response = await self.request(
                "POST",
                join_url(server.url, path),
                server=server.url,
                auth=self._auth,
                json={**payload, "force_task_id": tag},
            )
        except asyncio.CancelledError:
            await self._interrupt(server, tag)
            raise
        return parse_images(
            json_object(response, server=server.url),
            request,
            server.url,
            request.model or self.settings.model,
        )

    async def _interrupt(self, server: Server, tag: str) -> None:
        """Stop our generation on ``server``, never someone else's (see the module docstring)."""
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                if server.capacity > 1 and not await self._is_running(server, tag):
                    return
                await self.request(
                    "POST",
                    join_url(server.url, "/sdapi/v1/interrupt"),
                    server=server.url,
                    auth=self._auth,
                    json={},
                )
                logger.info("backend %s: interrupted %s on %s", self.settings.name, tag, server.url)
        except (BackendError, TimeoutError) as exc:
            logger.warning(
                "backend %s: could not interrupt %s: %s", self.settings.name, server.url, exc
            )

    async def _is_running(self, server: Server, tag: str) -> bool:
        """Whether ``tag`` is the job the WebUI works on now (False when it cannot say)."""
        try:
            response = await self.request(
                "POST",
                join_url(server.url, "/internal/progress"),
                server=server.url,
                auth=self._auth,
                json={"id_task": tag, "id_live_preview": -1, "live_preview": False},
            )
            return bool(json_object(response, server=server.url).get("active"))
        except BackendError:
            return False  # no progress endpoint (--nowebui): better to let it finish

    async def list_models(self, url: str) -> list[str]:
        response = await self.request(
            "GET", join_url(url, "/sdapi/v1/sd-models"), server=url, auth=self._auth
        )
        models = json_body(response, server=url) if response.content else []
        if not isinstance(models, list):
            raise ServerError(f"{url}: sd-models answer is not a list", server=url)
        return [str(m.get("title", m.get("model_name", ""))) for m in models if isinstance(m, dict)]


def _basic_auth(name: str, secret: str, urls: list[str]) -> httpx.BasicAuth | None:
    """Basic credentials from the secret (``user:password``), else from the first URL."""
    if not secret:
        for url in urls:
            parsed = httpx.URL(url)
            if parsed.username:
                return httpx.BasicAuth(parsed.username, parsed.password or "")
        return None
    user, sep, password = secret.partition(":")
    if not sep:
        raise ConfigError(f"backend '{name}': api_key for the WebUI must be 'user:password'")
    return httpx.BasicAuth(user, password)


def build_payload(request: GenerationRequest, settings: BackendSettings) -> dict[str, Any]:
    """The txt2img / img2img body for ``request`` (without ``force_task_id``)."""
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "cfg_scale": request.cfg_scale,
        "seed": request.seed,
        "batch_size": request.n,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
    }
    if request.sampler:
        payload["sampler_name"] = request.sampler
    model = request.model or settings.model
    if model:
        payload["override_settings"] = {"sd_model_checkpoint": model}
        payload["override_settings_restore_afterwards"] = bool(
            settings.options.get("restore_model", False)
        )
    if request.init_image is not None:
        payload["init_images"] = [encode_image(request.init_image)]
        payload["denoising_strength"] = request.denoise
    extra = settings.options.get("params", {})
    if isinstance(extra, dict):
        payload.update(extra)
    return payload


def parse_images(
    data: dict[str, Any], request: GenerationRequest, server: str, sent_model: str = ""
) -> list[GeneratedImage]:
    """The task's images from a WebUI answer, grid skipped, seeds and model from ``info``."""
    images = data.get("images")
    if not isinstance(images, list):
        raise ServerError(f"{server}: answer has no 'images' list", server=server)
    info = _info(data.get("info"))
    first = info.get("index_of_first_image", 0)
    first = first if isinstance(first, int) and 0 <= first <= len(images) else 0
    images = images[first:]
    if len(images) < request.n:
        raise ServerError(
            f"{server}: returned {len(images)} of {request.n} images (interrupted?)", server=server
        )
    seeds = info.get("all_seeds")
    seeds = seeds if isinstance(seeds, list) else []
    details: dict[str, Any] = {k: info[k] for k in ("sd_model_name", "sampler_name") if k in info}
    # the WebUI ignores an unknown checkpoint without a word: its answer names the one used
    model = str(info.get("sd_model_name") or sent_model)
    return [
        GeneratedImage(
            data=decode_image(str(image), server=server),
            seed=_seed(seeds, i, request.seed + i),
            info={"server": server, **details},
            server=server,
            model=model,
        )
        for i, image in enumerate(images[: request.n])
    ]


def _seed(seeds: list[Any], i: int, default: int) -> int:
    value = seeds[i] if i < len(seeds) else default
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _info(raw: Any) -> dict[str, Any]:
    """``info`` is a JSON string in the WebUI's answer; tolerate a dict or garbage."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def create(settings: BackendSettings, deps: BackendDeps) -> SDWebUIBackend:
    """Entry-point factory (``pixelkiln.backends`` group)."""
    return SDWebUIBackend(settings, deps)
