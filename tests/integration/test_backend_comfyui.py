"""The comfyui backend against the fake ComfyUI: HTTP, websocket, uploads, history."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.comfyui import ComfyUIBackend, create
from pixelkiln.backends.comfyui_workflow import comfy_sampler, default_workflow, fill_workflow
from pixelkiln.backends.placeholder import draw
from pixelkiln.exceptions import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    NoServerAvailableError,
    RejectedInputError,
    ServerError,
)
from pixelkiln.testing import FakeComfyUI, generation_request, settings_for, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def comfy() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def backend(comfy: FakeComfyUI, http: httpx.AsyncClient) -> AsyncIterator[ComfyUIBackend]:
    backend = create(settings_for(comfy), BackendDeps(http))
    yield backend
    await backend.aclose()


def posted_graph(comfy: FakeComfyUI, index: int = -1) -> dict[str, Any]:
    graph: dict[str, Any] = comfy.received("/prompt", "POST")[index].json()["prompt"]
    return graph


def nodes(graph: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [n["inputs"] for n in graph.values() if n["class_type"] == kind]


async def test_txt2img_fills_the_default_graph(backend: ComfyUIBackend, comfy: FakeComfyUI) -> None:
    request = generation_request(
        n=2,
        seed=777,
        steps=9,
        cfg_scale=4.5,
        sampler="DPM++ 2M Karras",
        negative_prompt="lowres",
        width=96,
        height=80,
    )
    images = await backend.generate(request)

    assert len(images) == 2
    assert [i.seed for i in images] == [777, 777]  # one seed drives a ComfyUI batch
    assert [i.info["batch_index"] for i in images] == [0, 1]
    assert Image.open(io.BytesIO(images[0].data)).size == (96, 80)
    graph = posted_graph(comfy)
    (sampler,) = nodes(graph, "KSampler")
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (777, 9, 4.5)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("dpmpp_2m", "karras")
    assert sampler["denoise"] == 1.0
    assert graph[sampler["positive"][0]]["inputs"]["text"] == request.prompt
    assert graph[sampler["negative"][0]]["inputs"]["text"] == "lowres"
    assert nodes(graph, "EmptyLatentImage") == [{"width": 96, "height": 80, "batch_size": 2}]
    # no model configured: the server's first checkpoint
    assert nodes(graph, "CheckpointLoaderSimple")[0]["ckpt_name"] == comfy.checkpoints[0]
    assert comfy.received("/ws", "WS") and comfy.received("/view")


async def test_img2img_uploads_and_repeats_the_latent(
    backend: ComfyUIBackend, comfy: FakeComfyUI
) -> None:
    init = draw("source", 3, 80, 48)
    images = await backend.generate(generation_request(init_image=init, denoise=0.4, n=2))

    assert len(images) == 2
    assert Image.open(io.BytesIO(images[0].data)).size == (80, 48)
    (upload,) = comfy.received("/upload/image")
    graph = posted_graph(comfy)
    assert nodes(graph, "LoadImage")[0]["image"] == upload.extra["upload"]
    assert nodes(graph, "RepeatLatentBatch")[0]["amount"] == 2
    assert nodes(graph, "KSampler")[0]["denoise"] == 0.4
    assert comfy.inputs[("", upload.extra["upload"])] == init


async def test_user_workflow_from_file(
    comfy: FakeComfyUI, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    graph = default_workflow(img2img=False)
    graph["50"] = graph.pop("3")  # other ids than the built-in graph
    graph["50"]["class_type"] = "KSamplerAdvanced"
    inputs = graph["50"]["inputs"]
    inputs.update(
        add_noise="enable",
        noise_seed=1,
        start_at_step=0,
        end_at_step=100,
        return_with_leftover_noise="disable",
    )
    del inputs["seed"], inputs["denoise"]
    graph["8"]["inputs"]["samples"] = ["50", 0]
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(graph))
    backend = create(
        settings_for(comfy, model="sd_xl_base_1.0.safetensors", options={"workflow": str(path)}),
        BackendDeps(http),
    )
    images = await backend.generate(generation_request(seed=5, prompt="a lighthouse"))
    await backend.aclose()

    assert len(images) == 1
    sent = posted_graph(comfy)
    assert sent["50"]["inputs"]["noise_seed"] == 5
    assert sent["6"]["inputs"]["text"] == "a lighthouse"
    assert sent["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"


async def test_txt2img_workflow_without_load_image_refuses_init_images(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    backend = create(
        settings_for(comfy, options={"workflow": default_workflow(False)}), BackendDeps(http)
    )
    with pytest.raises(RejectedInputError, match="LoadImage"):
        await backend.generate(generation_request(init_image=draw("x", 1, 64, 64)))


def test_ui_format_workflow_is_a_config_error(comfy: FakeComfyUI, tmp_path: Path) -> None:
    path = tmp_path / "ui.json"
    path.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(ConfigError, match="API format"):
        create(
            settings_for(comfy, options={"workflow": str(path)}), BackendDeps(httpx.AsyncClient())
        )


async def test_node_errors_are_rejected_readably_and_not_retried(
    backend: ComfyUIBackend, comfy: FakeComfyUI
) -> None:
    with pytest.raises(RejectedInputError, match=r"node 4 \(CheckpointLoaderSimple\).*ckpt_name"):
        await backend.generate(generation_request(model="missing.safetensors"))
    assert len(comfy.received("/prompt", "POST")) == 1


async def test_execution_error_is_retryable(backend: ComfyUIBackend, comfy: FakeComfyUI) -> None:
    comfy.fail_execution_next("CUDA out of memory")
    with pytest.raises(ServerError, match="CUDA out of memory") as info:
        await backend.generate(generation_request())
    assert info.value.retryable


@pytest.mark.parametrize(
    ("outcome", "kind"), [(500, ServerError), ("reset", BackendUnavailableError)]
)
async def test_prompt_faults(
    backend: ComfyUIBackend, comfy: FakeComfyUI, outcome: Any, kind: type[Exception]
) -> None:
    comfy.faults.fail_next(outcome)
    with pytest.raises(kind):
        await backend.generate(generation_request())


async def test_server_down(backend: ComfyUIBackend, comfy: FakeComfyUI) -> None:
    comfy.down()
    with pytest.raises(NoServerAvailableError):
        await backend.generate(generation_request(model="v1-5-pruned-emaonly.safetensors"))


async def test_cancel_deletes_and_interrupts_the_running_prompt(
    backend: ComfyUIBackend, comfy: FakeComfyUI
) -> None:
    comfy.hold()
    task = asyncio.create_task(backend.generate(generation_request()))
    await wait_until(lambda: comfy.held == 1)  # running, and staying so until cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    prompt_id = comfy.received("/prompt", "POST")[0].json()["prompt_id"]
    assert comfy.deleted == [prompt_id]
    assert comfy.interrupts == [{"prompt_id": prompt_id}]
    await wait_until(lambda: comfy.history)  # the fake finished it as interrupted
    assert comfy.history[prompt_id]["status"]["status_str"] == "error"


async def test_cancel_of_a_queued_prompt_only_deletes_it(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    backend = create(settings_for(comfy, concurrency=2), BackendDeps(http))
    comfy.hold()  # one worker: the second prompt waits behind the held first one
    first = asyncio.create_task(backend.generate(generation_request(task_id=1)))
    await wait_until(lambda: comfy.held == 1)
    second = asyncio.create_task(backend.generate(generation_request(task_id=2, seed=9)))
    await wait_until(lambda: len(comfy.received("/prompt", "POST")) == 2 and comfy._pending)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert len(comfy.deleted) == 1 and not comfy.interrupts
    comfy.release()
    assert len(await first) == 1
    assert comfy.deleted[0] not in comfy.history
    await backend.aclose()


async def test_timeout_cancels_on_the_server(comfy: FakeComfyUI, http: httpx.AsyncClient) -> None:
    # long enough for the prompt to be queued and running on a loaded machine; the
    # held prompt never finishes, so the timeout always lands while it runs
    backend = create(
        settings_for(comfy, timeout=3.0, model="v1-5-pruned-emaonly.safetensors"), BackendDeps(http)
    )
    comfy.hold()
    with pytest.raises(BackendTimeoutError):
        await backend.generate(generation_request())
    assert len(comfy.deleted) == 1 and len(comfy.interrupts) == 1
    await backend.aclose()


def test_webui_sampler_names_translate() -> None:
    assert comfy_sampler("Euler a") == ("euler_ancestral", None)
    assert comfy_sampler("DPM++ 2M Karras") == ("dpmpp_2m", "karras")
    assert comfy_sampler("dpmpp_sde") == ("dpmpp_sde", None)


def test_fill_leaves_the_input_graph_alone() -> None:
    graph = default_workflow(img2img=False)
    fill_workflow(graph, generation_request(prompt="changed"), model="m", image=None, backend="c")
    assert graph["6"]["inputs"]["text"] == ""
