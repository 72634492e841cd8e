"""A batch's tasks multiplied by their wildcards and its sweep axes, counted before they are made.

Each task of a spec becomes one task per text its prompt and negative prompt
give (:mod:`pixelkiln.wildcards`: every combination, or ``expand: {random: N}``
draws), times one per combination of the ``sweep`` axes::

    sweep:
      x: {cfg_scale: [5, 7, 9]}
      y: {sampler: [Euler a, DPM++ 2M]}
      z: {$style: [ink, oil]}        # a prompt fragment: replaces "$style" in the prompts

Each axis is one parameter (:data:`SWEEP_PARAMS`) or prompt fragment and its
values, checked like the parameter's own (a cfg of 500 is located at
``sweep.x.cfg_scale[2]``). A made task records its axis values
(``tasks.axes = {"x": {"cfg_scale": 7}, ...}``) and is keyed by them:
``scene1|cfg_scale=7|sampler=Euler a`` (``scene1#3|...`` for its prompt's third
combination), hashed past 200 characters.

>>> from pixelkiln.specs import parse_batch
>>> spec = parse_batch({"name": "s", "tasks": [{"prompt": "a {red|blue} fox", "key": "fox"}],
...                     "sweep": {"x": {"cfg_scale": [5, 7, 9]}}})
>>> count_tasks(spec)
6
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pixelkiln import params
from pixelkiln.exceptions import Problem
from pixelkiln.specs import MAX_TASKS, BatchSpec, Expand, Params
from pixelkiln.wildcards import (
    Library,
    Seq,
    WildcardError,
    combinations,
    draw,
    has_wildcards,
    parse,
)

__all__ = [
    "AXES",
    "PLAN_PARAMS",
    "SWEEP_PARAMS",
    "Axis",
    "Expansion",
    "Sample",
    "count_tasks",
    "may_expand",
    "recorded",
    "seeded",
]

#: the axes of a sweep, in the order their values join a task's key
AXES = ("x", "y", "z")
#: the parameters an axis may sweep (``size`` is "WIDTHxHEIGHT"), besides ``$fragments``
SWEEP_PARAMS = (
    "backend model aspect_ratio resolution width height size steps cfg_scale sampler seed n denoise"
).split()
#: the parameters that change what a plan counts of a task (where it runs, its size, its
#: steps, its images): only axes over these make a plan's :class:`Sample` larger
PLAN_PARAMS = frozenset("backend aspect_ratio resolution width height size steps n".split())
#: most values one axis may hold
MAX_AXIS_VALUES = 1000
#: longest task key; a longer one keeps its start and a hash of the whole
MAX_KEY = 200

_FRAGMENT = re.compile(r"\$[^\W\d][\w-]*")
#: characters a fragment's value may replace (part of a "$name"); any other stays in a prompt
_REPLACEABLE = re.compile(r"[\w$-]")
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")


@dataclass(frozen=True)
class Axis:
    """One axis of a sweep: a parameter (or ``$fragment``) and its values, checked."""

    axis: str  #: x, y or z
    name: str  #: cfg_scale, size, $style...
    values: tuple[Any, ...]  #: in the spec's order, each as recorded in ``tasks.axes``


@dataclass(frozen=True, slots=True)
class _Step:
    """One combination of the axes' values."""

    overrides: dict[str, Any]  #: parameters it sets
    axes: dict[str, dict[str, Any]]  #: {"x": {"cfg_scale": 7}} as recorded
    suffix: str  #: "|cfg_scale=7|sampler=Euler a"
    fragments: tuple[tuple[re.Pattern[str], str], ...]  #: "$style" → its value


def seeded(spec: BatchSpec) -> BatchSpec:
    """``spec`` with a seed for its random draws, drawn now when it gave none (recorded)."""
    if spec.expand is None or spec.expand.random is None or spec.expand.seed is not None:
        return spec
    expand = spec.expand.model_copy(update={"seed": secrets.randbelow(2**31)})
    return spec.model_copy(update={"expand": expand})


def recorded(spec: BatchSpec) -> dict[str, Any]:
    """What ``batches.extra`` keeps of a batch's sweep and draws (``sweep``, ``expand``);
    ``spec`` is :func:`seeded` and its sweep valid."""
    found: dict[str, Any] = {}
    axes = _Axes("", None, []).checked(spec.sweep or {})
    if axes:
        found["sweep"] = {a.axis: {a.name: list(a.values)} for a in axes}
    if spec.expand is not None and spec.expand.random is not None:
        found["expand"] = {"random": spec.expand.random, "seed": spec.expand.seed}
    return found


