"""Nested item fields as dotted table columns: ``setting.place``, ``shots.0``, and back.

A table has one level of columns, an item may hold objects and lists. So that an
items batch goes out as a spreadsheet and comes in again as the same items (and the
template's ``{setting.place}`` still finds its field), an export writes each nested
value in a column named by its path, and reading a table of items builds the objects
(and lists, for ``0``, ``1``, ... ) back from those headings.

>>> flat_fields({"setting": {"place": "a quay", "time": "dusk"}, "shots": ["wide"]})
{'setting.place': 'a quay', 'setting.time': 'dusk', 'shots.0': 'wide'}
>>> nested_fields({"setting.place": "a quay", "shots.0": "wide", "shots.1": "close"})
{'setting': {'place': 'a quay'}, 'shots': ['wide', 'close']}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

SEPARATOR = "."


def path_of(column: str) -> tuple[str, ...]:
    """The parts of a dotted column name; one part for a name that is not a path.

    A name with an empty part (``No.``, ``a..b``) is a plain field, as it always was.
    """
    parts = tuple(column.split(SEPARATOR))
    return parts if all(parts) else (column,)


def flat_fields(
    item: Mapping[str, Any], keeps: Callable[[str], bool] = lambda _: True
) -> dict[str, Any]:
    """The item's fields with each object and list spread into dotted columns.

    A value is spread only when every column it makes passes ``keeps`` (the name reads
    back as itself) and holds something; otherwise it stays whole, written as before.
    """
    flat: dict[str, Any] = {}
    for name, value in item.items():
        spread = dict(_leaves((name,), value))
        whole = len(spread) == 1 and name in spread
        flat |= spread if whole or all(map(keeps, spread)) else {name: value}
    return flat


def _leaves(path: tuple[str, ...], value: Any) -> Iterable[tuple[str, Any]]:
    """(dotted path, value) for each leaf under ``path``; an empty object or list is a leaf."""
    if isinstance(value, Mapping) and value and all(_part(str(k)) for k in value):
        for key, inner in value.items():
            yield from _leaves((*path, str(key)), inner)
    elif isinstance(value, list) and value:
        for index, inner in enumerate(value):
            yield from _leaves((*path, str(index)), inner)
    else:
        yield SEPARATOR.join(path), value


def _part(key: str) -> bool:
    return bool(key) and SEPARATOR not in key


def clashes(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of names where the first is a path the second would make an object of.

    ``setting`` and ``setting.place`` cannot both be fields of one item.

    >>> clashes(["setting", "title", "setting.place"])
    [('setting', 'setting.place')]
    """
    paths = {name: path_of(name) for name in names}
    # each path's proper prefixes, once: linear in the names, not quadratic
    longer_than: dict[tuple[str, ...], list[str]] = {}
    for other, path in paths.items():
        for cut in range(1, len(path)):
            longer_than.setdefault(path[:cut], []).append(other)
    return [(name, other) for name, path in paths.items() for other in longer_than.get(path, [])]


def nested_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields with dotted names made objects again, ``0``, ``1``, ... made lists.

    Names are expected free of :func:`clashes` (the header check reports them).
    """
    root: dict[str, Any] = {}
    for name, value in values.items():
        *parents, last = path_of(name)
        node: Any = root
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break  # a clash, reported with the header: the plain field is kept
        else:
            if not isinstance(node.get(last), dict):
                node[last] = value
    return {name: _listed(value) for name, value in root.items()}


def _listed(value: Any) -> Any:
    """An object built from dotted columns, as a list when its keys are 0, 1, ... n-1."""
    if not isinstance(value, dict):
        return value
    inner = {key: _listed(item) for key, item in value.items()}
    if sorted(inner) == sorted(str(i) for i in range(len(inner))):
        return [inner[str(i)] for i in range(len(inner))]
    return inner
