"""How many tasks a batch file lists, found without building them: large specs refused early.

A spec of 200,000 tasks is 46 MB of JSON; built into Python objects and validated it
takes most of a gigabyte. :func:`listed_in_json` counts the entries of its top-level
``tasks`` and ``items`` lists while it is parsed, keeping no object of them, so that a
spec over ``[limits] max_tasks_per_batch`` is refused for the price of reading it once.

>>> listed_in_json(b'{"name": "b", "tasks": [{"prompt": "a"}, {"prompt": "b"}]}')
2
"""

from __future__ import annotations

import json
from typing import Any

from pixelkiln.exceptions import Problem, SpecError

#: the top-level lists whose entries each make at least one task
LISTS = ("tasks", "items")
#: what every object of the spec but the top level is read as: nothing at all
_NOTHING: dict[str, int] = {}


def _counted(pairs: list[tuple[str, Any]]) -> dict[str, int]:
    """An object read as the lengths of its ``tasks`` and ``items`` lists (the top level's
    are the ones wanted); an object without them as one shared, empty mapping."""
    found = {key: len(value) for key, value in pairs if key in LISTS and isinstance(value, list)}
    return found or _NOTHING


def listed_in_json(data: bytes | bytearray | str) -> int | None:
    """Entries of the top-level ``tasks`` and ``items`` lists of a JSON spec; None when the
    text is not a JSON object (the spec's own reading says what is wrong with it).

    Each listed entry makes at least one task (wildcards and sweeps make more), so a
    count over the limit is over it for sure.
    """
    try:
        top = json.loads(data, object_pairs_hook=_counted)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
        return None
    if not isinstance(top, dict):
        return None
    return sum(top.values())


def may_list_more(size: int, limit: int) -> bool:
    """Whether a JSON text of ``size`` bytes could list more than ``limit`` entries: each
    takes two bytes at least (``0,``), so a smaller text is not worth counting."""
    return size > 2 * limit


def limit_message(count: int, limit: int) -> str:
    """What a batch of ``count`` tasks over a limit of ``limit`` is told."""
    return (
        f"{count:,} tasks; at most {limit:,} in one batch ([limits] max_tasks_per_batch): split it"
    )


def check_listed(count: int, limit: int | None, source: str) -> None:
    """SpecError when a file lists more than ``limit`` tasks (None: no limit given)."""
    if limit is not None and count > limit:
        raise SpecError([Problem(source, "", "tasks", limit_message(count, limit))])


def listed_in(data: Any) -> int:
    """Entries of the top-level ``tasks`` and ``items`` lists of parsed spec data."""
    if not isinstance(data, dict):
        return 0
    return sum(len(data[key]) for key in LISTS if isinstance(data.get(key), list))
