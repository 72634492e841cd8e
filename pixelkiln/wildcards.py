"""Wildcards in prompts: ``{a|b|c}`` alternatives and ``__name__`` lists read from files.

The grammar of a prompt (and a negative prompt), once a template has made it. Only
what is plainly meant as a wildcard is one; every other character is text, so a
prompt written for a generator (NovelAI's ``{{emphasis}}``, a stray ``}``, a
Python-ish ``__init__``) reaches it as it was written:

- ``{a|b|c}``: one of the alternatives. A pair of braces is a group only when a
  ``|`` stands inside it outside the pairs within it; ``{x}``, ``{{word}}`` and a
  brace that pairs with none are text. Groups nest (``{a|{b|c}}``: three prompts);
  an alternative may carry a weight for random draws (``{3::a|b}``: ``a`` three
  times as likely as ``b``); every combination lists each alternative once,
  whatever its weight.
- ``__name__``: one entry of the file ``wildcards/name.txt`` beside the batch
  file (``__people/names__`` is ``wildcards/people/names.txt``), only for a batch
  file with a ``wildcards`` folder beside it; anywhere else it is text. One entry
  per line, blank lines and lines starting with ``#`` left out; an entry may
  itself hold groups and other ``__lists__``.
- ``\\|`` is a ``|`` that separates nothing and ``\\__`` two underscores that
  name no list (:func:`escape` writes any text so); any other backslash is text.

>>> library = Library(None)
>>> list(combinations(parse("a {red|{green|blue}} fox", library)))
['a red fox', 'a green fox', 'a blue fox']
>>> list(combinations(parse("{{best quality}}, {x}, __init__ }", library)))
['{{best quality}}, {x}, __init__ }']
>>> parse("{3::a|b}", library).count
2
>>> parse("{a|{b|c}}", library).count
3

Problems raise :class:`WildcardError` saying what and where (line and column
in the text, and the file and line for an entry of a list). Names are checked
before any file is opened (``__../../etc/passwd__`` is refused): only ``.txt``
files inside the ``wildcards`` folder are ever read, and only when a batch file
has that folder (an API submission has none).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MAX_DEPTH",
    "Choice",
    "Library",
    "Seq",
    "WildcardError",
    "combinations",
    "draw",
    "escape",
    "has_wildcards",
    "parse",
]

#: deepest nesting of groups and lists, all together (``{a|{b|__c__}}`` is 3 deep)
MAX_DEPTH = 40
#: largest wildcard file read, in bytes
MAX_FILE_BYTES = 1_000_000
#: the folder beside a batch file that ``__name__`` lists are read from
FOLDER = "wildcards"

#: what the parser looks at: the two escapes, braces, bars and "__"
_SPECIAL = re.compile(r"\\\||\\__|[{}|]|__")
#: what decides which braces pair into groups: an escaped bar, braces, bars
_PAIRING = re.compile(r"\\\||[{}|]")
#: characters a list file may not hold: control characters but tab (a NUL cannot even
#: be stored in PostgreSQL text)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WEIGHT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*::")
#: a list's name: words of letters, digits, "_" and "-", in folders joined by "/"
_LIST_NAME = re.compile(r"[^\W_][\w-]*(?:/[^\W_][\w-]*)*")
_NOT_A_NAME = re.compile(r"[\s{}|\\]")
#: a list file's line breaks (only these: a control character inside a line is refused)
_LINES = re.compile(r"\r\n|\r|\n")


class WildcardError(ValueError):
    """Text that is not valid wildcard syntax, or a list that cannot be read."""


@dataclass(frozen=True, slots=True)
class Choice:
    """``{a|b}`` or a list: one of ``options``."""

    options: tuple[Seq, ...]
    weights: tuple[float, ...]  #: for random draws, one per option
    count: int  #: how many texts it gives, every option's combinations together


@dataclass(frozen=True, slots=True)
class Seq:
    """Text and choices, one after the other."""

    parts: tuple[str | Choice, ...]
    count: int  #: how many texts it gives: the product of its choices' counts

    @classmethod
    def of(cls, parts: list[str | Choice]) -> Seq:
        count = 1
        for part in parts:
            if isinstance(part, Choice):
                count *= part.count
        return cls(tuple(parts), count)


def has_wildcards(text: str) -> bool:
    """Whether ``text`` may hold anything but literal text: a group needs a ``|``, a list
    or an escape a ``__`` or a ``|``."""
    return "|" in text or "__" in text


def escape(text: str) -> str:
    """``text`` written so that :func:`parse` gives it back as it is: each ``|`` and each
    ``__`` escaped with a backslash (braces need nothing: without a ``|`` they are text).

    >>> escape("{a|b} __init__")
    '{a\\\\|b} \\\\__init\\\\__'
    >>> list(combinations(parse(escape("{a|b} __init__"), Library(None))))
    ['{a|b} __init__']
    """
    return text.replace("|", "\\|").replace("__", "\\__")


def parse(text: str, library: Library) -> Seq:
    """The wildcards of ``text``; WildcardError says what is wrong and where."""
    if not has_wildcards(text):
        return Seq((text,), 1) if text else Seq((), 1)
    return library.parsed(text)


def combinations(seq: Seq) -> Iterator[str]:
    """Every text ``seq`` gives, in order (the last choice changes fastest)."""
    if seq.count == 1:
        yield _only(seq)
        return
    pieces = [(p,) if isinstance(p, str) else tuple(_choice_texts(p)) for p in seq.parts]
    for combo in itertools.product(*pieces):
        yield "".join(combo)


def _choice_texts(choice: Choice) -> Iterator[str]:
    for option in choice.options:
        yield from combinations(option)


def _only(seq: Seq) -> str:
    """The one text of a ``seq`` that has one."""
    return "".join(p if isinstance(p, str) else _only(p.options[0]) for p in seq.parts)


def draw(seq: Seq, rng: random.Random) -> str:
    """One text of ``seq`` drawn at random, each choice by its weights."""
    out: list[str] = []
    for part in seq.parts:
        if isinstance(part, str):
            out.append(part)
        elif len(part.options) == 1:
            out.append(draw(part.options[0], rng))
        else:
            out.append(draw(rng.choices(part.options, part.weights)[0], rng))
    return "".join(out)


@dataclass
class Library:
    """Where ``__name__`` lists come from: ``folder`` (a batch file's ``wildcards/``) or nowhere.

    Each list is read and parsed once; parsed texts are kept, so the same prompt
    in many tasks is parsed once.
    """

    folder: Path | None  #: None: ``__name__`` is text (an API submission, no folder)
    lists: dict[str, Choice] = field(default_factory=dict)
    texts: dict[str, Seq] = field(default_factory=dict)
    #: the lists being read, outermost first
    _reading: list[str] = field(default_factory=list, init=False)

    @classmethod
    def beside(cls, base_dir: Path | None) -> Library:
        """The lists of the batch file in ``base_dir``: its ``wildcards`` folder, when it
        has one (without, ``__name__`` in its prompts is text)."""
        folder = base_dir / FOLDER if base_dir is not None else None
        return cls(folder if folder is not None and folder.is_dir() else None)

    def parsed(self, text: str) -> Seq:
        """``text`` parsed (once: kept for the next task that has it)."""
        found = self.texts.get(text)
        if found is None:
            found = self.texts[text] = _Parser(text, self, 0).seq(in_group=False)
        return found

    def choice(self, name: str, depth: int) -> Choice:
        """The list ``name``: one option per entry of its file."""
        if name in self.lists:
            return self.lists[name]
        if name in self._reading:
            chain = " → ".join([*self._reading[self._reading.index(name) :], name])
            raise WildcardError(f"the list refers back to itself: {chain}")
        self._reading.append(name)
        try:
            choice = self._read(name, depth)
        finally:
            self._reading.pop()
        self.lists[name] = choice
        return choice

    def _read(self, name: str, depth: int) -> Choice:
        shown = f"{FOLDER}/{name}.txt"
        if self.folder is None:  # the parser asks only when there is a folder
            raise WildcardError(f"no {FOLDER} folder to read {shown} from")
        root = self.folder.resolve()
        path = (self.folder / f"{name}.txt").resolve()
        if not path.is_relative_to(root):  # a link that leads out of the folder
            raise WildcardError(f"{shown} is outside the wildcards folder")
        if not path.is_file():
            raise WildcardError(f"no file {shown}")
        data = path.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            raise WildcardError(f"{shown} is larger than {MAX_FILE_BYTES:,} bytes")
        try:
            lines = _LINES.split(data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise WildcardError(f"{shown} is not UTF-8 text: {exc.reason}") from exc
        options: list[Seq] = []
        for number, line in enumerate(lines, 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            bad = _CONTROL.search(line)
            if bad is not None:
                raise WildcardError(
                    f"{shown} line {number}: a control character (U+{ord(bad.group()):04X}) at "
                    f"column {bad.start() + 1}; a list holds text (tabs allowed)"
                )
            try:
                options.append(_Parser(entry, self, depth).seq(in_group=False))
            except WildcardError as exc:
                raise WildcardError(f"{shown} line {number}: {exc}") from None
        if not options:
            raise WildcardError(f"{shown} has no entries")
        return Choice(tuple(options), (1.0,) * len(options), sum(o.count for o in options))


def _place(text: str, index: int) -> str:
    """ "column 12", or "line 2, column 5" in a text of several lines (both 1-based)."""
    if "\n" not in text:
        return f"column {index + 1}"
    line = text.count("\n", 0, index) + 1
    return f"line {line}, column {index - text.rfind(chr(10), 0, index)}"


def _pairing(text: str) -> frozenset[int]:
    """Where the ``{``, ``|`` and ``}`` of ``text``'s groups are: a ``{`` pairs with the
    first ``}`` after it that no ``{`` between them pairs with, and a pair is a group when
    a ``|`` (not ``\\|``) stands inside it outside the pairs within it. Every other brace
    and bar is text. One pass, whatever the text (a hostile one of 100,000 ``{``)."""
    syntax: set[int] = set()
    unpaired: list[tuple[int, list[int]]] = []  # each "{" still open, with its own bars
    for found in _PAIRING.finditer(text):
        token, at = found.group(), found.start()
        if token == "{":
            unpaired.append((at, []))
        elif token == "|" and unpaired:
            unpaired[-1][1].append(at)
        elif token == "}" and unpaired:
            opened, bars = unpaired.pop()
            if bars:
                syntax.update((opened, at, *bars))
    return frozenset(syntax)


class _Parser:
    """Parses one text; ``depth`` is how deep in groups and lists the text itself sits."""

    def __init__(self, text: str, library: Library, depth: int) -> None:
        self.text = text
        self.library = library
        self.depth = depth
        self.i = 0
        self.syntax = _pairing(text)

    def error(self, index: int, head: str, tail: str = "") -> WildcardError:
        """``head`` at the line and column of ``index``, then ``tail``."""
        return WildcardError(f"{head} at {_place(self.text, index)}{tail}")

    def seq(self, *, in_group: bool) -> Seq:
        """Text and choices up to the end, or (``in_group``) to its group's next ``|`` or
        its ``}`` (the cursor left on it)."""
        text, syntax = self.text, self.syntax
        parts: list[str | Choice] = []
        literal: list[str] = []
        while True:
            found = _SPECIAL.search(text, self.i)
            end = found.start() if found else len(text)
            literal.append(text[self.i : end])
            self.i = end
            if found is None:
                break
            token = found.group()
            if token in "|}" and end in syntax:  # only a group's own: inner ones are parsed
                break
            if token == "{" and end in syntax:
                parts += ["".join(literal), self.group()]
                literal = []
                continue
            choice = self.listed() if token == "__" else None
            if choice is None:  # text: an escape gives what it escapes
                literal.append(token.removeprefix("\\"))
                self.i += len(token)
            else:
                parts += ["".join(literal), choice]
                literal = []
        parts.append("".join(literal))
        return Seq.of([p for p in parts if p != ""])

    def deeper(self, start: int) -> int:
        if self.depth + 1 > MAX_DEPTH:
            raise self.error(start, f"groups and lists nest deeper than {MAX_DEPTH} levels")
        return self.depth + 1

    def group(self) -> Choice:
        start = self.i
        depth = self.deeper(start)
        self.i += 1
        options: list[Seq] = []
        weights: list[float] = []
        outer, self.depth = self.depth, depth
        try:
            while True:
                weights.append(self.weight())
                options.append(self.seq(in_group=True))
                self.i += 1  # past its "|" or "}": the group is closed (see _pairing)
                if self.text[self.i - 1] == "}":
                    break
        finally:
            self.depth = outer
        return Choice(tuple(options), tuple(weights), sum(o.count for o in options))

    def weight(self) -> float:
        found = _WEIGHT.match(self.text, self.i)
        if found is None:
            return 1.0
        value = float(found.group(1))
        if value <= 0:
            raise self.error(self.i, "the weight", " must be more than 0")
        self.i = found.end()
        return value

    def listed(self) -> Choice | None:
        """The list named by ``__name__`` at the cursor, or None when ``__`` starts none
        (without a wildcards folder, it never does)."""
        if self.library.folder is None:
            return None
        start = self.i
        end = self.text.find("__", start + 2)
        name = self.text[start + 2 : end]
        if end < 0 or not name or _NOT_A_NAME.search(name):
            return None
        shown = f"'__{name}__'"
        if not _LIST_NAME.fullmatch(name):
            raise self.error(
                start,
                shown,
                ": a list's name is letters, digits, '_' and '-', in folders joined "
                "by '/' (e.g. '__styles__', '__people/names__')",
            )
        depth = self.deeper(start)
        try:
            choice = self.library.choice(name, depth)
        except WildcardError as exc:
            raise self.error(start, shown, f": {exc}") from None
        self.i = end + 2
        return choice
