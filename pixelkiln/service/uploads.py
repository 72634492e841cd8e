"""Uploads as batch inputs: an img2img batch from uploaded images (one task per image,
one prompt or preset for all), and a generated image made an upload.

The images are already stored as the caller's uploads (the API checks and
stores a multipart body's files: ``pixelkiln.api.uploads``); :func:`upload_spec`
builds the batch spec they make, the same for ``POST /api/v1/batches/upload`` and
the img2img compat ``POST /api/batch/create``, which submit it as any batch.

A batch spec from a remote caller names inputs only as ``asset:<id>`` (never a
server path), so a past result becomes a reference by :func:`asset_from_image`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from pixelkiln.db.presets import get_preset
from pixelkiln.db.records import Asset, ImageInfo, get_image, record_asset
from pixelkiln.engine.intake import asset_record
from pixelkiln.exceptions import InvalidValueError, NotFoundError
from pixelkiln.naming import file_name, unique_name, with_image_suffix
from pixelkiln.service.context import Caller, ServiceContext
from pixelkiln.service.presets import framed
from pixelkiln.specs import BatchSpec, parse_batch
from pixelkiln.storage import InputImage, read_input_image
from pixelkiln.wire.schemas import Id


@dataclass(frozen=True)
class Uploaded:
    """One stored upload: its row and the name the client gave it (sanitised)."""

    asset: Asset
    filename: str


class UploadFields(BaseModel):
    """The options of an upload batch (the text fields of its form)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    name: str = Field("uploads", min_length=1, max_length=200)
    prompt: str = Field("", max_length=20_000)
    preset_id: Id | None = None
    negative_prompt: str | None = Field(None, max_length=20_000)
    backend: str | None = None
    model: str | None = None
    denoise: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=10)
    aspect_ratio: str | None = None
    resolution: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None


async def upload_spec(
    ctx: ServiceContext, fields: UploadFields, files: Sequence[Uploaded]
) -> BatchSpec:
    """One task per uploaded image; a preset gives the prompt's frame and default parameters.

    A task's key is its file's name (``photo_00.png``; a second ``photo_00.png`` is
    ``photo_00-2.png``), and its images are named after it (``photo_00_0.png``, see
    ``engine.intake.name_outputs``). Without a size or ratio, each output keeps its
    input's shape (``params.size_like``). SpecError names every bad value;
    InvalidValueError when there is neither a prompt nor a preset.
    """
    prompt, negative, preset_params = fields.prompt, fields.negative_prompt, {}
    if fields.preset_id is not None:
        preset = await ctx.read(get_preset, fields.preset_id, include_inactive=False)
        frame = framed(preset, prompt, negative)
        prompt, negative, preset_params = frame.prompt, frame.negative_prompt, frame.params
    if not prompt:
        raise InvalidValueError("a prompt (or a preset) is required", field="prompt")
    overrides = fields.model_dump(
        exclude_none=True, exclude={"name", "prompt", "preset_id", "negative_prompt"}
    )
    taken: set[str] = set()
    data = {
        "name": fields.name,
        "defaults": {**preset_params, **overrides, "prompt": prompt, "negative_prompt": negative},
        "tasks": [
            {"init_image": f"asset:{u.asset.id}", "key": unique_name(_named(u), taken)}
            for u in files
        ],
    }
    return parse_batch(data, "upload")


def _named(upload: Uploaded) -> str:
    return with_image_suffix(upload.filename, upload.asset.mime)


async def asset_from_image(ctx: ServiceContext, caller: Caller, image_id: int) -> Asset:
    """One of the caller's generated images as one of their uploads (``asset:<id>``).

    Only the caller's own images (an admin's too: a reference is for one's own batch,
    and someone else's picture is not theirs to reuse); another's is NotFoundError,
    like a missing one. The file is checked like an upload (the server's upload
    limits: a reference is sent on to a generator) and stored by content, so asking
    twice, or for an image already uploaded, answers the asset the caller has.
    """
    info = await ctx.read(get_image, image_id, caller.mine)
    return await _as_asset(ctx, caller, info.image.path, image_id, "a reference")


async def edit_input(ctx: ServiceContext, caller: Caller, info: ImageInfo) -> Asset:
    """The image an edit re-prompts, as the caller's upload: the new batch's init image.

    ``info`` is read with the caller's scope (an admin may edit anyone's image). The
    bytes come from the storage, wherever it is, and are stored by content like any
    input image, so the original stays as it is.
    """
    return await _as_asset(ctx, caller, info.image.path, info.image.id, "an init image")


async def _as_asset(
    ctx: ServiceContext, caller: Caller, path: str, image_id: int, role: str
) -> Asset:
    image = await ctx.run(_as_input, ctx, path, image_id, role)
    stored = await ctx.run(ctx.storage.write_asset, image)
    name = file_name(PurePosixPath(path).name, f"image-{image_id}")
    return await ctx.write(record_asset, caller.user_id, asset_record(image, stored, name))


def _as_input(ctx: ServiceContext, path: str, image_id: int, role: str) -> InputImage:
    """The stored image's file read and checked as an input image (a thread)."""
    limits = ctx.settings.server
    try:
        data = ctx.storage.read(path)
    except FileNotFoundError as exc:
        raise NotFoundError(f"image {image_id}'s file is gone") from exc
    try:
        # stored by this server, so already clean (storage.to_png): kept byte for byte
        return read_input_image(
            data,
            max_bytes=limits.max_upload_bytes,
            max_pixels=limits.max_upload_pixels,
            clean=False,
        )
    except ValueError as exc:
        message = f"image {image_id} cannot be {role}: {exc}"
        raise InvalidValueError(message, field="image_id") from exc
