"""Presets: users list the active ones and pick one for a batch; admins manage them.

The rules in one place, for ``/api/v1/presets`` and the img2img compat admin
alike: only admins create, change, delete, reorder or see inactive presets; a
preset's parameters are checked when it is saved, as a batch would check them
(else every batch using it would fail later, blaming its user); and how a
preset frames a prompt (:func:`framed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from pixelkiln.db import presets as store
from pixelkiln.db.presets import Preset, PresetFields
from pixelkiln.exceptions import InvalidValueError
from pixelkiln.problems import invalid_value
from pixelkiln.service.context import Caller, ServiceContext, require_admin
from pixelkiln.specs import Params

#: what a preset's ``content`` holds to place the user's prompt (else it goes before it)
PROMPT_SLOT = "{prompt}"


async def list_presets(
    ctx: ServiceContext,
    caller: Caller,
    *,
    category: str | None = None,
    include_inactive: bool = False,
) -> list[Preset]:
    """By category and order; inactive ones too only when an admin asks for them."""
    everything = include_inactive and caller.is_admin
    return await ctx.read(store.list_presets, include_inactive=everything, category=category)


async def get_preset(ctx: ServiceContext, caller: Caller, preset_id: int) -> Preset:
    """One preset; NotFoundError for an inactive one unless the caller is an admin."""
    return await ctx.read(store.get_preset, preset_id, include_inactive=caller.is_admin)


async def create_preset(ctx: ServiceContext, caller: Caller, fields: PresetFields) -> Preset:
    """A new preset, last in its category unless ``fields.position`` says where."""
    require_admin(caller, "manage presets")
    return await ctx.write(store.create_preset, _with_checked_params(fields))


async def change_preset(
    ctx: ServiceContext, caller: Caller, preset_id: int, fields: PresetFields
) -> Preset:
    """The fields given (not None) replaced; NotFoundError when there is no such preset."""
    require_admin(caller, "manage presets")
    return await ctx.write(store.update_preset, preset_id, _with_checked_params(fields))


async def delete_preset(ctx: ServiceContext, caller: Caller, preset_id: int) -> None:
    """Gone for good (batches made with it keep their prompts); NotFoundError if absent."""
    require_admin(caller, "manage presets")
    await ctx.write(store.delete_preset, preset_id)


async def reorder_presets(
    ctx: ServiceContext, caller: Caller, preset_ids: Sequence[int]
) -> list[Preset]:
    """The listed presets first, in that order; every preset (inactive too) after."""
    require_admin(caller, "manage presets")
    return await ctx.write(store.reorder_presets, preset_ids)


@dataclass(frozen=True)
class Framed:
    """A prompt as a preset frames it, with the defaults the preset gives."""

    prompt: str
    negative_prompt: str | None
    params: dict[str, Any]  #: the preset's parameters a batch spec takes


def framed(preset: Preset, prompt: str, negative_prompt: str | None) -> Framed:
    """The user's ``prompt`` in the preset's ``{prompt}`` slot, or after its text.

    A negative prompt given wins over the preset's; an empty one of the preset is none.
    """
    template = preset.content
    if PROMPT_SLOT in template:
        prompt = template.replace(PROMPT_SLOT, prompt)
    else:
        prompt = f"{template}, {prompt}" if prompt else template
    negative = negative_prompt if negative_prompt is not None else (preset.negative_prompt or None)
    params = {k: v for k, v in preset.params.items() if k in Params.model_fields}
    return Framed(prompt, negative, params)


def _with_checked_params(fields: PresetFields) -> PresetFields:
    if not fields.params:
        return fields
    return replace(fields, params=checked_params(fields.params))


def checked_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Params checked as a batch will check them, stored as validated (normalised).

    InvalidValueError names the first bad one (``params.steps``) and lists each.
    """
    unknown = sorted(set(raw) - set(Params.model_fields))
    if unknown:
        raise InvalidValueError(f"unknown parameter(s): {', '.join(unknown)}", field="params")
    flags = sorted(name for name, value in raw.items() if isinstance(value, bool))
    if flags:  # no parameter is a yes/no; lax validation would read true as 1
        where = f"params.{flags[0]}"
        raise InvalidValueError(f"{where}: true or false is not a value of it", field=where)
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise invalid_value(exc, "params.") from exc
    return params.model_dump(mode="json", exclude_unset=True)
