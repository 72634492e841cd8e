"""Problems with what users submit: from pydantic's errors, merged, capped.

A :class:`~pixelkiln.exceptions.Problem` says where (file, "task 3" / "row 4",
field) and what; these helpers make them the same way for every input shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from pixelkiln.exceptions import InvalidValueError, Problem

#: most problems one SpecError lists; past this a last Problem says how many more
MAX_PROBLEMS = 200


def problems_from_validation(
    exc: ValidationError,
    source: str,
    locate: Callable[[tuple[Any, ...]], tuple[str, str]],
    *,
    known: Callable[[tuple[Any, ...]], Sequence[str]] = lambda loc: (),
    path_of: Callable[[tuple[Any, ...]], str] | None = None,
) -> list[Problem]:
    """Turn pydantic errors into Problems.

    ``locate(loc)`` gives (where, field); ``known(loc)`` the keys valid beside an
    unknown one; ``path_of(loc)``, when given, the value's path in the submitted data.
    """
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where, name = locate(loc)
        path = path_of(loc) if path_of is not None else None
        problems.append(Problem(source, where, name, _message(error, name, known(loc)), path))
    return problems


def _message(error: Any, name: str, known: Sequence[str]) -> str:
    if error["type"] == "extra_forbidden":
        listing = f"; known keys are: {', '.join(known)}" if known else ""
        return f"unknown key '{name}'{listing}"
    if error["type"] == "missing":
        return "is required"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys to values, not {_kind(error.get('input'))}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return "a list" if isinstance(value, list) else f"the {type(value).__name__} {value!r:.40}"


def json_path(loc: Sequence[Any]) -> str:
    """("tasks", 2, "seed") → "tasks[2].seed", as an API client addresses a value."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def merge_problems(earlier: Iterable[Problem], later: Iterable[Problem]) -> tuple[Problem, ...]:
    """``earlier``, then each of ``later`` about a value that ``earlier`` does not report.

    A value found invalid by the schema is left out of a salvaged spec, and a
    later check may then report it missing: one problem per value is enough.
    """
    merged = list(earlier)
    seen = {(p.where, p.field) for p in merged}
    # a task that is not a mapping at all: what is said of its values adds nothing
    whole = {p.where for p in merged if p.where and not p.field and p.path is not None}
    merged += [p for p in later if (p.where, p.field) not in seen and p.where not in whole]
    return tuple(merged)


def capped(problems: Sequence[Problem], source: str) -> list[Problem]:
    """At most MAX_PROBLEMS problems, then one saying how many more there were."""
    if len(problems) <= MAX_PROBLEMS:
        return list(problems)
    more = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], Problem(source, "", "", f"... and {more} more problems")]


#: why text with a NUL character is refused wherever it is given
NUL_MESSAGE = "contains a NUL character (\\0), which cannot be stored; remove it"


def nul_paths(data: Any, limit: int = MAX_PROBLEMS) -> list[tuple[Any, ...]]:
    """Where in ``data`` (JSON-like: dicts, lists, text) a text or a key holds a NUL.

    PostgreSQL refuses such text, so input is checked for it at the edge, where the
    value can still be named (``tasks[2].prompt``), rather than failing on the write.

    >>> nul_paths({"tasks": [{"prompt": "ok"}, {"prompt": "a\\x00b"}]})
    [('tasks', 1, 'prompt')]
    """
    if not _has_nul(data):  # the common case, found without building a path per value
        return []
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack and len(found) < limit:
        loc, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append(loc)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    found.append((*loc, key))
                stack.append(((*loc, key), item))
        elif isinstance(value, list):
            stack.extend(((*loc, i), item) for i, item in enumerate(value))
    return sorted(found, key=lambda loc: [str(p).zfill(12) for p in loc])


def invalid_value(exc: ValidationError, prefix: str = "") -> InvalidValueError:
    """A model's validation error as our InvalidValueError: the first bad value named
    (``prefix`` + its path, e.g. ``params.steps``), every one listed. The API answers it
    422 with the same body wherever it is raised (a form's fields, a preset's params).
    """
    found = problems_from_validation(exc, "", lambda loc: ("", ".".join(map(str, loc))))
    problems = [Problem("", "", f"{prefix}{p.field}", p.message) for p in found]
    first = problems[0]
    return InvalidValueError(
        f"{first.field}: {first.message}", field=first.field, problems=problems
    )


def _has_nul(data: Any) -> bool:
    """Whether any text or key in ``data`` holds a NUL (:func:`nul_paths` says where)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            if any(isinstance(key, str) and "\x00" in key for key in value):
                return True
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False
