"""What running a task reads and writes: its generation request, and its image files."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pixelkiln.backends.base import Backend, GeneratedImage, GenerationRequest, honoured_params
from pixelkiln.backends.http import redact_url
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.storage import Storage, StoredImage, infotext, png_size, to_png


async def build_request(
    storage: Storage, task: ClaimedTask, api_key: str | None = None
) -> GenerationRequest:
    """The backend request for a claimed task; input images are read off the event loop."""
    p = task.params
    init = task.inputs.get("init_image")
    refs = task.inputs.get("reference_images") or []
    init_bytes: bytes | None = None
    ref_bytes: tuple[bytes, ...] = ()
    if init or refs:
        init_bytes, ref_bytes = await asyncio.to_thread(_read_inputs, storage, init, refs)
    return GenerationRequest(
        task_id=task.id,
        prompt=task.prompt,
        negative_prompt=task.negative_prompt,
        width=p["width"],
        height=p["height"],
        steps=p["steps"],
        cfg_scale=p["cfg_scale"],
        sampler=p["sampler"],
        seed=p["seed"],
        n=p["n"],
        model=p["model"],
        denoise=p["denoise"],
        init_image=init_bytes,
        reference_images=ref_bytes,
        api_key=api_key,
    )


def _read_inputs(
    storage: Storage, init: str | None, refs: list[str]
) -> tuple[bytes | None, tuple[bytes, ...]]:
    return storage.read(init) if init else None, tuple(storage.read(r) for r in refs)


def store_images(
    storage: Storage,
    task: ClaimedTask,
    images: list[GeneratedImage],
    backend: Backend | None = None,
) -> list[tuple[StoredImage, int]]:
    """Write a task's images as PNG files with the WebUI ``parameters`` chunk (blocking).

    The chunk and the returned records say what was sent and received: only the
    parameters ``backend`` takes (:func:`honoured_params`), the model it used (the task's
    or the backend's configured one when the generator does not say), the size of the
    image it returned, its server.
    """
    named = task.inputs.get("name")  # unique in the batch: no position needed
    stem = named or task.params.get("filename_prefix") or task.key
    position = None if named else task.position
    honours = honoured_params(backend)
    model = task.params.get("model") or (backend.settings.model if backend is not None else "")
    stored = []
    for index, image in enumerate(images):
        relative = storage.image_path(task.batch_id, stem, position, index, task.run)
        data = to_png(image.data)
        sent = sent_params(task, image.seed, honours)
        server, used = redact_url(image.server), image.model or model
        text = parameters(
            task.prompt, sent, png_size(data), backend=task.backend, server=server, model=used
        )
        written = storage.write_image(relative, data, text)
        made = replace(written, backend=task.backend, server=server, model=used, params=sent)
        stored.append((made, image.seed))
    return stored


def sent_params(task: ClaimedTask, seed: int, honours: frozenset[str]) -> dict[str, Any]:
    """The task's generation parameters a backend that ``honours`` them sent, by name."""
    p = task.params
    offered = {
        "negative_prompt": task.negative_prompt,
        "steps": p["steps"],
        "cfg_scale": p["cfg_scale"],
        "sampler": p["sampler"],  # "" = the generator's default: nothing sent
        "seed": seed,
        "denoise": p["denoise"] if task.inputs.get("init_image") else None,
    }
    return {k: v for k, v in offered.items() if k in honours and v not in ("", None)}


def parameters(
    prompt: str,
    sent: Mapping[str, Any],
    size: tuple[int, int],
    *,
    backend: str,
    server: str,
    model: str,
) -> str:
    """The WebUI ``parameters`` text of an image (see :func:`~pixelkiln.storage.infotext`)."""
    settings: dict[str, object] = {
        "Steps": sent.get("steps"),
        "Sampler": sent.get("sampler"),
        "CFG scale": sent.get("cfg_scale"),
        "Seed": sent.get("seed"),
        "Size": f"{size[0]}x{size[1]}",
        "Model": model,
        "Denoising strength": sent.get("denoise"),
        "Backend": backend,
        "Server": server,
    }
    return infotext(prompt, str(sent.get("negative_prompt", "")), settings)
