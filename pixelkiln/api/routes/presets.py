"""``/api/v1/presets``: users list the active ones; admins manage them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import ValidationError

from pixelkiln.api.deps import AdminDep, CallerDep, CtxDep, IdPath
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS
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
from pixelkiln.specs import Params, problems_from_validation
from pixelkiln.wire.schemas import PresetCreate, PresetPublic, PresetUpdate, ReorderRequest

router = APIRouter(prefix="/presets", tags=["presets"])


def _fields(body: PresetCreate | PresetUpdate) -> PresetFields:
    values = body.model_dump(exclude_unset=True)
    if body.params:
        values["params"] = _checked_params(body.params)
    return PresetFields(**values)


def _checked_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Params checked as a batch will check them, now: else every batch using the preset
    would fail later, blaming its user. Stored as validated (normalised)."""
    unknown = sorted(set(raw) - set(Params.model_fields))
    if unknown:
        raise ApiError(
            422, "invalid_request", f"unknown parameter(s): {', '.join(unknown)}", field="params"
        )
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = problems_from_validation(exc, "", lambda loc: ("", ".".join(map(str, loc))))
        where = [f"params.{p.field}" for p in problems]
        raise ApiError(
            422,
            "invalid_request",
            f"{where[0]}: {problems[0].message}",
            field=where[0],
            problems=[
                {"where": "", "field": w, "message": p.message}
                for w, p in zip(where, problems, strict=True)
            ],
        ) from exc
    return params.model_dump(mode="json", exclude_unset=True)


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
async def get_one(preset_id: IdPath, ctx: CtxDep, caller: CallerDep) -> PresetPublic:
    preset = await ctx.read(get_preset, preset_id, include_inactive=caller.is_admin)
    return preset_public(preset)


@router.post("", status_code=201, responses=ERRORS, summary="Create a preset (admin)")
async def create(body: PresetCreate, ctx: CtxDep, _: AdminDep) -> PresetPublic:
    return preset_public(await ctx.write(create_preset, _fields(body)))


@router.patch("/{preset_id}", responses=ERRORS, summary="Change a preset (admin)")
async def change(preset_id: IdPath, body: PresetUpdate, ctx: CtxDep, _: AdminDep) -> PresetPublic:
    return preset_public(await ctx.write(update_preset, preset_id, _fields(body)))


@router.delete("/{preset_id}", status_code=204, responses=ERRORS, summary="Delete a preset (admin)")
async def remove(preset_id: IdPath, ctx: CtxDep, _: AdminDep) -> Response:
    await ctx.write(delete_preset, preset_id)
    return Response(status_code=204)


@router.post("/reorder", responses=ERRORS, summary="Set the order of presets (admin)")
async def reorder(body: ReorderRequest, ctx: CtxDep, _: AdminDep) -> list[PresetPublic]:
    return [preset_public(p) for p in await ctx.write(reorder_presets, body.ids)]
