"""Prompt templates: fields, nesting, escapes, refusals located; items made tasks."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from pixelkiln.exceptions import Problem
from pixelkiln.prompts import TemplateError, expand_items, json_safe, parse_template, render


def test_fields_are_replaced_by_their_values() -> None:
    fields = {"style": "ink wash", "title": "Dawn", "visual_desc": "a harbour"}
    assert render("{style}. {title}: {visual_desc}", fields) == "ink wash. Dawn: a harbour"


def test_dotted_fields_reach_into_objects_and_lists() -> None:
    fields = {"scene": {"prompt": "a fox", "shots": ["wide", "close"]}}
    assert render("{scene.prompt} ({scene.shots.1})", fields) == "a fox (close)"


def test_double_braces_are_literal_braces() -> None:
    assert render("{{not a field}} {x} }}", {"x": 1}) == "{not a field} 1 }"


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (2.5, "2.5"), (True, "true"), (False, "false"), ({"a": "é"}, '{"a": "é"}')],
)
def test_values_are_written_as_text(value: Any, text: str) -> None:
    assert render("{v}", {"v": value}) == text


def test_fields_may_be_named_in_any_script() -> None:
    assert render("{标题}: {画面-描述}", {"标题": "晨", "画面-描述": "港口"}) == "晨: 港口"


def test_every_missing_field_is_named_with_where_it_was_looked_for() -> None:
    with pytest.raises(TemplateError) as exc:
        render("{title}: {visual_desc} {scene.prompt} {title}", {"scene": {}}, "item 'slide-3'")
    assert str(exc.value) == (
        "item 'slide-3': template fields 'title', 'visual_desc', 'scene.prompt' are missing"
    )
    assert exc.value.where == "item 'slide-3'"


def test_a_null_value_or_a_step_past_a_list_is_missing() -> None:
    with pytest.raises(TemplateError, match="field 'a' is missing"):
        render("{a}", {"a": None})
    with pytest.raises(TemplateError, match=r"'l\.5' is missing"):
        render("{l.5}", {"l": [1]})
    with pytest.raises(TemplateError, match=r"'t\.x' is missing"):
        render("{t.x}", {"t": "text"})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a {title", "'{' at character 3 is not closed"),
        ("a } b", "'}' at character 3 closes no field"),
        ("{a{b}}", "'{' at character 3 is inside the field"),
        ("x {}", "'{}' at character 3: name a field"),
        ("{0}", "'{0}' at character 1: fields are named, not numbered"),
        ("{title!r}", "conversions ('!') and format specs (':') are not supported"),
        ("{title:>10}", "conversions ('!') and format specs (':') are not supported"),
        ("{a.__class__ x}", "is a name"),
        ("{a[0]}", "is a name"),
        ("{a..b}", "is a name"),
    ],
)
def test_a_template_that_is_not_valid_says_where(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(template)
    assert message in str(exc.value)


def test_attribute_access_never_reaches_python_objects() -> None:
    # str.format would give the class of the value; here it is a field path into data
    with pytest.raises(TemplateError, match=r"'v\.__class__' is missing"):
        render("{v.__class__}", {"v": "text"})


def test_a_parsed_template_lists_its_fields() -> None:
    assert parse_template("{b} {a.x} {b} {{c}}").fields == ("b", "a.x")


def test_json_safe_turns_dates_into_text_and_refuses_what_json_cannot_hold() -> None:
    assert json_safe({"d": datetime.date(2024, 1, 2), 3: (1, 2)}) == {
        "d": "2024-01-02",
        "3": [1, 2],
    }
    with pytest.raises(ValueError, match="set is not a JSON value"):
        json_safe({"s": {1, 2}})


def expand(items: list[Any], template: str | None = None, **kw: Any) -> Any:
    fields = kw.pop("vars", None)
    defaults = kw.pop("defaults", {})
    return expand_items(items, template, fields, defaults, "story.yaml", **kw)


def places(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.where, p.field) for p in problems]


def test_item_over_vars_over_defaults() -> None:
    tasks, problems = expand(
        [{"id": "a", "style": "own"}, {"id": "b"}],
        "{style} {aspect_ratio}",
        vars={"style": "shared"},
        defaults={"aspect_ratio": "16:9", "style": "default"},
    )
    assert problems == []
    assert [t.prompt for t in tasks] == ["own 16:9", "shared 16:9"]
    assert [t.key for t in tasks] == ["a", "b"]
    assert tasks[0].item == {"id": "a", "style": "own"}


def test_item_keys_that_are_parameters_set_the_task() -> None:
    [task], problems = expand(
        [{"id": 7, "title": "t", "n": 3, "seed": 5, "aspect_ratio": "9:16", "prompt": "own"}],
        "{title} / {prompt}",
    )
    assert problems == []
    assert (task.key, task.n, task.seed, task.aspect_ratio) == ("7", 3, 5, "9:16")
    assert task.prompt == "t / own"  # with a template an item's prompt is only a field


def test_without_a_template_an_item_needs_a_prompt() -> None:
    tasks, problems = expand([{"id": "a", "prompt": "a fox"}, {"id": "b"}])
    assert tasks[0].prompt == "a fox"
    assert places(problems) == [("item 'b'", "prompt")]
    assert "'template'" in problems[0].message
    _, problems = expand([{"id": "b"}], defaults={"prompt": "shared"})
    assert problems == []


def test_every_problem_of_every_item_is_located() -> None:
    items: list[Any] = [
        {"id": "s1", "title": "t"},  # visual_desc missing
        {"title": "t", "visual_desc": "v", "n": 0},  # no id, bad n
        {"id": "s1", "title": "t", "visual_desc": "v"},  # id used twice
        "not an item",
        {"id": 1.5, "title": "t", "visual_desc": "v"},
        {"id": "k1", "title": "t", "visual_desc": "v"},  # a task's key
    ]
    tasks, problems = expand(items, "{title}: {visual_desc}", taken=["k1"])
    assert len(tasks) == len(items)  # positions hold
    assert places(problems) == [
        ("item 's1'", "prompt"),
        ("item 2", "id"),
        ("item 2", "n"),
        ("item 3", "id"),
        ("item 4", ""),
        ("item 5", "id"),
        ("item 6", "id"),
    ]
    assert problems[0].message == "template field 'visual_desc' is missing"
    assert [p.path for p in problems[2:5]] == ["items[1].n", None, "items[3]"]
    assert "item number 1" in problems[3].message


def test_a_bad_template_is_one_problem_not_one_per_item() -> None:
    tasks, problems = expand([{"id": "a"}, {"id": "b"}], "{title")
    assert places(problems) == [("", "template")]
    assert problems[0].path == "template" and "character 1" in problems[0].message
    assert [t.key for t in tasks] == ["a", "b"]


def test_a_caller_names_items_its_own_way() -> None:
    _, problems = expand([{"id": "a"}], "{x}", where=lambda j: f"row {j + 2}", json_paths=False)
    assert places(problems) == [("row 2", "prompt")]
    _, problems = expand(
        [{"id": "a", "n": 0, "prompt": "p"}], where=lambda j: "row 9", json_paths=False
    )
    assert [(p.where, p.path) for p in problems] == [("row 9", None)]


def test_empty_fields_leave_no_stray_separators() -> None:
    template = "{style}. {title}: {visual_desc}"
    fields = {"style": "ink", "title": "Q3", "visual_desc": "a chart"}
    assert render(template, fields) == "ink. Q3: a chart"
    assert render(template, fields | {"style": ""}) == "Q3: a chart"
    assert render(template, fields | {"visual_desc": " "}) == "ink. Q3"
    assert render(template, fields | {"title": ""}) == "ink. a chart"
    comma = "\uff0c"  # the full-width comma of Chinese text
    joined = comma.join(["{a}", "{b}", "{c}"])
    assert render(joined, {"a": "水墨", "b": "", "c": "山"}) == f"水墨{comma}山"
    # every field given: the text as written, odd spacing and all
    assert render("{a} ,  {b}", {"a": "x", "b": "y"}) == "x ,  y"
    # values are never rewritten, only the template's own text around an empty field
    odd = {"style": "", "title": "Wait... what?", "visual_desc": "line one\nline two"}
    assert render(template, odd) == "Wait... what?: line one\nline two"
    assert render("{a}, {b}, {c}", {"a": "", "b": "", "c": "C"}) == "C"
    assert render("{a}, {b}, {c}", {"a": "A", "b": "", "c": ""}) == "A"
