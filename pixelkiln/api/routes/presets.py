"""``/api/v1/presets``: users list the active ones; admins manage them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from pixelkiln import service
from pixelkiln.api.deps import AdminDep, CallerDep, CtxDep, IdPath
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import preset_public
from pixelkiln.db.presets import PresetFields
from pixelkiln.wire.schemas import PresetCreate, PresetPublic, PresetUpdate, ReorderRequest

router = APIRouter(prefix="/presets", tags=["presets"])


def _fields(body: PresetCreate | PresetUpdate) -> PresetFields:
    """What the body sets (its params are checked by the service)."""
    return PresetFields(**body.model_dump(exclude_unset=True))


@router.get("", responses=ERRORS, summary="List presets")
async def list_all(
    ctx: CtxDep,
    caller: CallerDep,
    category: str | None = None,
    include_inactive: Annotated[bool, Query(description="Admins only.")] = False,
) -> list[PresetPublic]:
    """Active presets by category and order (admins may ask for inactive ones too)."""
    found = await service.list_presets(
        ctx.service, caller, category=category, include_inactive=include_inactive
    )
    return [preset_public(p) for p in found]


@router.get("/{preset_id:int}", responses=ERRORS, summary="One preset")
async def get_one(preset_id: IdPath, ctx: CtxDep, caller: CallerDep) -> PresetPublic:
    return preset_public(await service.get_preset(ctx.service, caller, preset_id))


@router.post("", status_code=201, responses=ERRORS, summary="Create a preset (admin)")
async def create(body: PresetCreate, ctx: CtxDep, caller: AdminDep) -> PresetPublic:
    return preset_public(await service.create_preset(ctx.service, caller, _fields(body)))


@router.patch("/{preset_id:int}", responses=ERRORS, summary="Change a preset (admin)")
async def change(
    preset_id: IdPath, body: PresetUpdate, ctx: CtxDep, caller: AdminDep
) -> PresetPublic:
    changed = await service.change_preset(ctx.service, caller, preset_id, _fields(body))
    return preset_public(changed)


@router.delete(
    "/{preset_id:int}", status_code=204, responses=ERRORS, summary="Delete a preset (admin)"
)
async def remove(preset_id: IdPath, ctx: CtxDep, caller: AdminDep) -> Response:
    await service.delete_preset(ctx.service, caller, preset_id)
    return Response(status_code=204)


@router.post("/reorder", responses=ERRORS, summary="Set the order of presets (admin)")
async def reorder(body: ReorderRequest, ctx: CtxDep, caller: AdminDep) -> list[PresetPublic]:
    return [preset_public(p) for p in await service.reorder_presets(ctx.service, caller, body.ids)]
