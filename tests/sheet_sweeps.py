"""Sweep batches for the contact-sheet tests, made without the ``sweep:`` spec key.

A plain batch, one task per cell with the cell's parameters, a distinct prompt and an
explicit seed (so every cell's image differs, and two runs draw the same ones); then
:func:`mark_sweep` records what a sweep expansion records: ``batches.extra["sweep"]``
and each task's ``axes``: the sheets' side of the contract, apart from the expansion
(tests/acceptance/test_sheet_resume.py also runs a spec's own ``sweep:``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, update

from pixelkiln.db.database import Tx
from pixelkiln.db.tables import batches, tasks
from tests.processes import connected

SWEEP: dict[str, dict[str, list[Any]]] = {
    "x": {"cfg_scale": [5, 7, 9]},
    "y": {"sampler": ["Euler", "DDIM", "DPM++ 2M"]},
    "z": {"model": ["m1", "m2"]},
}


def cells(sweep: dict[str, dict[str, list[Any]]] = SWEEP) -> list[dict[str, dict[str, Any]]]:
    """Each task's axes, in task order: z, then y, then x varies fastest."""
    axes = [(a, *next(iter(sweep[a].items()))) for a in ("z", "y", "x") if a in sweep]
    combos = itertools.product(*[[(a, name, v) for v in values] for a, name, values in axes])
    return [{a: {name: v} for a, name, v in combo} for combo in combos]


def plain_spec(
    sweep: dict[str, dict[str, list[Any]]] = SWEEP,
    *,
    name: str = "sweep",
    size: int = 64,
    backend_of: Any = None,
) -> dict[str, Any]:
    """A batch spec of one task per cell; ``backend_of(i)`` picks task i's backend."""
    rows = []
    for i, axes in enumerate(cells(sweep)):
        params = {name: value for axis in axes.values() for name, value in axis.items()}
        label = " ".join(f"{k}={v}" for k, v in params.items())
        task = {"key": f"c{i + 1:02d}", "prompt": f"a lighthouse, {label}", "seed": 1000 + i}
        task.update({k: v for k, v in params.items() if k in ("cfg_scale", "sampler", "steps")})
        if backend_of is not None:
            task["backend"] = backend_of(i)
        rows.append(task)
    return {"name": name, "defaults": {"width": size, "height": size}, "tasks": rows}


def mark_sweep(tx: Tx, batch_id: int, sweep: dict[str, dict[str, list[Any]]] = SWEEP) -> None:
    """Record the sweep on a batch made by :func:`plain_spec` (tasks by position)."""
    _mark(tx.conn, batch_id, sweep)


def mark_sweep_in(
    folder: Path, batch_id: int, sweep: dict[str, dict[str, list[Any]]] = SWEEP
) -> None:
    """:func:`mark_sweep` on the database of the `kiln` run in ``folder`` (another
    process's: SQLite's file in ``kiln-data``, or the suite's PostgreSQL/MySQL one)."""
    with connected(folder) as conn:
        _mark(conn, batch_id, sweep)
        conn.commit()


def _mark(conn: Connection, batch_id: int, sweep: dict[str, dict[str, list[Any]]]) -> None:
    conn.execute(update(batches).where(batches.c.id == batch_id).values(extra={"sweep": sweep}))
    for position, axes in enumerate(cells(sweep), start=1):
        conn.execute(
            update(tasks)
            .where(tasks.c.batch_id == batch_id, tasks.c.position == position)
            .values(axes=axes)
        )
