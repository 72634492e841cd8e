"""A fake ComfyUI: ``/prompt``, its queue, the websocket, ``/history``, ``/view``, uploads.

It validates a graph the way ComfyUI does where clients can tell (unknown node
class, no output node, unknown checkpoint or input image, out-of-range
KSampler values → HTTP 400 with ``error`` and ``node_errors``), runs accepted
prompts from a queue (``workers`` at a time; a real ComfyUI runs one), sends
the websocket messages a real one sends to the prompt's ``client_id``
(``execution_start``, ``execution_cached``, ``executing``, ``progress``,
``executed``, ``execution_success``, and ``executing`` with ``node: null`` when
done), records history and serves the images from ``/view``. ``/queue``
``delete`` drops pending prompts; ``/interrupt`` stops the running one (only
the named one when the body gives a ``prompt_id``). Every route also answers
under ``/api``. :meth:`FakeServer.hold` keeps a running prompt in its first
sampler (``queue_running``), and with one worker the prompts behind it
pending, until :meth:`FakeServer.release`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from pixelkiln.backends.placeholder import draw
from pixelkiln.testing.comfyui_graph import (
    DEFAULT_CHECKPOINTS,
    OUTPUT_NODES,
    Graph,
    find_text,
    validate,
)
from pixelkiln.testing.server import FakeServer, read_form


@dataclass
class QueuedPrompt:
    """One accepted prompt, as ComfyUI keeps it: ``[number, id, prompt, extra, outputs]``."""

    number: int
    prompt_id: str
    graph: Graph
    client_id: str
    outputs: list[str]
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)

    def as_list(self) -> list[Any]:
        return [
            self.number,
            self.prompt_id,
            self.graph,
            {"client_id": self.client_id},
            self.outputs,
        ]


class FakeComfyUI(FakeServer):
    """See the module docstring."""

    kind = "comfyui"
    fault_paths = frozenset({"/prompt", "/api/prompt"})

    def __init__(
        self, *, checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS, workers: int = 1, **kwargs: Any
    ) -> None:
        self.checkpoints = checkpoints
        self.workers = workers
        self.inputs: dict[tuple[str, str], bytes] = {}  # (subfolder, name) → bytes
        self.files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, name) → bytes
        self.history: dict[str, dict[str, Any]] = {}
        self.interrupts: list[dict[str, Any]] = []  #: bodies of /interrupt calls
        self.deleted: list[str] = []  #: prompt ids removed through /queue
        self.execution_errors: deque[str] = deque()  #: messages for the next runs to fail with
        self._pending: deque[QueuedPrompt] = deque()
        self._running: dict[str, QueuedPrompt] = {}
        self._sockets: dict[str, WebSocket] = {}
        self._wakeup: asyncio.Event | None = None
        self._number = 0
        self._counter = 0
        super().__init__(**kwargs)

    def fail_execution_next(self, message: str = "CUDA out of memory (injected)") -> None:
        """Make the next prompt to run fail inside execution (``execution_error``)."""
        self.execution_errors.append(message)

    def error_response(self, status: int, message: str) -> Response:
        # aiohttp's own answer to an unhandled exception, or a bare status
        text = (
            "500 Internal Server Error\n\nServer got itself in trouble"
            if status == 500
            else f"{status}: {message}"
        )
        return PlainTextResponse(text, status_code=status)

    def build_app(self) -> ASGIApp:
        routes: list[BaseRoute] = [
            Route("/prompt", self._post_prompt, methods=["POST"]),
            Route("/prompt", self._get_prompt, methods=["GET"]),
            Route("/history", self._get_history_all, methods=["GET"]),
            Route("/history/{prompt_id}", self._get_history, methods=["GET"]),
            Route("/view", self._view, methods=["GET"]),
            Route("/upload/image", self._upload, methods=["POST"]),
            Route("/queue", self._get_queue, methods=["GET"]),
            Route("/queue", self._post_queue, methods=["POST"]),
            Route("/interrupt", self._interrupt, methods=["POST"]),
            Route("/system_stats", self._system_stats, methods=["GET"]),
            Route("/models/{folder}", self._models, methods=["GET"]),
            Route("/object_info/{node_class}", self._object_info, methods=["GET"]),
            WebSocketRoute("/ws", self._websocket),
        ]
        prefixed = [_prefixed(r) for r in routes]
        return Starlette(routes=[*prefixed, *routes], lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Start the executors; a restart (down/up) loses the queue, as a real restart does."""
        self._wakeup = asyncio.Event()
        self._pending.clear()
        self._running.clear()
        tasks = [asyncio.create_task(self._executor()) for _ in range(self.workers)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- submitting --------------------------------------------------------------------

    async def _post_prompt(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("500 Internal Server Error", status_code=500)
        graph = body.get("prompt") if isinstance(body, dict) else None
        if graph is None:
            return JSONResponse({"error": "no prompt", "node_errors": []}, status_code=400)
        error, node_errors, outputs = validate(graph, self.checkpoints, set(self.inputs))
        if error is not None:
            return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        number = self._number
        self._number += 1
        self._pending.append(
            QueuedPrompt(number, prompt_id, graph, str(body.get("client_id", "")), outputs)
        )
        assert self._wakeup is not None
        self._wakeup.set()
        return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def _get_prompt(self, request: Request) -> Response:
        return JSONResponse({"exec_info": {"queue_remaining": self._remaining()}})

    def _remaining(self) -> int:
        return len(self._pending) + len(self._running)

    # -- executing ---------------------------------------------------------------------

    async def _executor(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._pending.popleft()
            self._running[item.prompt_id] = item
            try:
                await self._execute(item)
            finally:
                self._running.pop(item.prompt_id, None)

    async def _execute(self, item: QueuedPrompt) -> None:
        pid, messages = item.prompt_id, []

        async def emit(kind: str, data: dict[str, Any], keep: bool = False) -> None:
            data = {**data, "prompt_id": pid}
            if keep:
                messages.append([kind, {**data, "timestamp": int(time.time() * 1000)}])
            await self._send(item.client_id, kind, data)

        await emit("execution_start", {}, keep=True)
        await emit("execution_cached", {"nodes": []}, keep=True)
        outputs, status = await self._run_nodes(item, emit)
        self.history[pid] = {
            "prompt": item.as_list(),
            "outputs": outputs,
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": messages,
            },
            "meta": {n: {"node_id": n, "display_node": n} for n in outputs},
        }
        await emit("executing", {"node": None, "display_node": None})

    async def _run_nodes(self, item: QueuedPrompt, emit: Any) -> tuple[dict[str, Any], str]:
        outputs: dict[str, Any] = {}
        # outputs last, as ComfyUI runs a node only after what it depends on
        order = sorted(item.graph.items(), key=lambda kv: kv[1]["class_type"] in OUTPUT_NODES)
        sampled = False
        for node_id, node in order:
            await emit("executing", {"node": node_id, "display_node": node_id})
            kind = node["class_type"]
            if kind in ("KSampler", "KSamplerAdvanced"):
                # held at the first sampler only: release(1) lets one prompt finish
                interrupted = await self._sample(item, node_id, emit, held=not sampled)
                sampled = True
                if interrupted:
                    await emit(
                        "execution_interrupted",
                        {"node_id": node_id, "node_type": kind, "executed": []},
                        keep=True,
                    )
                    return outputs, "error"
                if self.execution_errors:
                    await emit(
                        "execution_error",
                        _execution_error(node_id, kind, self.execution_errors.popleft()),
                        keep=True,
                    )
                    return outputs, "error"
            if kind in OUTPUT_NODES:
                images = self._save(item.graph, node_id)
                outputs[node_id] = {"images": images}
                await emit(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": {"images": images}},
                )
        await emit("execution_success", {}, keep=True)
        return outputs, "success"

    async def _sample(self, item: QueuedPrompt, node_id: str, emit: Any, held: bool) -> bool:
        """Spend the generation time with progress messages; True when interrupted."""
        if held and await self.gate.passage(item.interrupt):
            return True
        steps = 3
        for step in range(1, steps + 1):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.faults.delay() / steps):
                    await item.interrupt.wait()
            if item.interrupt.is_set():
                return True
            await emit("progress", {"value": step, "max": steps, "node": node_id})
        return False

    def _save(self, graph: Graph, node_id: str) -> list[dict[str, str]]:
        text, seed, width, height, count = find_text(graph, node_id, self._input_size)
        prefix = str(graph[node_id]["inputs"].get("filename_prefix", "ComfyUI"))
        kind = "output" if graph[node_id]["class_type"] == "SaveImage" else "temp"
        saved = []
        for i in range(count):
            self._counter += 1
            name = f"{prefix}_{self._counter:05d}_.png"
            self.files[(kind, "", name)] = draw(text, seed + i, width, height)
            saved.append({"filename": name, "subfolder": "", "type": kind})
        return saved

    def _input_size(self, name: str) -> tuple[int, int]:
        with Image.open(io.BytesIO(self.inputs[("", name)])) as image:
            return image.size

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        socket = self._sockets.get(client_id)
        if socket is None:
            return
        with contextlib.suppress(Exception):  # a gone client must not stop execution
            await socket.send_json({"type": kind, "data": data})

    async def _websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
        self._sockets[sid] = websocket
        try:
            await websocket.send_json(
                {
                    "type": "status",
                    "data": {
                        "status": {"exec_info": {"queue_remaining": self._remaining()}},
                        "sid": sid,
                    },
                }
            )
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if self._sockets.get(sid) is websocket:
                del self._sockets[sid]

    # -- results, uploads and control -------------------------------------------------------

    async def _get_history(self, request: Request) -> Response:
        pid = request.path_params["prompt_id"]
        return JSONResponse({pid: self.history[pid]} if pid in self.history else {})

    async def _get_history_all(self, request: Request) -> Response:
        return JSONResponse(self.history)

    async def _view(self, request: Request) -> Response:
        q = request.query_params
        name = q.get("filename", "")
        if not name:
            return Response(status_code=404)
        if name.startswith("/") or ".." in name:
            return Response(status_code=400)
        if ".." in q.get("subfolder", ""):
            return Response(status_code=403)
        kind = q.get("type", "output")
        data = (
            self.inputs.get((q.get("subfolder", ""), name))
            if kind == "input"
            else self.files.get((kind, q.get("subfolder", ""), name))
        )
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/png")

    async def _upload(self, request: Request) -> Response:
        fields, files = await read_form(request)
        image = next(((fn, data) for part, fn, data in files if part == "image" and fn), None)
        if image is None:
            return Response(status_code=400)
        filename, data = image
        try:
            Image.open(io.BytesIO(data)).verify()
        except (UnidentifiedImageError, OSError):
            return Response(status_code=400)
        subfolder = fields.get("subfolder", "")
        overwrite = fields.get("overwrite", "") in ("true", "1")
        name = _free_name(self.inputs, subfolder, filename, data, overwrite)
        self.inputs[(subfolder, name)] = data
        request.scope["state"]["record"].extra["upload"] = name
        return JSONResponse({"name": name, "subfolder": subfolder, "type": "input"})

    async def _get_queue(self, request: Request) -> Response:
        return JSONResponse(
            {
                "queue_running": [p.as_list() for p in self._running.values()],
                "queue_pending": [p.as_list() for p in self._pending],
            }
        )

    async def _post_queue(self, request: Request) -> Response:
        body = await request.json()
        if body.get("clear"):
            self.deleted.extend(p.prompt_id for p in self._pending)
            self._pending.clear()
        for pid in body.get("delete", []):
            self.deleted.append(pid)
            self._pending = deque(p for p in self._pending if p.prompt_id != pid)
        return Response(status_code=200)

    async def _interrupt(self, request: Request) -> Response:
        body = await request.body()
        data = await request.json() if body else {}
        self.interrupts.append(data)
        wanted = data.get("prompt_id") if isinstance(data, dict) else None
        for item in self._running.values():
            if wanted is None or wanted == item.prompt_id:
                item.interrupt.set()
        return Response(status_code=200)

    async def _system_stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "system": {
                    "os": "posix",
                    "comfyui_version": "0.3.64-fake",
                    "python_version": "3",
                    "embedded_python": False,
                    "argv": ["main.py"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": 0,
                        "vram_free": 0,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def _models(self, request: Request) -> Response:
        if request.path_params["folder"] != "checkpoints":
            return JSONResponse([])
        return JSONResponse(list(self.checkpoints))

    async def _object_info(self, request: Request) -> Response:
        cls = request.path_params["node_class"]
        if cls != "CheckpointLoaderSimple":
            return JSONResponse({})
        return JSONResponse(
            {
                cls: {
                    "input": {"required": {"ckpt_name": [list(self.checkpoints)]}},
                    "name": cls,
                    "output_node": False,
                }
            }
        )


def _prefixed(route: BaseRoute) -> BaseRoute:
    if isinstance(route, WebSocketRoute):
        return WebSocketRoute("/api" + route.path, route.endpoint)
    assert isinstance(route, Route)
    return Route("/api" + route.path, route.endpoint, methods=list(route.methods or ()))


def _free_name(
    inputs: dict[tuple[str, str], bytes],
    subfolder: str,
    filename: str,
    data: bytes,
    overwrite: bool,
) -> str:
    """ComfyUI's naming: same bytes keep the name, others become ``x (1).png``."""
    if overwrite:
        return filename
    stem, dot, ext = filename.rpartition(".")
    name, i = filename, 1
    while (subfolder, name) in inputs and inputs[(subfolder, name)] != data:
        name = f"{stem} ({i}){dot}{ext}"
        i += 1
    return name


def _execution_error(node_id: str, node_type: str, message: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "node_type": node_type,
        "executed": [],
        "exception_message": message,
        "exception_type": "torch.OutOfMemoryError",
        "traceback": [],
        "current_inputs": {},
        "current_outputs": {},
    }
