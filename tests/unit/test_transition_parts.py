"""The moves of tasks and batches stay one module to callers: ``transitions``.

Its parts (the claim, recording outcomes, counters, refunds) are split into
``db/transition_*.py`` modules only for size; a module outside that family
that imported one of them would move a task or a counter past the one entry,
so it fails here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pixelkiln
from pixelkiln.db import transitions

PACKAGE = Path(pixelkiln.__file__).parent
PARTS = {
    "pixelkiln.db.transition_claim",
    "pixelkiln.db.transition_counts",
    "pixelkiln.db.transition_outcomes",
    "pixelkiln.db.transition_refunds",
    "pixelkiln.db.transition_runs",
    "pixelkiln.db.transition_sql",
}


def _family(path: Path) -> bool:
    return path.parent.name == "db" and path.name.startswith("transition")


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if not node.level else f"pixelkiln.db.{node.module}"
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_transitions_family_imports_its_parts() -> None:
    offenders = {
        path.relative_to(PACKAGE).as_posix(): sorted(_imported(path) & PARTS)
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _family(path)
    }
    assert {name: parts for name, parts in offenders.items() if parts} == {}


def test_every_move_is_reached_through_transitions() -> None:
    moves = (
        "created cancel retry regenerate pause image_deleted charged_under "
        "claim start record_outcomes release recover"
    ).split()
    assert [m for m in moves if not callable(getattr(transitions, m, None))] == []
    assert set(moves) <= set(transitions.__all__)