def may_expand(spec: BatchSpec) -> bool:
    """Whether a task of ``spec`` may make more than one: a sweep, random draws, or
    wildcards in a prompt. Cheaper than an :class:`Expansion` of a long plain list."""
    if spec.sweep or spec.expand is not None:
        return True
    given = [spec.defaults, *spec.tasks]
    return any(
        has_wildcards(text)
        for params in given
        for text in (params.prompt, params.negative_prompt)
        if text
    )


def count_tasks(spec: BatchSpec, base_dir: Path | None = None) -> int:
    """How many tasks ``spec`` makes, without making them (bad prompts count once).

    ``base_dir`` is the batch file's folder, for its ``wildcards/`` lists.
    """
    return Expansion(spec, base_dir=base_dir).total


@dataclass(frozen=True)
class Sample:
    """A spec standing for a larger one in a plan: it makes one task per task of the spec
    and combination of the axes over :data:`PLAN_PARAMS`, and each of its tasks stands for
    ``weights[origin]`` tasks of the spec (``origin``: the spec's task it was made from)."""

    spec: BatchSpec
    weights: tuple[int, ...]  #: per task of the spec: the tasks each sample task stands for


@dataclass
class _Base:
    """What one task of the spec expands from."""

    prompt: Seq | None  #: None: its prompt is not valid (reported)
    negative: Seq | None
    count: int  #: tasks it makes before the axes multiply them


