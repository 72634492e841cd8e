"""The ``comfyui`` backend: a workflow in API format, queued on ComfyUI.

One task: upload the init image (``/upload/image``), fill the workflow's
placeholders, open the websocket ``/ws?clientId=...``, ``POST /prompt`` with
that client id, wait for ``executing`` with ``node: null`` for our prompt id,
then read the images from ``/history/{id}`` and ``/view`` (history, not the
``executed`` messages, so a result ComfyUI answered from its cache is found
too). If the websocket drops, ``/history`` is polled instead.

The workflow is ``options.workflow`` (a path to a JSON file exported with
"Save (API format)", or the graph inline), else a built-in txt2img graph, or
img2img graph when the task has an init image (``options.img2img_workflow``
replaces that one). Filled by node class and input:

* ``KSampler`` / ``KSamplerAdvanced``: seed, steps, cfg, sampler_name (WebUI
  names such as "DPM++ 2M Karras" are translated), denoise (img2img only);
* ``CLIPTextEncode`` (or ``CLIPTextEncodeSDXL``) reached from the sampler's
  ``positive`` / ``negative`` inputs: the prompt and negative prompt;
* ``EmptyLatentImage``: width, height, batch_size = n; ``RepeatLatentBatch``:
  amount = n; ``CheckpointLoaderSimple``: ckpt_name = model; ``LoadImage``:
  the uploaded init image.

One seed drives a ComfyUI batch, so every image of a task records the task's
seed (``info.batch_index`` tells them apart). A 400 with ``node_errors`` is
not retried; an ``execution_error`` is. Cancel deletes the prompt from the
queue and interrupts it if it is the one running.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from pixelkiln.backends.base import BackendDeps, GeneratedImage, GenerationRequest
from pixelkiln.backends.comfyui_workflow import (
    Graph,
    checkpoint_of,
    default_workflow,
    describe_node_errors,
    fill_workflow,
    load_workflow,
)
from pixelkiln.backends.http import (
    ServerDownError,
    error_for_status,
    join_url,
    json_body,
    json_object,
)
from pixelkiln.backends.pool import Server
from pixelkiln.backends.pooled import PooledBackend
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    RejectedInputError,
    ServerError,
)
from pixelkiln.models import GENERATION_PARAMS

logger = logging.getLogger(__name__)

#: seconds between /history polls when the websocket is gone
POLL_INTERVAL = 0.5
#: seconds the cancel requests may take
CANCEL_TIMEOUT = 5.0
#: largest websocket frame accepted (previews can be big)
MAX_FRAME = 16 * 2**20


class ComfyUIBackend(PooledBackend):
    """See the module docstring."""

    honours = frozenset(GENERATION_PARAMS)  #: filled into the sampler and text encoders

    def __init__(self, settings: BackendSettings, deps: BackendDeps) -> None:
        super().__init__(settings, deps)
        self._headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        self._txt2img = load_workflow(settings.options.get("workflow"), settings.name)
        self._img2img = load_workflow(settings.options.get("img2img_workflow"), settings.name)
        self._checkpoints: dict[str, str] = {}  # server → its first checkpoint

    def _workflow(self, request: GenerationRequest) -> tuple[Graph, bool]:
        """The graph for ``request`` and whether it is a built-in one."""
        if request.init_image is None:
            return (self._txt2img, False) if self._txt2img else (default_workflow(False), True)
        if self._img2img:
            return self._img2img, False
        if self._txt2img is None:
            return default_workflow(img2img=True), True
        if any(n.get("class_type") == "LoadImage" for n in self._txt2img.values()):
            return self._txt2img, False
        raise RejectedInputError(
            f"backend '{self.settings.name}': the workflow has no LoadImage node for the "
            "init image; add one or set options.img2img_workflow"
        )

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        if request.reference_images:
            raise RejectedInputError(
                f"backend '{self.settings.name}': reference images are "
                "not supported by ComfyUI workflows here; use init_image"
            )
        return await self.pool.run(lambda server: self._generate_on(server, request))

    async def _generate_on(
        self, server: Server, request: GenerationRequest
    ) -> list[GeneratedImage]:
        graph, builtin = self._workflow(request)
        image = await self._upload(server, request.init_image) if request.init_image else None
        model = request.model or self.settings.model
        if not model and builtin:
            model = await self._first_checkpoint(server)
        filled = fill_workflow(graph, request, model=model, image=image, backend=self.settings.name)
        prompt_id = await self._run(server, filled)
        return await self._collect(server, prompt_id, request, checkpoint_of(filled) or model)

    async def _run(self, server: Server, graph: Graph) -> str:
        """Queue ``graph`` and wait until ComfyUI has finished it; returns the prompt id."""
        client_id = uuid.uuid4().hex
        # chosen here (newer ComfyUI honours it), so a cancel that lands while /prompt is
        # still answering can name the prompt; older servers pick their own id
        prompt_id = str(uuid.uuid4())
        queued = False
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with await self._connect(server, client_id) as socket:
                    queued = True
                    prompt_id = await self._queue(server, graph, client_id, prompt_id)
                    await self._wait(socket, server, prompt_id)
        except asyncio.CancelledError:
            if queued:
                await self._cancel(server, prompt_id)
            raise
        except TimeoutError as exc:
            if queued:
                await self._cancel(server, prompt_id)
            raise BackendTimeoutError(
                f"{server.url}: prompt not finished within {self.settings.timeout:g}s",
                server=server.url,
            ) from exc
        return prompt_id

    async def _connect(self, server: Server, client_id: str) -> ClientConnection:
        url = join_url(server.url, f"ws?clientId={client_id}")
        url = "ws" + url.removeprefix("http")
        try:
            return await websockets.connect(
                url,
                additional_headers=self._headers,
                max_size=MAX_FRAME,
                open_timeout=self.settings.timeout,
            )
        except websockets.InvalidStatus as exc:
            raise error_for_status(
                exc.response.status_code, "websocket refused", server=server.url
            ) from exc
        except ConnectionRefusedError as exc:
            raise ServerDownError(
                f"{server.url}: cannot connect (websocket)", server=server.url
            ) from exc
        except (OSError, websockets.InvalidHandshake) as exc:
            raise BackendUnavailableError(
                f"{server.url}: websocket failed ({type(exc).__name__})", server=server.url
            ) from exc

    async def _queue(self, server: Server, graph: Graph, client_id: str, prompt_id: str) -> str:
        response = await self.request(
            "POST",
            join_url(server.url, "prompt"),
            server=server.url,
            headers=self._headers,
            json={"prompt": graph, "client_id": client_id, "prompt_id": prompt_id},
            check=False,
        )
        if response.status_code == 400:
            raise RejectedInputError(
                f"{server.url}: workflow rejected: {describe_node_errors(response.content)}",
                server=server.url,
            )
        self.check(response, server=server.url)
        answered = json_object(response, server=server.url).get("prompt_id")
        if not answered:
            raise ServerError(f"{server.url}: /prompt gave no prompt_id", server=server.url)
        return str(answered)

    async def _wait(self, socket: ClientConnection, server: Server, prompt_id: str) -> None:
        """Read messages until ours is done; poll history if the socket drops."""
        try:
            async for raw in socket:
                if isinstance(raw, str) and _finished(_parse(raw), prompt_id, server.url):
                    return
        except websockets.ConnectionClosed:
            pass
        logger.info(
            "backend %s: websocket to %s closed; polling history", self.settings.name, server.url
        )
        while not await self._history(server, prompt_id):
            await asyncio.sleep(POLL_INTERVAL)

    async def _history(self, server: Server, prompt_id: str) -> dict[str, Any]:
        response = await self.request(
            "GET",
            join_url(server.url, f"history/{prompt_id}"),
            server=server.url,
            headers=self._headers,
        )
        entry = json_object(response, server=server.url).get(prompt_id)
        return entry if isinstance(entry, dict) else {}

    async def _collect(
        self, server: Server, prompt_id: str, request: GenerationRequest, model: str
    ) -> list[GeneratedImage]:
        entry = await self._history(server, prompt_id)
        refs = _output_images(entry)
        if not refs:
            status = entry.get("status", {}) if entry else {}
            raise ServerError(
                f"{server.url}: prompt {prompt_id} produced no image "
                f"(status {status.get('status_str', 'unknown')})",
                server=server.url,
            )
        images = []
        for i, ref in enumerate(refs):
            images.append(
                GeneratedImage(
                    await self._view(server, ref),
                    seed=request.seed,
                    info={
                        "server": server.url,
                        "prompt_id": prompt_id,
                        "batch_index": i,
                        "filename": ref["filename"],
                    },
                    server=server.url,
                    model=model,
                )
            )
        return images

    async def _view(self, server: Server, ref: dict[str, str]) -> bytes:
        """One saved image; a file history names but /view lacks is the server's fault."""
        try:
            response = await self.request(
                "GET",
                join_url(server.url, "view"),
                server=server.url,
                headers=self._headers,
                params=ref,
            )
        except RejectedInputError as exc:
            raise ServerError(
                f"{server.url}: cannot read {ref['filename']}: {exc}", server=server.url
            ) from exc
        return response.content

    async def _upload(self, server: Server, data: bytes) -> str:
        """Upload an init image under a name derived from its bytes; returns ComfyUI's name."""
        name = f"pixelkiln-{hashlib.sha256(data).hexdigest()[:16]}.png"
        response = await self.request(
            "POST",
            join_url(server.url, "upload/image"),
            server=server.url,
            headers=self._headers,
            files={"image": (name, data, "image/png")},
            data={"type": "input", "overwrite": "true"},
        )
        return str(json_object(response, server=server.url).get("name", name))

    async def _first_checkpoint(self, server: Server) -> str:
        """The server's first checkpoint, for the built-in graphs when no model is set."""
        if server.url not in self._checkpoints:
            names = await self.list_models(server.url)
            if not names:
                raise RejectedInputError(
                    f"{server.url}: ComfyUI has no checkpoints", server=server.url
                )
            self._checkpoints[server.url] = names[0]
        return self._checkpoints[server.url]

    async def _cancel(self, server: Server, prompt_id: str) -> None:
        """Drop ``prompt_id`` from the queue, and interrupt it if it is running."""
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                queue = await self.request(
                    "GET", join_url(server.url, "queue"), server=server.url, headers=self._headers
                )
                running = [
                    item[1]
                    for item in queue.json().get("queue_running", [])
                    if isinstance(item, list) and len(item) > 1
                ]
                await self.request(
                    "POST",
                    join_url(server.url, "queue"),
                    server=server.url,
                    headers=self._headers,
                    json={"delete": [prompt_id]},
                )
                if prompt_id in running:
                    await self.request(
                        "POST",
                        join_url(server.url, "interrupt"),
                        server=server.url,
                        headers=self._headers,
                        json={"prompt_id": prompt_id},
                    )
        except (BackendError, TimeoutError, ValueError, AttributeError) as exc:
            logger.warning(
                "backend %s: could not cancel %s on %s: %s",
                self.settings.name,
                prompt_id,
                server.url,
                exc,
            )

    async def health(self, url: str) -> None:
        await self.request(
            "GET",
            join_url(url, "system_stats"),
            server=url,
            headers=self._headers,
            timeout=self.pool.policy.health_timeout,
        )

    async def list_models(self, url: str) -> list[str]:
        response = await self.request(
            "GET", join_url(url, "models/checkpoints"), server=url, headers=self._headers
        )
        names = json_body(response, server=url)
        return [str(n) for n in names] if isinstance(names, list) else []


