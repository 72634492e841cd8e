"""The event contract: docs/api.md's table, the payload types and the builders agree."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, get_type_hints, is_typeddict

import pytest

from pixelkiln.db.events import BUILDERS, PAYLOADS
from pixelkiln.models import BatchStatus, EventType

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"

#: every argument a builder takes, filled: what each builder writes with everything given
FULL: dict[EventType, dict[str, Any]] = {
    EventType.BATCH_UPDATE: {"status": BatchStatus.QUEUED, "name": "n", "total": 3, "retried": 1},
    EventType.INFO: {
        "message": "moved",
        "backend": "sd",
        "task_id": 310,
        "item_key": "k",
        "fallback_from": "a1111",
    },
    EventType.PROGRESS: {"current": 1, "total": 2, "message": "m", "item_key": "k"},
    EventType.IMAGE_GENERATED: {
        "item_key": "k",
        "image": {"id": 1, "index": 0, "path": "images/1/k.png", "width": 64, "height": 64},
    },
    EventType.WARNING: {
        "message": "m",
        "item_key": "k",
        "error": "e",
        "error_type": "ServerError",
        "attempt": 1,
        "retry_in": 0.5,
        "backend": "sd",
    },
    EventType.ERROR: {"error": "e", "item_key": "k", "error_type": "ServerError"},
    EventType.DONE: {
        "summary": {
            "status": "completed",
            "total": 1,
            "succeeded": 1,
            "failed": 0,
            "cancelled": 0,
            "images": 1,
            "started_at": 1.0,
            "finished_at": 2.0,
        }
    },
}
#: builders whose event belongs to a task take its id as their second argument
TASK_EVENTS = {EventType.PROGRESS, EventType.IMAGE_GENERATED, EventType.ERROR}


def documented() -> dict[str, set[str]]:
    """docs/api.md's event table: event → its fields (``name?`` optional, ``a.b`` nested)."""
    text = API_DOCS.read_text()
    header = "| event | when | fields |"
    assert header in text, "docs/api.md has no event table"
    table: dict[str, set[str]] = {}
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        event, _when, fields = (cell.strip() for cell in line.strip().strip("|").split("|"))
        table[event.strip("`")] = set(re.findall(r"`([^`]+)`", fields))
    return table


def fields_of(payload: type, prefix: str = "") -> set[str]:
    """A payload type's fields as the table writes them."""
    fields: set[str] = set()
    required = payload.__required_keys__  # type: ignore[attr-defined]
    for name, hint in get_type_hints(payload).items():
        if is_typeddict(hint):
            fields |= fields_of(hint, f"{prefix}{name}.")
        else:
            fields.add(f"{prefix}{name}" + ("" if name in required else "?"))
    return fields


def _build(kind: EventType, arguments: dict[str, Any]) -> tuple[Any, ...]:
    builder = BUILDERS[kind]
    ids = (12, 310) if kind in TASK_EVENTS else (12,)
    return builder(*ids, **arguments)  # type: ignore[operator]


def test_every_event_type_has_a_payload_and_a_builder_named_after_it() -> None:
    assert set(PAYLOADS) == set(BUILDERS) == set(EventType)
    assert all(BUILDERS[kind].__name__ == str(kind) for kind in EventType)


def test_the_docs_table_lists_every_event_with_exactly_its_fields() -> None:
    expected = {str(kind): fields_of(PAYLOADS[kind]) for kind in EventType}
    assert documented() == expected


@pytest.mark.parametrize("kind", list(EventType), ids=str)
def test_a_builder_takes_its_fields_and_writes_nothing_else(kind: EventType) -> None:
    payload = PAYLOADS[kind]
    top_level = set(get_type_hints(payload)) - {"task_id"}  # task_id: the event's own column
    parameters = set(inspect.signature(BUILDERS[kind]).parameters) - {"batch_id", "task_id"}
    assert parameters == top_level

    batch_id, task_id, written_kind, data = _build(kind, FULL[kind])
    assert (batch_id, written_kind) == (12, kind)
    assert set(data) == payload.__required_keys__ | payload.__optional_keys__
    if kind in TASK_EVENTS:
        assert task_id == 310

    required_only = {k: v for k, v in FULL[kind].items() if k in payload.__required_keys__}
    parameters_ = inspect.signature(BUILDERS[kind]).parameters
    assert all(parameters_[k].default is None for k in FULL[kind] if k not in required_only)
    assert set(_build(kind, required_only)[3]) == payload.__required_keys__
