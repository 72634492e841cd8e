"""The wildcard grammar: groups, nesting, weights, lists from files, limits, located errors."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelkiln.prompts import parse_template, render
from pixelkiln.wildcards import (
    MAX_DEPTH,
    Library,
    WildcardError,
    combinations,
    draw,
    escape,
    parse,
)

NOWHERE = Library(None)


def texts(text: str, library: Library = NOWHERE) -> list[str]:
    return list(combinations(parse(text, library)))


def error(text: str, library: Library = NOWHERE) -> str:
    with pytest.raises(WildcardError) as exc:
        parse(text, library)
    return str(exc.value)


def lists(tmp_path: Path, **files: str) -> Library:
    folder = tmp_path / "wildcards"
    for name, text in files.items():
        path = folder / f"{name.replace('__', '/')}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Library.beside(tmp_path)


def test_groups_nest_and_every_combination_is_made_once() -> None:
    assert texts("a {red|{green|blue}} fox") == ["a red fox", "a green fox", "a blue fox"]
    assert texts("{a|b}{1|2}") == ["a1", "a2", "b1", "b2"]
    assert parse("{a|{b|{c|d}}} {x|y|z}", NOWHERE).count == 12
    assert texts("{a|}b") == ["ab", "b"]  # an empty alternative
    assert texts("{a|{x}}") == ["a", "{x}"]  # inside a group, a pair without "|" is text


@pytest.mark.parametrize(
    "text",
    [
        "no wildcards here",
        "{x}",  # no "|": text, not a group of one
        "{{best quality}}, {{{masterpiece}}}",  # NovelAI emphasis
        "a } b",
        "a { b",
        "a {b|c",  # a "{" that pairs with no "}" is text, and so is its "|"
        "}{a|b",
        "x | y, [cat|dog]",  # bars outside braces (the WebUI's own alternation)
        "__init__ and __main__.py",  # no wildcards folder: no list
        "",
    ],
)
def test_prompts_that_are_not_wildcards_stay_as_written(text: str) -> None:
    assert texts(text) == [text]


def test_a_pair_holding_a_group_is_text_around_it() -> None:
    assert texts("{{a|b}}") == ["{a}", "{b}"]
    assert texts("{c|{a|b}") == ["{c|a", "{c|b"]  # the first "{" pairs with nothing


def test_weights_bias_draws_not_combinations() -> None:
    seq = parse("{9::a|b}", NOWHERE)
    assert list(combinations(seq)) == ["a", "b"]
    rng = random.Random(1)
    drawn = Counter(draw(seq, rng) for _ in range(2000))
    assert drawn["a"] > 5 * drawn["b"] > 0
    assert texts("{2.5::x|0.5::y}") == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{0::a|b}", "the weight at column 2 must be more than 0"),
        ("first line\nsecond {x|0::y}", "the weight at line 2, column 11 must be more than 0"),
        ("x __../../etc/passwd__", "'__../../etc/passwd__' at column 3: a list's name is"),
        ("__/abs__", "'__/abs__' at column 1: a list's name is"),
    ],
)
def test_bad_syntax_is_located_by_line_and_column(text: str, message: str, tmp_path: Path) -> None:
    assert error(text, lists(tmp_path, some="x")).startswith(message)


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    deep = "{a|" * (MAX_DEPTH + 1) + "b" + "}" * (MAX_DEPTH + 1)
    assert "nest deeper than" in error(deep)
    fine = "{a|" * MAX_DEPTH + "b" + "}" * MAX_DEPTH
    assert parse(fine, NOWHERE).count == MAX_DEPTH + 1


def test_lists_are_read_from_the_wildcards_folder(tmp_path: Path) -> None:
    library = lists(
        tmp_path,
        colours="# the colours\nred\n\n  {light|dark} blue  \n#green\n",
        animals="__people/names__ the fox\ncat",
        people__names="Ann\nBo",
    )
    made = texts("a __colours__ car", library)
    assert made == ["a red car", "a light blue car", "a dark blue car"]
    assert texts("__animals__", library) == ["Ann the fox", "Bo the fox", "cat"]
    assert parse("__colours__ __animals__", library).count == 9


def test_a_list_that_refers_back_to_itself_is_refused(tmp_path: Path) -> None:
    library = lists(tmp_path, a="x __b__", b="y\n__a__")
    message = error("__a__", library)
    assert "refers back to itself: a → b → a" in message
    assert "wildcards/b.txt line 2" in message


def test_lists_nested_past_the_limit_are_refused(tmp_path: Path) -> None:
    files = {f"l{i}": f"__l{i + 1}__" for i in range(MAX_DEPTH + 2)}
    library = lists(tmp_path, **files, **{f"l{MAX_DEPTH + 2}": "end"})
    assert "nest deeper than" in error("__l0__", library)


def test_list_problems_name_the_file_and_line(tmp_path: Path) -> None:
    library = lists(tmp_path, bad="fine\n{0::a|b}", empty="# nothing\n\n")
    assert error("__bad__", library) == (
        "'__bad__' at column 1: wildcards/bad.txt line 2: "
        "the weight at column 2 must be more than 0"
    )
    assert error("x __empty__", library).endswith("wildcards/empty.txt has no entries")
    assert error("__missing__", library).endswith("no file wildcards/missing.txt")


def test_no_path_leaves_the_wildcards_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("do not read")
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "link.txt").symlink_to(tmp_path / "secret.txt")
    library = Library.beside(tmp_path)
    assert error("__link__", library).endswith("wildcards/link.txt is outside the wildcards folder")
    assert "a list's name is" in error("__..__secret__", library)


def test_without_a_wildcards_folder_a_list_is_text(tmp_path: Path) -> None:
    assert texts("a __styles__ b") == ["a __styles__ b"]  # an API prompt: no folder
    beside = Library.beside(tmp_path)  # a batch file with no wildcards folder beside it
    assert beside.folder is None and texts("__init__", beside) == ["__init__"]
    library = lists(tmp_path, styles="ink")
    assert texts("a __ b and x__y", library) == ["a __ b and x__y"]  # "__" naming no list


def test_control_characters_in_a_list_file_are_refused_by_file_and_line(tmp_path: Path) -> None:
    library = lists(tmp_path, nul="fine\r\nalso fine\tand a tab\nbro\x00ken", bell="\x07")
    assert error("__nul__", library).endswith(
        "wildcards/nul.txt line 3: a control character (U+0000) at column 4; "
        "a list holds text (tabs allowed)"
    )
    assert "wildcards/bell.txt line 1: a control character (U+0007)" in error("__bell__", library)
    tabbed = lists(tmp_path / "t", tabs="a\tb\r\nc\rd")
    assert texts("__tabs__", tabbed) == ["a\tb", "c", "d"]


def test_escape_makes_any_text_literal(tmp_path: Path) -> None:
    library = lists(tmp_path, x="never read")
    for text in ("{a|b} __x__ |", "___a__b__", "}}{{", "plain", "a\\", "\\|\\__", "{|}"):
        assert texts(escape(text), library) == [text]
        assert texts(escape(text)) == [text]
    assert texts("{a\\|b} \\__x__", library) == ["{a|b} __x__"]  # escapes by hand


def test_templates_keep_groups_and_escape_field_values(tmp_path: Path) -> None:
    library = lists(tmp_path, x="listed")
    template = "{style}, a {red|{green|blue}} {{fox}} {{a|b}} __x__"
    assert parse_template(template).fields == ("style",)
    made = render(template, {"style": "{ink|oil} __x__"}, wildcards=True)
    assert texts(made, library) == [
        f"{{ink|oil}} __x__, a {c} {{fox}} {{a|b}} listed" for c in ("red", "green", "blue")
    ]
    # without wildcards a template renders as before: literal braces, groups as written
    assert render("{a} {{b}} {c|d}", {"a": 1}) == "1 {b} {c|d}"
    # a separator an empty field would leave is dropped before the bars are escaped
    assert texts(render("{a} | {b}", {"a": "", "b": "x"}, wildcards=True)) == ["x"]


ALTERNATIVES = st.lists(
    st.lists(st.text("abc ", min_size=0, max_size=3), min_size=1, max_size=4),
    min_size=0,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(ALTERNATIVES, st.text("xyz ", max_size=3))
def test_combinations_are_the_product_of_the_alternatives(
    groups: list[list[str]], between: str
) -> None:
    text = between.join("{" + "|".join(options) + "}" for options in groups)
    seq = parse(text, NOWHERE)
    made = list(combinations(seq))
    assert seq.count == len(made) == math.prod(len(options) for options in groups)


@settings(max_examples=40, deadline=None)
@given(ALTERNATIVES, st.integers(0, 2**32))
def test_random_draws_are_reproducible_from_their_seed(groups: list[list[str]], seed: int) -> None:
    seq = parse(" ".join("{" + "|".join(options) + "}" for options in groups), NOWHERE)
    first = [draw(seq, random.Random(seed)) for _ in range(5)]
    assert first == [draw(seq, random.Random(seed)) for _ in range(5)]
    assert set(first) <= set(combinations(seq))


TEXT = st.text(st.sampled_from("{}|_\\ab:3"), max_size=24)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_escaped_text_is_always_itself(text: str) -> None:
    library = Library(Path("/nonexistent-wildcards"))  # lists allowed; none may be read
    assert texts(escape(text), library) == [text]


@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from("{}_ ab"), max_size=24))
def test_text_without_bars_is_never_a_wildcard(text: str) -> None:
    assert texts(text) == [text]  # whatever its braces (and "__" without a folder)


@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from("{}| ab"), max_size=24))
def test_any_braces_and_bars_parse_and_count_their_texts(text: str) -> None:
    seq = parse(text, NOWHERE)
    made = list(combinations(seq))
    assert seq.count == len(made) >= 1