class Expansion:
    """The tasks a spec makes: counted and checked on creation, made by :meth:`variants`.

    ``problems`` lists what is wrong (wildcards, axes, too many tasks); ``total``
    is how many tasks the spec makes. Over ``max_tasks`` no task is made.
    """

    def __init__(
        self,
        spec: BatchSpec,
        *,
        base_dir: Path | None = None,
        source: str = "",
        where: Callable[[int], str] = lambda i: f"task {i + 1}",
        known_backends: Iterable[str] | None = None,
        max_tasks: int = MAX_TASKS,
    ) -> None:
        self.spec = spec
        self.expand = spec.expand or Expand()
        self.library = Library.beside(base_dir)
        self.problems: list[Problem] = []
        self.axes = _Axes(source, known_backends, self.problems).checked(spec.sweep or {})
        self.bases = [self._base(i, where, source) for i in range(len(spec.tasks))]
        combos = 1
        for axis in self.axes:
            combos *= len(axis.values)
        self.total = sum(base.count for base in self.bases) * combos
        self._check_fragments(source)
        if self.total > max_tasks:
            self.problems.append(Problem(source, "", "", _too_many(self.total, max_tasks)))

    @functools.cached_property
    def steps(self) -> list[_Step]:
        """Every combination of the axes' values, made when tasks are (a count needs none);
        none past ``max_tasks`` or with problems."""
        return [] if self.problems else _steps(self.axes)

    @property
    def expands(self) -> bool:
        """Whether any task becomes more than one (else tasks are made as they are)."""
        return self.total != len(self.bases) or bool(self.axes)

    def sample(self) -> Sample | None:
        """A smaller spec that plans the same as this one (see :class:`Sample`); None when it
        would not make fewer tasks, or when only the whole expansion can say what is wrong
        and where (a problem; a prompt that may come out empty).

        Its tasks keep every parameter but their prompts (a placeholder: what a prompt
        says changes no plan, and whether one can be empty is checked here) and the axes
        over other parameters (cfg, seed, sampler, model, denoise, fragments), which
        change no task's backend, size, steps or images.
        """
        if self.problems or self.spec.problems or not self.expands:
            return None
        fragments = any(axis.name.startswith("$") for axis in self.axes)
        if any(_least(b.prompt, fragments) == 0 for b in self.bases if b.prompt is not None):
            return None  # "prompt is required" is said of the tasks made, by the whole check
        kept = [axis for axis in self.axes if axis.name in PLAN_PARAMS]
        if len(kept) == len(self.axes) and all(base.count == 1 for base in self.bases):
            return None  # every axis matters: the sample would be the batch
        folded = 1
        for axis in self.axes:
            folded *= 1 if axis in kept else len(axis.values)
        sweep = self.spec.sweep or {}
        tasks = [
            t.model_copy(update={"prompt": "sample", "negative_prompt": None})
            for t in self.spec.tasks
        ]
        defaults = self.spec.defaults.model_copy(update={"prompt": None, "negative_prompt": None})
        spec = self.spec.model_copy(
            update={
                "tasks": tasks,
                "defaults": defaults,
                "sweep": {a.axis: sweep[a.axis] for a in kept} or None,
                "expand": None,
            }
        )
        return Sample(spec, tuple(base.count * folded for base in self.bases))

    def _base(self, index: int, where: Callable[[int], str], source: str) -> _Base:
        task, defaults = self.spec.tasks[index], self.spec.defaults
        seqs: list[Seq | None] = []
        for name in ("prompt", "negative_prompt"):
            text = getattr(task, name)
            text = getattr(defaults, name) if text is None else text
            try:
                seqs.append(parse(text or "", self.library))
            except WildcardError as exc:
                self.problems.append(Problem(source, where(index), name, str(exc)))
                seqs.append(None)
        prompt, negative = seqs
        count = self.expand.random
        if count is None:
            count = (prompt.count if prompt else 1) * (negative.count if negative else 1)
        return _Base(prompt, negative, count)

    def _check_fragments(self, source: str) -> None:
        for axis in self.axes:
            if axis.name.startswith("$") and not any(
                axis.name in (getattr(t, n) or getattr(self.spec.defaults, n) or "")
                for t in self.spec.tasks
                for n in ("prompt", "negative_prompt")
            ):
                self.problems.append(
                    _at(source, axis, None, f"no prompt has '{axis.name}' in it to replace")
                )

    def variants(self, index: int, merged: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The values of each task made from task ``index`` (``merged`` with its defaults):
        its prompts, key and axes set, the axes' parameters over its own."""
        base = self.bases[index]
        key = str(merged.get("key") or index + 1)
        if base.prompt is None or base.negative is None or not self.steps:
            yield {**merged, "key": key}
            return
        tagged = base.count > 1 or self.expand.random is not None
        for number, (prompt, negative) in enumerate(self._texts(index, base), 1):
            stem = f"{key}#{number}" if tagged else key
            for step in self.steps:
                values = {**merged, **step.overrides, "key": _short(stem + step.suffix)}
                values["prompt"] = _fill(prompt, step.fragments)
                values["negative_prompt"] = _fill(negative, step.fragments)
                if step.axes:
                    values["axes"] = step.axes
                yield values

    def _texts(self, index: int, base: _Base) -> Iterator[tuple[str, str]]:
        assert base.prompt is not None and base.negative is not None
        if self.expand.random is None:
            for prompt in combinations(base.prompt):
                for negative in combinations(base.negative):
                    yield prompt, negative
            return
        # one generator per task: a task's draws do not depend on the other tasks
        rng = random.Random(f"{self.expand.seed}:{index}")
        for _ in range(self.expand.random):
            yield draw(base.prompt, rng), draw(base.negative, rng)


def _least(seq: Seq, fragments: bool) -> int:
    """The fewest characters every text of ``seq`` holds (with ``fragments``, of those no
    fragment's value can replace): more than 0, and no text of it is empty."""
    least = 0
    for part in seq.parts:
        if isinstance(part, str):
            least += len(_REPLACEABLE.sub("", part)) if fragments else len(part)
        else:
            least += min(_least(option, fragments) for option in part.options)
    return least


def _too_many(total: int, cap: int) -> str:
    return (
        f"the batch makes {total:,} tasks, more than the {cap:,} one batch may hold; "
        "sweep fewer values, draw fewer prompts ('expand: {random: N}'), or split it"
    )


def _fill(text: str, fragments: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, value in fragments:
        text = pattern.sub(value.replace("\\", "\\\\"), text)  # the value as it is
    return text


def _short(key: str) -> str:
    """``key``, or past :data:`MAX_KEY` characters its start and a hash of the whole."""
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: MAX_KEY - 17]}~{digest}"


def _steps(axes: Sequence[Axis]) -> list[_Step]:
    """Every combination of the axes' values: z slowest, x fastest."""
    if not axes:
        return [_Step({}, {}, "", ())]
    ordered = sorted(axes, key=lambda a: AXES.index(a.axis), reverse=True)
    steps = []
    for combo in itertools.product(*(a.values for a in ordered)):
        chosen = sorted(zip(ordered, combo, strict=True), key=lambda pair: pair[0].axis)
        overrides: dict[str, Any] = {}
        fragments = []
        for axis, value in chosen:
            if axis.name.startswith("$"):
                fragments.append((re.compile(re.escape(axis.name) + r"(?![\w-])"), str(value)))
            elif axis.name == "size":
                width, height = _size(value)
                overrides |= {"width": width, "height": height}
            else:
                overrides[axis.name] = value
        steps.append(
            _Step(
                overrides,
                {axis.axis: {axis.name: value} for axis, value in chosen},
                "".join(f"|{axis.name}={_text(value)}" for axis, value in chosen),
                tuple(fragments),
            )
        )
    return steps


