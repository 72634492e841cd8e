"""Prompt templates, and batch ``items`` turned into tasks by one.

A template is text with named fields: ``"{style}. {title}: {visual_desc}"``.
A field is a name, or a dotted path into nested objects and lists
(``{scene.prompt}``, ``{shots.0}``); ``{{`` and ``}}`` are literal braces.
A ``{...}`` that holds a ``|`` outside the groups inside it is a wildcard group
(``{red|blue}``, see :mod:`pixelkiln.wildcards`), kept as it is for the prompt's
wildcards to expand; fields are not looked for inside it.
Nothing else is allowed: no positional fields (``{0}``), conversions
(``{x!r}``) or format specs (``{x:>10}``), so a template never reaches into
Python objects the way ``str.format`` would. Problems are located: a template
that is not valid says at which character, a missing field names itself and
the item that lacks it.

>>> render("{style}. {title}", {"title": "Dawn", "style": "ink"}, "item 'a'")
'ink. Dawn'

:func:`expand_items` turns a batch's ``items`` into tasks (one per item, keyed
by its ``id``). The prompts it makes are wildcard text: the fields' values are
escaped (:func:`pixelkiln.wildcards.escape`), and so are the bars of the template's
literal text, so that only the template's own groups and ``__lists__`` expand
(:mod:`pixelkiln.sweeps` expands them).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from pixelkiln.exceptions import Problem
from pixelkiln.problems import json_path, problems_from_validation
from pixelkiln.specs import PARAM_NAMES, TaskSpec, item_place, salvage
from pixelkiln.wildcards import escape

__all__ = ["Template", "TemplateError", "expand_items", "parse_template", "render"]

#: one name in a field's path: a letter or "_" first (so ``{0}`` is refused), then
#: letters, digits, "_" and "-" (any script: ``{标题}`` is a field)
_NAME = re.compile(r"[^\W\d][\w-]*")
_INDEX = re.compile(r"\d+")


class TemplateError(ValueError):
    """A template that is not valid, or a field an item lacks; ``where`` + ``detail`` say which."""

    def __init__(self, detail: str, where: str = "") -> None:
        self.detail = detail
        self.where = where
        super().__init__(f"{where}: {detail}" if where else detail)


@dataclass(frozen=True)
class _Field:
    path: tuple[str, ...]  #: ("scene", "prompt") for ``{scene.prompt}``
    text: str  #: as written, for messages


@dataclass(frozen=True)
class _Group:
    text: str  #: a wildcard group as written, braces included: ``{red|blue}``


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text, fields and wildcard groups, in order."""

    text: str
    parts: tuple[str | _Field | _Group, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields it names, as written, each once.

        >>> parse_template("{a} {b.c} {a}").fields
        ('a', 'b.c')
        """
        names = (p.text for p in self.parts if isinstance(p, _Field))
        return tuple(dict.fromkeys(names))


@lru_cache(maxsize=64)
def parse_template(text: str) -> Template:
    """Parse ``text``; TemplateError says what is wrong and at which character (1-based).

    >>> parse_template("{title!r}")
    Traceback (most recent call last):
    pixelkiln.prompts.TemplateError: '{title!r}' at character 1: ...
    """
    parts: list[str | _Field | _Group] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "{}" and text[i + 1 : i + 2] == char:
            literal.append(char)
            i += 2
        elif char == "}":
            raise TemplateError(
                f"'}}' at character {i + 1} closes no field (write '}}}}' for '}}')"
            )
        elif char == "{":
            end, group = _brace_end(text, i)
            body = text[i + 1 : end]
            parts.append("".join(literal))
            parts.append(_Group(text[i : end + 1]) if group else _parse_field(body, i))
            literal = []
            i = end + 1
        else:
            literal.append(char)
            i += 1
    parts.append("".join(literal))
    return Template(text, tuple(p for p in parts if p))


def _brace_end(text: str, start: int) -> tuple[int, bool]:
    """Index of the ``}`` closing the ``{`` at ``start``, and whether it is a wildcard group
    (it holds a ``|`` outside the groups inside it) rather than a field."""
    depth = 0
    group = False
    inner = -1  # where the first "{" inside it is
    for j in range(start + 1, len(text)):
        char = text[j]
        if char == "}" and depth == 0:
            if inner >= 0 and not group:
                raise TemplateError(
                    f"'{{' at character {inner + 1} is inside the field opened before it"
                )
            return j, group
        if char == "{":
            depth += 1
            inner = j if inner < 0 else inner
        elif char == "}":
            depth -= 1
        elif char == "|" and depth == 0:
            group = True
    raise TemplateError(f"'{{' at character {start + 1} is not closed (write '{{{{' for '{{')")


def _parse_field(body: str, start: int) -> _Field:
    shown = f"'{{{body}}}' at character {start + 1}"
    if not body.strip():
        raise TemplateError(f"{shown}: name a field, e.g. '{{title}}'")
    if "!" in body or ":" in body:
        raise TemplateError(f"{shown}: conversions ('!') and format specs (':') are not supported")
    path = tuple(body.split("."))
    if _INDEX.fullmatch(path[0]):
        raise TemplateError(f"{shown}: fields are named, not numbered")
    if not _NAME.fullmatch(path[0]) or not all(
        _NAME.fullmatch(p) or _INDEX.fullmatch(p) for p in path[1:]
    ):
        raise TemplateError(
            f"{shown}: a field is a name (letters, digits, '_', '-'), or names and list "
            "positions joined by '.', e.g. '{scene.prompt}'"
        )
    return _Field(path, body)


def render(
    template: str | Template, fields: Mapping[str, Any], where: str = "", *, wildcards: bool = False
) -> str:
    """``template`` with each field replaced by its value in ``fields``.

    With ``wildcards`` the text is a prompt for :mod:`pixelkiln.wildcards`: the
    template's groups and lists stay as written, a ``|`` in its literal text is escaped,
    and so are the field values (a ``|`` or ``__`` in them is text, never a wildcard).

    Texts and numbers are written as they are, true/false in lower case, objects
    and lists as JSON. A field missing (or null) raises TemplateError naming
    every such field and ``where`` it was looked for ("item 'slide-3'"). A field
    that is empty text leaves no stray separators in the template's text around it.

    >>> render("{scene.prompt}, {{x}}", {"scene": {"prompt": "a fox"}})
    'a fox, {x}'
    >>> render("{style}. {title}: {visual_desc}", {"style": "", "title": "Q3", "visual_desc": ""})
    'Q3'
    >>> render("{a} {b}", {}, "item 'x'")
    Traceback (most recent call last):
    pixelkiln.prompts.TemplateError: item 'x': template fields 'a', 'b' are missing
    """
    parsed = template if isinstance(template, Template) else parse_template(template)
    out: list[str] = []
    written: list[Callable[[str], str]] = []  # how each part is written for wildcards
    missing: list[str] = []
    empty: list[int] = []  # positions in ``out`` of fields that rendered as empty text
    for part in parsed.parts:
        if isinstance(part, _Group):
            out.append(part.text)
            written.append(_as_written)
            continue
        if isinstance(part, str):
            out.append(part)  # its bars are text (``{{a|b}}``), its ``__lists__`` its own
            written.append(_bars_escaped)
            continue
        value = _lookup(fields, part.path)
        if value is None:
            missing.append(part.text)
            continue
        text = _text(value)
        if not text.strip():
            empty.append(len(out))
        out.append(text)
        written.append(escape)
    if missing:
        names = ", ".join(f"'{m}'" for m in dict.fromkeys(missing))
        plural = "s" if len(set(missing)) > 1 else ""
        verb = "are" if plural else "is"
        raise TemplateError(f"template field{plural} {names} {verb} missing", where)
    out = _without_gaps(out, set(empty))  # on the text as the template's reader sees it
    if wildcards:
        out = [write(text) for write, text in zip(written, out, strict=True)]
    return "".join(out)


def _as_written(text: str) -> str:
    return text


def _bars_escaped(text: str) -> str:
    return text.replace("|", "\\|")


#: what separates the parts of a prompt (ASCII and full-width)
_SEPARATORS = ",.;:|\uff0c\u3002\uff1b\uff1a\u3001"
_SEP = f"[{re.escape(_SEPARATORS)}]"
_LEADING = re.compile(rf"^(?:{_SEP}|\s)+")
#: trailing separators an empty last field leaves, a full stop excepted
_TRAILING = re.compile(
    rf"(?:[{re.escape(_SEPARATORS.replace('.', '').replace(chr(0x3002), ''))}]|\s)+$"
)
_CONTENT = re.compile(rf"[^\s{re.escape(_SEPARATORS)}]")


def _without_gaps(parts: list[str], empty: set[int]) -> list[str]:
    """``parts`` (literal text and field values, in order) with the separators an empty
    field would leave dangling taken out of the literal text beside it: the text after
    it loses its leading separators, or, when nothing follows, the text before it its
    trailing ones. Field values are never changed, so a template whose fields all have
    values gives exactly its text.

    >>> "".join(_without_gaps(["", ". ", "Q3", ": ", ""], {0, 4}))
    'Q3'
    >>> "".join(_without_gaps(["ink", ", ", "", ", ", "a fox"], {2}))
    'ink, a fox'
    """
    parts = list(parts)
    for i in sorted(empty):
        parts[i] = ""
        if any(_CONTENT.search(later) for later in parts[i + 1 :]):
            if i + 1 < len(parts) and i + 1 not in empty:
                parts[i + 1] = _LEADING.sub("", parts[i + 1])
        elif i > 0 and i - 1 not in empty:
            parts[i - 1] = _TRAILING.sub("", parts[i - 1])
    return parts


def _lookup(fields: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path``, or None where there is none (a missing key, index or null)."""
    value: Any = fields.get(path[0])
    for step in path[1:]:
        if isinstance(value, Mapping):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def json_safe(value: Any) -> Any:
    """``value`` as JSON holds it: dates (YAML, TOML) as ISO text, keys as text.

    Raises ValueError for anything else JSON cannot hold (a YAML set or bytes).

    >>> json_safe({"when": datetime.date(2024, 5, 1), 1: [True]})
    {'when': '2024-05-01', '1': [True]}
    """
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def expand_items(
    items: Sequence[Any],
    template: str | None,
    fields: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
    source: str = "",
    *,
    taken: Iterable[str] = (),
    where: Callable[[int], str] | None = None,
    json_paths: bool = True,
) -> tuple[list[TaskSpec], list[Problem]]:
    """One task per item, and every problem of every item; the tasks go after a batch's own.

    - ``items``: any JSON objects, each with an ``id`` (text or a whole number),
      unique among the items and ``taken`` (the keys of the batch's own tasks):
      it becomes the task's key.
    - ``template``: the prompt, made from the item's fields, then ``fields``
      (the batch's ``vars``), then ``defaults`` (the batch's default parameters).
      Without one, an item needs a ``prompt`` (or the defaults one).
    - An item's keys that are parameter names (``n``, ``seed``, ``aspect_ratio``...)
      set that task's parameters, checked like a task's; with a template its
      ``prompt`` is only a field.

    Each task carries its item (``TaskSpec.item``, stored as ``tasks.item``).
    Problems are located by ``where(j)`` for item j (0-based), by default
    ``item 'ID'`` (``item N`` when the id is missing or bad); with ``json_paths``
    a value that does not fit says where it is (``items[2].n``), as for an API body.
    A task whose values have problems keeps the valid ones (positions hold), so
    later checks report theirs too; nothing runs a batch with problems.
    """
    found: list[Problem] = []
    parsed: Template | None = None
    if template is not None:
        try:
            parsed = parse_template(template)
        except TemplateError as exc:
            path = "template" if json_paths else None
            found.append(Problem(source, "", "template", exc.detail, path))
    context = _Context(
        source,
        where,
        json_paths,
        found,
        template is not None,
        parsed,
        json_safe(fields or {}),
        defaults,
        set(taken),
        {},
    )
    return [_ItemTask(context, j).task(item) for j, item in enumerate(items)], found


@dataclass(frozen=True)
class _Context:
    """What every item of one batch is expanded with, and where problems go."""

    source: str
    where: Callable[[int], str] | None
    json_paths: bool
    found: list[Problem]
    templated: bool  #: a template was given (even one that is not valid)
    template: Template | None  #: the template, when it is valid
    fields: Mapping[str, Any]  #: the batch's vars
    defaults: Mapping[str, Any]
    taken: set[str]  #: the keys of the batch's own tasks
    ids: dict[str, int]  #: item ids seen so far → their item's 1-based position


@dataclass
class _ItemTask:
    """Makes the task of item ``index``, reporting its problems into the context."""

    context: _Context
    index: int
    key: str | None = None  #: the item's id, once known to be valid

    def task(self, raw: Any) -> TaskSpec:
        if not isinstance(raw, Mapping):
            kind = "a list" if isinstance(raw, list) else f"the {type(raw).__name__} {raw!r:.40}"
            self.report("", f"must be a mapping of fields to values, not {kind}", schema=True)
            return TaskSpec(item={})
        self.key = self.checked_id(raw.get("id"))
        try:
            item = json_safe(raw)
        except ValueError as exc:
            self.report("", f"holds a value JSON cannot: {exc}", schema=True)
            item = {str(k): v for k, v in raw.items() if isinstance(v, (str, int, float))}
        c = self.context
        values = {k: v for k, v in item.items() if k in PARAM_NAMES}
        if c.templated:
            values.pop("prompt", None)
            if c.template is not None:
                values["prompt"] = self.prompt(c.template, {**c.defaults, **c.fields, **item})
        elif "prompt" not in item and not c.defaults.get("prompt"):
            self.report(
                "prompt", "is required: give the item a 'prompt', or the batch a 'template'"
            )
        return self.validated({**values, "key": self.key, "item": item})

    def checked_id(self, value: Any) -> str | None:
        if value is None:
            self.report("id", "is required: every item has an id, unique in the batch")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            self.report("id", f"must be a text or a whole number, not {value!r:.40}", schema=True)
            return None
        key = str(value).strip()
        if len(key) > 200:
            self.report("id", "is longer than 200 characters", schema=True)
            return None
        c = self.context
        if key in c.ids:  # named by position from here on: the id names the first one
            self.report("id", f"'{key}' is also the id of item number {c.ids[key]}")
        elif key in c.taken:
            self.report("id", f"'{key}' is also the key of a task; keys are unique in a batch")
        else:
            c.ids[key] = self.index + 1
            return key
        return None

    def prompt(self, template: Template, fields: Mapping[str, Any]) -> str | None:
        try:
            return render(template, fields, wildcards=True)
        except TemplateError as exc:
            self.report("prompt", exc.detail)
            return None

    def validated(self, values: dict[str, Any]) -> TaskSpec:
        c = self.context
        try:
            return TaskSpec.model_validate(values)
        except ValidationError as exc:
            prefix = ("items", self.index)
            c.found.extend(
                problems_from_validation(
                    exc,
                    c.source,
                    lambda loc: (self.place, ".".join(str(p) for p in loc)),
                    path_of=(lambda loc: json_path((*prefix, *loc))) if c.json_paths else None,
                )
            )
            return salvage(TaskSpec, values)

    @property
    def place(self) -> str:
        """Where the item is, for messages: "item 'slide-3'", "item 4", or the caller's name."""
        c = self.context
        return c.where(self.index) if c.where else item_place(self.key, self.index)

    def report(self, name: str, message: str, *, schema: bool = False) -> None:
        c = self.context
        path = None
        if schema and c.json_paths:
            path = json_path(("items", self.index, *([name] if name else [])))
        c.found.append(Problem(c.source, self.place, name, message, path))
