"""Presets: named prompt texts (or templates) with default parameters, shown to users.

Admins create, edit, reorder and retire them; users list the active ones and
pick one for a batch. ``position`` orders them within a category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, update

from pixelkiln.db import returning
from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.tables import presets
from pixelkiln.exceptions import NotFoundError


@dataclass(frozen=True)
class Preset:
    """A stored preset."""

    id: int
    title: str
    content: str  #: prompt text or template ({prompt} is replaced by the user's text)
    negative_prompt: str
    params: dict[str, Any]  #: default generation parameters (steps, aspect_ratio, ...)
    category: str
    position: int  #: order within the category, ascending
    active: bool  #: inactive presets are hidden from users
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class PresetFields:
    """What an admin sets; None in an update means "leave as is"."""

    title: str | None = None
    content: str | None = None
    negative_prompt: str | None = None
    params: dict[str, Any] | None = None
    category: str | None = None
    position: int | None = None
    active: bool | None = None

    def values(self) -> dict[str, Any]:
        names = ("title", "content", "negative_prompt", "params", "category", "position", "active")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _preset(row: Row[Any]) -> Preset:
    return Preset(
        row.id,
        row.title,
        row.content,
        row.negative_prompt,
        dict(row.params),
        row.category,
        row.position,
        bool(row.active),
        row.created_at,
        row.updated_at,
    )


def create_preset(tx: Tx, fields: PresetFields) -> Preset:
    """A new preset; without a position it goes last in its category."""
    values = {
        "negative_prompt": "",
        "params": {},
        "category": "",
        "active": True,
        **fields.values(),
    }
    if "position" not in values:
        last = tx.conn.execute(
            select(func.max(presets.c.position)).where(presets.c.category == values["category"])
        ).scalar_one()
        values["position"] = (last or 0) + 1
    preset_id = returning.execute(
        tx.conn,
        insert(presets).returning(presets.c.id),
        {**values, "created_at": tx.now, "updated_at": tx.now},
    ).scalar_one()
    return get_preset(tx.conn, preset_id)


def update_preset(tx: Tx, preset_id: int, fields: PresetFields) -> Preset:
    values = fields.values()
    changed = tx.conn.execute(
        update(presets).where(presets.c.id == preset_id).values(**values, updated_at=tx.now)
    ).rowcount
    if not changed:
        raise NotFoundError(f"no preset {preset_id}")
    return get_preset(tx.conn, preset_id)


def delete_preset(tx: Tx, preset_id: int) -> None:
    if not tx.conn.execute(delete(presets).where(presets.c.id == preset_id)).rowcount:
        raise NotFoundError(f"no preset {preset_id}")


def reorder_presets(tx: Tx, preset_ids: Sequence[int]) -> list[Preset]:
    """Put the listed presets first, in that order; the others follow in their old order.

    Every preset is renumbered 1, 2, 3…, so positions stay unique whatever was listed
    (a partial list, or an id twice: its first place counts).
    """
    listed = list(dict.fromkeys(preset_ids))
    rows = tx.conn.execute(
        select(presets.c.id, presets.c.position).order_by(
            presets.c.category, presets.c.position, presets.c.id
        )
    ).all()
    old = {row.id: row.position for row in rows}
    missing = [i for i in listed if i not in old]
    if missing:
        raise NotFoundError(f"no preset {missing[0]}")
    chosen = set(listed)
    order = listed + [row.id for row in rows if row.id not in chosen]
    for position, preset_id in enumerate(order, start=1):
        if old[preset_id] != position:
            tx.conn.execute(
                update(presets)
                .where(presets.c.id == preset_id)
                .values(position=position, updated_at=tx.now)
            )
    return list_presets(tx.conn, include_inactive=True)


def get_preset(conn: Connection, preset_id: int, *, include_inactive: bool = True) -> Preset:
    query = select(presets).where(presets.c.id == preset_id)
    if not include_inactive:
        query = query.where(presets.c.active.is_(True))
    return _preset(one_row(conn, query, f"no preset {preset_id}"))


def list_presets(
    conn: Connection, *, include_inactive: bool = False, category: str | None = None
) -> list[Preset]:
    """By category, then position."""
    query = select(presets).order_by(presets.c.category, presets.c.position, presets.c.id)
    if not include_inactive:
        query = query.where(presets.c.active.is_(True))
    if category is not None:
        query = query.where(presets.c.category == category)
    return [_preset(row) for row in conn.execute(query)]