def _text(value: Any) -> str:
    """A value as a key shows it: 7 for 7.0, a backend chain joined by commas."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _size(value: Any) -> tuple[int, int]:
    """ "832x1216" → (832, 1216); ValueError says what is wrong."""
    found = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError("a size is WIDTHxHEIGHT in pixels, e.g. '832x1216'")
    return params.check_side(int(found.group(1))), params.check_side(int(found.group(2)))


def _at(source: str, axis: Axis | str, index: int | None, message: str) -> Problem:
    path = f"sweep.{axis.axis}.{axis.name}" if isinstance(axis, Axis) else f"sweep.{axis}"
    if index is not None:
        path += f"[{index}]"
    return Problem(source, "", path, message, path)


@dataclass
class _Axes:
    """Checks a spec's ``sweep`` into :class:`Axis` values, reporting into ``problems``."""

    source: str
    known_backends: Iterable[str] | None
    problems: list[Problem]
    seen: dict[str, str] = field(default_factory=dict)  #: name → the axis sweeping it

    def checked(self, sweep: dict[str, dict[str, list[Any]]]) -> list[Axis]:
        axes = [axis for name, entry in sweep.items() if (axis := self.one(name, entry))]
        names = {a.name for a in axes}
        if "size" in names and names & {"width", "height"}:
            self.problems.append(
                Problem(self.source, "", "sweep", "sweep 'size', or 'width' and 'height'; not both")
            )
        return axes

    def one(self, name: str, entry: dict[str, list[Any]]) -> Axis | None:
        if name not in AXES:
            self.problems.append(_at(self.source, name, None, "an axis is x, y or z"))
            return None
        if len(entry) != 1:
            message = "an axis sweeps one parameter, e.g. 'x: {cfg_scale: [5, 7, 9]}'"
            self.problems.append(_at(self.source, name, None, message))
            return None
        param, given = next(iter(entry.items()))
        axis = Axis(name, param, ())
        problem = self.named(axis) or self.sized(given)
        if problem:
            self.problems.append(_at(self.source, axis, None, problem))
            return None
        self.seen[param] = name
        values = [self.value(axis, j, v) for j, v in enumerate(given)]
        if None in values:
            return None
        first: dict[str, int] = {}  # a value as a key shows it → where it is first
        for j, value in enumerate(values):
            earlier = first.setdefault(_text(value), j)
            if earlier != j:
                message = f"is the value at [{earlier}] again; an axis lists each value once"
                self.problems.append(_at(self.source, axis, j, message))
        return Axis(name, param, tuple(values)) if len(first) == len(values) else None

    def named(self, axis: Axis) -> str:
        if axis.name in self.seen:
            return f"is swept on axis {self.seen[axis.name]} already"
        if axis.name not in SWEEP_PARAMS and not _FRAGMENT.fullmatch(axis.name):
            return (
                f"cannot be swept; an axis sweeps one of {', '.join(SWEEP_PARAMS)}, "
                "or a prompt fragment '$name' written in the prompts"
            )
        return ""

    def sized(self, given: list[Any]) -> str:
        if not given:
            return "has no values"
        if len(given) > MAX_AXIS_VALUES:
            return f"has {len(given):,} values; an axis holds at most {MAX_AXIS_VALUES:,}"
        return ""

    def value(self, axis: Axis, index: int, given: Any) -> Any:
        """``given`` as recorded and used, or None (reported) when it is not valid."""
        try:
            value = self.normal(axis.name, given)
        except ValueError as exc:
            self.problems.append(_at(self.source, axis, index, str(exc)))
            return None
        # the value as written when the parameter's own form is equal to it (7 for 7.0)
        return given if given == value and type(given) is not bool else value

    def normal(self, name: str, given: Any) -> Any:
        if name.startswith("$"):
            if not isinstance(given, (str, int, float)) or isinstance(given, bool):
                raise ValueError("a prompt fragment is text")
            return str(given)
        if name == "size":
            width, height = _size(given)
            return f"{width}x{height}"
        try:
            value = getattr(Params.model_validate({name: given}), name)
        except ValidationError as exc:
            raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        if value is None:
            raise ValueError("is empty")
        if name == "backend":
            self.known(value)
        return value

    def known(self, value: Any) -> None:
        if self.known_backends is None or not isinstance(value, (str, list)):
            return
        known = set(self.known_backends)
        unknown = [b for b in ([value] if isinstance(value, str) else value) if b not in known]
        if unknown:
            listed = ", ".join(sorted(known))
            raise ValueError(f"unknown backend '{unknown[0]}'; configured: {listed}")