def _parse(raw: str) -> Any:
    """A websocket text frame as JSON (None for garbage, which is skipped)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _finished(message: Any, prompt_id: str, server: str) -> bool:
    """Whether a websocket message ends our prompt; raises for an execution failure."""
    if not isinstance(message, dict):
        return False
    kind, data = message.get("type"), message.get("data")
    if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
        return False
    if kind == "execution_error":
        raise ServerError(
            f"{server}: ComfyUI failed in node {data.get('node_id')} "
            f"({data.get('node_type')}): {data.get('exception_message', '')}".strip(),
            server=server,
        )
    if kind == "execution_interrupted":
        raise ServerError(
            f"{server}: prompt {prompt_id} was interrupted on the server", server=server
        )
    return kind == "executing" and data.get("node") is None


def _output_images(entry: dict[str, Any]) -> list[dict[str, str]]:
    """``/view`` parameters of a history entry's saved images (previews only if nothing else)."""
    refs = []
    outputs = entry.get("outputs", {}) if isinstance(entry, dict) else {}
    for output in outputs.values() if isinstance(outputs, dict) else ():
        for image in output.get("images", []) if isinstance(output, dict) else ():
            if isinstance(image, dict) and image.get("filename"):
                refs.append(
                    {
                        "filename": str(image["filename"]),
                        "subfolder": str(image.get("subfolder", "")),
                        "type": str(image.get("type", "output")),
                    }
                )
    saved = [r for r in refs if r["type"] == "output"]
    return saved or refs


def create(settings: BackendSettings, deps: BackendDeps) -> ComfyUIBackend:
    """Entry-point factory (``pixelkiln.backends`` group)."""
    return ComfyUIBackend(settings, deps)
