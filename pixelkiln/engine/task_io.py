"""What running a task reads and writes: its generation request, and its image files."""

from __future__ import annotations

import asyncio

from pixelkiln.backends.base import GeneratedImage, GenerationRequest
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.storage import Storage, StoredImage, infotext


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
    storage: Storage, task: ClaimedTask, images: list[GeneratedImage]
) -> list[tuple[StoredImage, int]]:
    """Write a task's images as PNG files with the WebUI ``parameters`` chunk (blocking)."""
    stem = task.params.get("filename_prefix") or task.key
    stored = []
    for index, image in enumerate(images):
        relative = storage.image_path(task.batch_id, stem, task.position, index)
        text = infotext(task.prompt, task.negative_prompt, _infotext_settings(task, image))
        stored.append((storage.write_image(relative, image.data, text), image.seed))
    return stored


def _infotext_settings(task: ClaimedTask, image: GeneratedImage) -> dict[str, object]:
    p = task.params
    settings: dict[str, object] = {
        "Steps": p["steps"],
        "Sampler": p["sampler"],
        "CFG scale": p["cfg_scale"],
        "Seed": image.seed,
        "Size": f"{p['width']}x{p['height']}",
        "Model": p["model"],
    }
    if task.inputs.get("init_image"):
        settings["Denoising strength"] = p["denoise"]
    settings["Backend"] = task.backend
    return settings
