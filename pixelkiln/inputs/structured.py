"""JSON, YAML and TOML batch files: ``{"name", "defaults": {...}, "tasks": [...]}``.

The parsers' own errors (with line and column when they give them) become one
:class:`~pixelkiln.exceptions.SpecError`; the data then goes through
:func:`pixelkiln.specs.parse_batch`, which reports every invalid value as "task N".
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pixelkiln.inputs._files import file_error, read_text
from pixelkiln.inputs.sizes import check_listed, listed_in, listed_in_json, may_list_more
from pixelkiln.specs import BatchSpec, parse_batch


def load_structured(
    path: Path,
    source: str,
    default_name: str,
    *,
    partial: bool = False,
    max_tasks: int | None = None,
) -> BatchSpec:
    """Parse a ``.json``, ``.yaml``/``.yml`` or ``.toml`` batch file into a BatchSpec.

    ``default_name`` names the batch when the file has no ``name`` of its own;
    ``partial`` is :func:`pixelkiln.specs.parse_batch`'s. A file listing more than
    ``max_tasks`` tasks is refused before they are validated (a JSON file's counted as
    it is read, without building them: :mod:`pixelkiln.inputs.sizes`).
    """
    suffix = path.suffix.lower()
    parse = _PARSERS[suffix]
    text = read_text(path, source)
    if suffix == ".json" and max_tasks is not None and may_list_more(len(text), max_tasks):
        check_listed(listed_in_json(text) or 0, max_tasks, source)
    try:
        data = parse(text, source)
    except RecursionError as exc:  # the parsers recurse once per level of nesting
        raise file_error(source, "is nested too deeply to be a batch file") from exc
    del text
    check_listed(listed_in(data), max_tasks, source)
    if not isinstance(data, dict):
        raise file_error(
            source,
            f"the top level must be a mapping with 'name', 'defaults' and 'tasks' "
            f"(found {_kind(data)})",
        )
    if not data.get("name"):
        data = {**data, "name": default_name}
    return parse_batch(data, source, partial=partial, control=True)


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise file_error(source, f"is not valid JSON ({where}): {exc.msg}") from exc


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: builds no objects
    except yaml.YAMLError as exc:
        raise file_error(source, f"is not valid YAML{_yaml_position(exc)}") from exc


def _yaml_position(exc: yaml.YAMLError) -> str:
    """The " (line L, column C): problem" part of a message; YAML marks are 0-based."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    hint = ""
    if "mapping values are not allowed" in problem:
        # The usual cause: an unquoted prompt containing ": ".
        hint = "; put quotes around values that contain ': '"
    return f"{where}: {problem}{hint}"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``16:9`` as text.

    YAML 1.1 (PyYAML) reads ``aspect_ratio: 16:9`` as the base-60 integer 969,
    and ``1:1`` as 61; YAML 1.2 dropped base-60 numbers, and so do we.
    """


_INT_TAG = "tag:yaml.org,2002:int"
_INT_WITHOUT_BASE_60 = re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
)
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, _INT_WITHOUT_BASE_60 if tag == _INT_TAG else rx) for tag, rx in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _parse_toml(text: str, source: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already ends with "(at line L, column C)".
        raise file_error(source, f"is not valid TOML: {exc}") from exc


def _kind(data: Any) -> str:
    if data is None:
        return "nothing"
    if isinstance(data, list):
        return "a list"
    return f"a single value of type {type(data).__name__}"


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    ".json": _parse_json,
    ".yaml": _parse_yaml,
    ".yml": _parse_yaml,
    ".toml": _parse_toml,
}

#: extensions this module reads
EXTENSIONS = tuple(_PARSERS)
