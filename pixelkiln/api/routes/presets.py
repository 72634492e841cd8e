"""``/api/v1/presets``: users list the active ones; admins manage them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from pixelkiln.api.deps import AdminDep, CallerDep, CtxDep
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.schemas import PresetCreate, PresetPublic, PresetUpdate, ReorderRequest
from pixelkiln.api.views import preset_public
from pixelkiln.db.presets import (
    PresetFields,
    create_preset,
    delete_preset,
    get_preset,
    list_presets,
    reorder_presets,
    update_preset,
)
from pixelkiln.specs import Params

router = APIRouter(prefix="/presets", tags=["presets"])


def _fields(body: PresetCreate | PresetUpdate) -> PresetFields:
    if body.params:
        unknown = sorted(set(body.params) - set(Params.model_fields))
        if unknown:
            raise ApiError(
                422,
                "invalid_request",
                f"unknown parameter(s): {', '.join(unknown)}",
                field="params",
            )
    return PresetFields(**body.model_dump(exclude_unset=True))


@router.get("", responses=ERRORS, summary="List presets")
async def list_all(
    ctx: CtxDep,
    caller: CallerDep,
    category: str | None = None,
    include_inactive: Annotated[bool, Query(description="Admins only.")] = False,
) -> list[PresetPublic]:
    """Active presets by category and order (admins may ask for inactive ones too)."""
    everything = include_inactive and caller.is_admin
    presets = await ctx.read(list_presets, include_inactive=everything, category=category)
    return [preset_public(p) for p in presets]


@router.get("/{preset_id}", responses=ERRORS, summary="One preset")
async def get_one(preset_id: int, ctx: CtxDep, caller: CallerDep) -> PresetPublic:
    preset = await ctx.read(get_preset, preset_id, include_inactive=caller.is_admin)
    return preset_public(preset)


@router.post("", status_code=201, responses=ERRORS, summary="Create a preset (admin)")
async def create(body: PresetCreate, ctx: CtxDep, _: AdminDep) -> PresetPublic:
    return preset_public(await ctx.write(create_preset, _fields(body)))


@router.patch("/{preset_id}", responses=ERRORS, summary="Change a preset (admin)")
async def change(preset_id: int, body: PresetUpdate, ctx: CtxDep, _: AdminDep) -> PresetPublic:
    return preset_public(await ctx.write(update_preset, preset_id, _fields(body)))


@router.delete("/{preset_id}", status_code=204, responses=ERRORS, summary="Delete a preset (admin)")
async def remove(preset_id: int, ctx: CtxDep, _: AdminDep) -> Response:
    await ctx.write(delete_preset, preset_id)
    return Response(status_code=204)


@router.post("/reorder", responses=ERRORS, summary="Set the order of presets (admin)")
async def reorder(body: ReorderRequest, ctx: CtxDep, _: AdminDep) -> list[PresetPublic]:
    return [preset_public(p) for p in await ctx.write(reorder_presets, body.ids)]
