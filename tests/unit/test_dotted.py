"""Nested item fields spread into dotted columns and built back: the same item both ways."""

from __future__ import annotations

from typing import Any

import pytest

from pixelkiln.inputs.dotted import clashes, flat_fields, nested_fields


@pytest.mark.parametrize(
    "item",
    [
        {"setting": {"place": "quay", "time": "dusk"}, "title": "Boat"},
        {"shots": [{"camera": "wide", "n": 2}, {"camera": "close"}]},
        {"画面": {"描述": "灯塔", "镜头": ["远景", "特写"]}},
        {"deep": {"a": {"b": {"c": 1}}}},
    ],
)
def test_an_item_goes_flat_and_back(item: dict[str, Any]) -> None:
    flat = flat_fields(item)
    assert all(not isinstance(value, (dict, list)) for value in flat.values())
    assert nested_fields(flat) == item


def test_values_that_cannot_spread_stay_whole() -> None:
    item = {"empty": {}, "none": [], "odd": {"a.b": 1}, "caps": {"Place": "x"}, "ok": {"p": 1}}
    flat = flat_fields(item, keeps=lambda name: name == name.lower())
    assert flat == {"empty": {}, "none": [], "odd": {"a.b": 1}, "caps": {"Place": "x"}, "ok.p": 1}


def test_clashes_and_names_that_are_no_paths() -> None:
    assert clashes(["a", "a.b", "a.b.c", "ab.c", "No."]) == [
        ("a", "a.b"),
        ("a", "a.b.c"),
        ("a.b", "a.b.c"),
    ]
    assert nested_fields({"No.": 1, "a..b": 2}) == {"No.": 1, "a..b": 2}
    # a clash reaching this far (reported with the header) keeps the plain value, no crash
    assert nested_fields({"a": 1, "a.b": 2}) == {"a": 1}
    assert nested_fields({"a.b": 2, "a": 1}) == {"a": {"b": 2}}
    # keys 0..n-1 make a list; others stay an object
    assert nested_fields({"s.0": "x", "s.2": "z"}) == {"s": {"0": "x", "2": "z"}}
