"""Which characters text given to pixelkiln may hold: the one rule every face applies.

Refused everywhere: NUL (PostgreSQL stores no such text; SQLite's index reads it as the
end), the other C0 control characters but tab, line feed and carriage return, DEL and
the C1 controls (U+0080-U+009F). None of them is typed by a person; they come from
binary pasted as text, a terminal's escape sequences or an attack on a log or a header,
and both databases would store the same text differently or not at all. Tab, line feed
and carriage return are kept wherever they come (a prompt has lines; in a name they
are harmless: every page escapes them and no header is built from raw text).

Nothing is stripped silently: the caller learns where the character is and removes it
(``tasks[2].prompt contains the control character U+001B ...``).

>>> bad_text({"tasks": [{"prompt": "ok"}, {"prompt": "a\\x1bb"}]})
(('tasks', 1, 'prompt'), 'contains the control character U+001B, which is not allowed; remove it')
>>> describe("a\\x00b")
'contains a NUL character (\\\\0), which cannot be stored; remove it'
"""

from __future__ import annotations

import re
from typing import Any

from pixelkiln.problems import NUL_MESSAGE

#: the characters refused in text (see the module's docstring)
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: the same rule as an OpenAPI (ECMA 262) ``pattern`` for every string of the schema
PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
#: :data:`PATTERN` for a text that may not be empty: spaces alone are empty once stripped
NONBLANK = (
    r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f]"
    r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
)


def describe(text: str) -> str | None:
    """Why ``text`` is refused (the message names its first control character), or None."""
    found = CONTROL.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return NUL_MESSAGE
    return f"contains the control character U+{ord(char):04X}, which is not allowed; remove it"


def visible(text: str) -> str:
    """``text`` with its control characters written as escapes (``a\\x1bb``), to name
    it in a message without carrying the character on."""
    return CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def bad_text(data: Any) -> tuple[tuple[Any, ...], str] | None:
    """The first text or key in ``data`` (JSON-like: dicts, lists, text) that breaks the
    rule, in document order: where it is and why; None when all is well."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str):
            reason = describe(value)
            if reason is not None:
                return loc, reason
        elif isinstance(value, dict):
            for key in value:  # a bad key is named before what it holds
                reason = describe(key) if isinstance(key, str) else None
                if reason is not None:
                    return (*loc, key), reason
            stack.extend(((*loc, k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(value))))
    return None
