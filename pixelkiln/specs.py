"""What users submit: batch specs, per-task overrides, and their validation.

A batch spec is ``{"name", "defaults": {...params}, "tasks": [{...params, "key"}]}``;
each task's parameters override the defaults. Beside (or instead of) ``tasks`` it
may hold ``items``, any JSON objects with an ``id``, whose prompts a ``template``
makes from their fields and the batch's ``vars`` (see :mod:`pixelkiln.prompts`):
:func:`parse_batch` turns each into a task after the batch's own. :func:`parse_batch` turns raw
data into a :class:`BatchSpec`, reporting *every* problem with where it is;
:mod:`pixelkiln.resolve` then decides every value of every task.

>>> spec = parse_batch({"name": "demo", "defaults": {"n": 2},
...                     "tasks": [{"prompt": "a red fox"}]}, source="demo.yaml")
>>> [t.n for t in spec.tasks], spec.defaults.n
([None], 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from pixelkiln import params
from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.problems import (
    MAX_PROBLEMS,
    NUL_MESSAGE,
    capped,
    json_path,
    merge_problems,
    nul_paths,
)
from pixelkiln.problems import problems_from_validation as problems_from_validation  # re-export
from pixelkiln.wire.text import CONTROL

#: names of every parameter a task or the defaults may carry
PARAM_NAMES = (
    "backend model prompt negative_prompt aspect_ratio resolution width height steps "
    "cfg_scale sampler seed n denoise init_image reference_images filename_prefix"
).split()
_P = TypeVar("_P", bound="Params")

#: most backends one task's chain may name
MAX_CHAIN = 10
#: most tasks of one batch that may generate at once (``max_workers``)
MAX_WORKERS = 10
#: longest ``delay`` between two task starts of a batch, in seconds
MAX_DELAY = 3600.0
#: most tasks (and items) one batch may hold
MAX_TASKS = 1_000_000


def item_place(key: str | None, index: int) -> str:
    """Where item ``index`` (0-based) is, for messages: by its id, or by position without one.

    >>> item_place("slide-3", 2), item_place(None, 2)
    ("item 'slide-3'", 'item 3')
    """
    return f"item '{key}'" if key else f"item {index + 1}"


def check_webhook_url(value: str) -> str:
    """An absolute http(s) URL with a host, as given; ValueError otherwise.

    >>> check_webhook_url("ftp://x")
    Traceback (most recent call last):
    ValueError: a webhook is an http:// or https:// URL
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook is an http:// or https:// URL")
    return value


def _not_a_switch(value: Any) -> Any:
    """A number field refuses ``true``/``false``: pydantic reads them as 1 and 0, so
    ``steps: true`` would quietly run one step."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true or false")
    return value


class Params(BaseModel):
    """Generation parameters; every one optional so defaults and overrides share a shape."""

    # `key: 17` or `filename_prefix: 2024` in YAML/JSON arrive as numbers
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)

    #: name of a configured backend, or a chain of them (first = preferred, the rest take over
    #: in order while it is down); "a, b" in a table cell is the chain ["a", "b"]
    backend: str | list[str] | None = None
    model: str | None = None  #: model / checkpoint; the backend's default when None
    prompt: str | None = Field(None, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    aspect_ratio: str | None = None  #: one of params.ASPECT_RATIOS
    resolution: str | None = None  #: 1k, 2k or 4k
    width: int | None = None  #: pixels, multiple of 8; wins over ratio × resolution
    height: int | None = None
    steps: int | None = Field(None, ge=1, le=500)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    sampler: str | None = Field(None, max_length=100)
    seed: int | None = Field(None, ge=params.RANDOM_SEED, le=params.MAX_SEED)  #: -1 = random
    n: int | None = Field(None, ge=1, le=params.MAX_IMAGES_PER_TASK)  #: images per task
    denoise: float | None = Field(None, ge=0, le=1)  #: img2img strength
    init_image: str | None = None  #: path (relative to the batch file) or asset reference
    reference_images: list[str] | None = Field(None, max_length=params.MAX_REFERENCE_IMAGES)
    filename_prefix: str | None = Field(None, max_length=100)

    @field_validator("backend")
    @classmethod
    def _backend_chain(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and "," in value:
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list):
            return value or None
        chain = [name.strip() for name in value]
        if not chain or not all(chain) or len(chain) > MAX_CHAIN:
            raise ValueError(f"a backend chain names 1 to {MAX_CHAIN} backends")
        if len(set(chain)) < len(chain):
            raise ValueError("a backend chain names each backend once")
        return chain

    _numbers = field_validator(
        "width", "height", "steps", "cfg_scale", "seed", "n", "denoise", mode="before"
    )(_not_a_switch)

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, value: str | None) -> str | None:
        return params.normalize_aspect_ratio(value) if value else None

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | None) -> str | None:
        return params.normalize_resolution(value) if value else None

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None) -> int | None:
        return params.check_side(value) if value is not None else None


class TaskSpec(Params):
    """One task: parameters that override the batch defaults, plus a key."""

    key: str | None = Field(None, max_length=200)  #: caller's id (row, scene, slide...)
    #: the item this task was made from (``items``): kept with the task, ``tasks.item``
    item: dict[str, Any] | None = None


class Expand(BaseModel):
    """How a batch's wildcards become tasks: every combination, or ``random`` draws."""

    model_config = ConfigDict(extra="forbid")

    #: draw this many prompts for each task (by the groups' weights) instead of making
    #: every combination
    random: int | None = Field(None, ge=1, le=MAX_TASKS)
    #: the draws' seed: the same spec and seed make the same tasks (drawn and recorded
    #: when not given)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    _numbers = field_validator("random", "seed", mode="before")(_not_a_switch)


class BatchSpec(BaseModel):
    """A whole batch as submitted."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    defaults: Params = Field(default_factory=Params)
    #: makes each item's prompt from its fields, ``vars`` and ``defaults``: "{style}. {title}"
    template: str | None = Field(None, max_length=20_000)
    #: fields every item's template may use (an item's own fields win)
    vars: dict[str, Any] | None = None
    #: JSON objects with an ``id`` (the task key); :func:`parse_batch` makes each a task,
    #: after ``tasks``, and leaves this None
    items: list[dict[str, Any]] | None = Field(None, max_length=MAX_TASKS)
    tasks: list[TaskSpec] = Field(default_factory=list, max_length=MAX_TASKS, validate_default=True)
    priority: int = Field(0, ge=-100, le=100)  #: higher runs first
    max_attempts: int | None = Field(None, ge=1, le=100)  #: overrides [scheduler] max_attempts
    #: at most this many of the batch's tasks generate at once (on top of the global and
    #: backend limits)
    max_workers: int | None = Field(None, ge=1, le=MAX_WORKERS)
    delay: float | None = Field(None, ge=0, le=MAX_DELAY)  #: seconds between two task starts
    #: http(s) URL POSTed the batch summary when the batch ends (see docs/webhooks.md)
    webhook: str | None = Field(None, max_length=2000)
    #: axes x, y, z, each one parameter (or prompt fragment ``$name``) and its values:
    #: every task is made once per combination (see :mod:`pixelkiln.sweeps`)
    sweep: dict[str, dict[str, list[Any]]] | None = None
    #: how the prompts' wildcards become tasks (default: every combination)
    expand: Expand | None = None

    _numbers = field_validator("priority", "max_attempts", "max_workers", "delay", mode="before")(
        _not_a_switch
    )

    @field_validator("tasks")
    @classmethod
    def _some_tasks(cls, value: list[TaskSpec], info: ValidationInfo) -> list[TaskSpec]:
        # "items" is validated before "tasks": absent from info.data when it was not valid
        if not value and "items" in info.data and not info.data["items"]:
            raise ValueError("a batch needs at least one task, in 'tasks' or 'items'")
        return value

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return check_webhook_url(value) if value else None

    # Problems of the input this spec was salvaged from (``parse_batch(partial=True)``):
    # kept with the spec so that the checks that need files, the database or the
    # configuration report them together with their own, in one SpecError.
    _problems: tuple[Problem, ...] = PrivateAttr(default=())

    @property
    def problems(self) -> tuple[Problem, ...]:
        """What was wrong with the input (empty for a valid spec); such a spec never runs.

        >>> parse_batch({"name": "b", "tasks": [{"n": 0}]}, partial=True).problems[0].where
        'task 1'
        """
        return self._problems

    def with_problems(self, problems: Iterable[Problem]) -> BatchSpec:
        """A copy that also carries ``problems`` (found by a caller's own checks)."""
        copy = self.model_copy()
        copy._problems = merge_problems(self._problems, problems)
        return copy


#: top-level keys of a batch spec
BATCH_KEYS = tuple(BatchSpec.model_fields)
#: keys a task may carry: every parameter plus its key (and ``item``, set from ``items``)
TASK_KEYS = (*PARAM_NAMES, "key")


def _locate_in_batch(loc: tuple[Any, ...]) -> tuple[str, str]:
    if loc and loc[0] == "tasks" and len(loc) >= 2 and isinstance(loc[1], int):
        return f"task {loc[1] + 1}", ".".join(str(p) for p in loc[2:])
    if loc and loc[0] == "items" and len(loc) >= 2 and isinstance(loc[1], int):
        return item_place(None, loc[1]), ".".join(str(p) for p in loc[2:])
    if loc and loc[0] == "defaults":
        return "defaults", ".".join(str(p) for p in loc[1:])
    return "", ".".join(str(p) for p in loc)


def _known_in_batch(loc: tuple[Any, ...]) -> Sequence[str]:
    """The keys valid where ``loc`` points: a task's, the defaults', or the top level's."""
    if loc and loc[0] in ("items", "vars"):  # any keys
        return ()
    if len(loc) == 3 and loc[0] == "tasks":
        return TASK_KEYS
    if len(loc) == 2 and loc[0] == "defaults":
        return PARAM_NAMES
    return BATCH_KEYS


def parse_batch(
    data: Any, source: str = "", *, partial: bool = False, control: bool = False
) -> BatchSpec:
    """Validate raw batch data (from JSON/YAML/TOML/an API body) into a BatchSpec.

    Raises SpecError listing every problem. With ``partial=True`` a spec whose
    values are invalid is returned all the same, those values left out and its
    problems in :attr:`BatchSpec.problems`, so that the checks made later (input
    files, uploads, backends) report in the same answer; nothing runs it, since
    :func:`resolve_tasks` and ``prepare_batch`` raise them.

    Data nested more than :data:`MAX_DEPTH` levels, holding more than :data:`MAX_VALUES`
    values (a YAML file's aliases repeat what they name), or containing itself (a YAML
    alias inside its own anchor) is refused before anything else is looked at; so is text
    with a NUL, and with ``control=True`` (batch files) any other control character
    but tab and line breaks (:func:`text_problems`).
    """
    if not isinstance(data, dict):
        message = "a batch must be a mapping with 'tasks'"
        raise SpecError([Problem(source, "", "", message, path="")])
    shape = shape_problem(data)
    if shape is not None:  # walked no further: every later check would walk all of it
        raise SpecError([Problem(source, "", "", shape, path="")])
    if control:
        found = text_problems(data, source)
        if found:
            raise SpecError(capped(found, source))
    nul = [
        Problem(source, *_locate_in_batch(loc), NUL_MESSAGE, path=json_path(loc))
        for loc in nul_paths(data)
    ]
    if nul:  # such text reaches no database: nothing else about the batch matters yet
        raise SpecError(capped(nul, source))
    try:
        spec = BatchSpec.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(
            exc, source, _locate_in_batch, known=_known_in_batch, path_of=json_path
        )
        spec = _salvage(data, exc).with_problems(problems)
    spec = expand_items(spec, source)
    if spec.problems and not partial:
        raise SpecError(capped(spec.problems, source))
    return spec


#: most levels of lists and mappings inside each other a batch may hold (items' fields)
MAX_DEPTH = 100
#: most values (list entries and mapping values) a batch may hold, aliases counted each
#: time they repeat what they name: far above 100,000 tasks of a dozen values each
MAX_VALUES = 5_000_000


def shape_problem(data: Any) -> str | None:
    """What makes ``data`` (JSON-like, as a parser built it) too deep, too large or endless
    to be walked; None when it is fine.

    Found in one pass over its distinct lists and mappings: a YAML file can name one list
    many times over (``*alias``), so the values are counted as each use repeats them
    ("billion laughs") without walking each repetition, and a list inside itself is found
    rather than followed for ever.

    >>> shape_problem({"tasks": [[[]]]}) is None
    True
    """
    shapes: dict[int, tuple[int, int]] = {}  # id → (depth, values), for each one walked
    open_ids: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, walked = stack.pop()
        inner = list(node.values()) if isinstance(node, dict) else node
        if walked:
            below = [shapes[id(c)] for c in inner if isinstance(c, dict | list)]
            depth = 1 + max((d for d, _ in below), default=0)
            shapes[id(node)] = (depth, len(inner) + sum(v for _, v in below))
            open_ids.discard(id(node))
            continue
        if id(node) in shapes:
            continue
        if id(node) in open_ids:
            return (
                "holds a list or mapping inside itself (a YAML alias used within its own "
                "anchor); a batch file cannot be endless"
            )
        open_ids.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in inner if isinstance(c, dict | list))
    depth, values = shapes[id(data)]
    if depth > MAX_DEPTH:
        return (
            f"is nested {depth} levels deep (lists and mappings inside each other); "
            f"at most {MAX_DEPTH}"
        )
    if values > MAX_VALUES:
        return (
            f"holds {values:,} values once its YAML aliases (*name) repeat what they name; "
            f"at most {MAX_VALUES:,}: write the batch out, or split it"
        )
    return None


def control_message(text: str) -> str | None:
    """Why ``text`` cannot be a batch's value ("contains a control character (U+0007) at
    character 5; remove it"); None when it holds none (a NUL is NUL_MESSAGE's). The
    characters are the API's (:data:`pixelkiln.wire.text.CONTROL`): one rule for both."""
    if "\x00" in text:
        return NUL_MESSAGE
    found = CONTROL.search(text)
    if found is None:
        return None
    return (
        f"contains a control character (U+{ord(found.group()):04X}) at character "
        f"{found.start() + 1}, which a batch file may not hold; remove it"
    )


def text_problems(data: Any, source: str) -> list[Problem]:
    """A problem for each text (or key) of ``data`` holding a control character, named by
    where it is ("task 3", field ``prompt``); at most MAX_PROBLEMS of them."""
    found: list[Problem] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack and len(found) < MAX_PROBLEMS:
        loc, value = stack.pop()
        if isinstance(value, str):
            message = control_message(value)
            if message is not None:
                found.append(Problem(source, *_locate_in_batch(loc), message, path=json_path(loc)))
        elif isinstance(value, dict):
            for key, item in value.items():
                message = control_message(key) if isinstance(key, str) else None
                if message is not None:
                    where, name = _locate_in_batch((*loc, key))
                    found.append(Problem(source, where, name, f"the key {message}"))
                stack.append(((*loc, key), item))
        elif isinstance(value, list):
            stack.extend(((*loc, i), item) for i, item in enumerate(value))
    return sorted(found, key=lambda p: [str(x).zfill(12) for x in (p.path or "")])


def expand_items(spec: BatchSpec, source: str = "") -> BatchSpec:
    """``spec`` with each of its ``items`` made a task (after its own), and their problems.

    :func:`parse_batch` does this; a spec without items comes back as it is.
    """
    if spec.items is None:
        return spec
    # prompts makes tasks of this module's models: imported here, where it is first needed
    from pixelkiln import prompts

    taken = [task.key or str(i + 1) for i, task in enumerate(spec.tasks)]
    made, problems = prompts.expand_items(
        spec.items,
        spec.template,
        spec.vars,
        spec.defaults.model_dump(exclude_none=True),
        source,
        taken=taken,
    )
    expanded = spec.model_copy(update={"tasks": [*spec.tasks, *made], "items": None})
    return expanded.with_problems(problems)


#: top-level keys a salvaged spec keeps when their value is valid
_SALVAGED = "name priority max_attempts max_workers delay webhook template sweep expand".split()


def _salvage(data: dict[Any, Any], exc: ValidationError) -> BatchSpec:
    """The valid part of ``data``: every task and item kept (so that positions hold), bad values
    left out."""
    bad_top = {e["loc"][0] for e in exc.errors() if e["loc"]}
    top = {k: v for k, v in data.items() if k in _SALVAGED and k not in bad_top}
    raw_tasks = data.get("tasks")
    tasks = raw_tasks if isinstance(raw_tasks, list) else []
    raw_items = data.get("items")
    items = raw_items if isinstance(raw_items, list) and len(raw_items) <= MAX_TASKS else None
    # every invalid top-level value was left out, so this validates
    base = BatchSpec.model_validate({"name": "unnamed", **top, "tasks": [{}]})
    return base.model_copy(
        update={
            "defaults": salvage(Params, data.get("defaults")),
            "vars": data.get("vars") if "vars" not in bad_top else None,
            # a template that is not text still means the items' prompts come from it: ""
            # makes none, and says nothing more (see check_tasks)
            "template": "" if "template" in bad_top else base.template,
            # the items as given: expand_items reports (and leaves out) those not mappings
            "items": items,
            "tasks": [salvage(TaskSpec, task) for task in tasks],
        }
    )


def salvage(model: type[_P], value: Any) -> _P:
    """``value`` as ``model``, leaving out each key that is invalid (or unknown).

    >>> salvage(Params, {"n": 0, "steps": 20}).steps
    20
    """
    values = dict(value) if isinstance(value, dict) else {}
    while True:
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
            if not bad & set(values):  # nothing left to leave out
                return model()
            values = {k: v for k, v in values.items() if k not in bad}


@dataclass(frozen=True)
class TaskPlaces:
    """Names task i of a spec in messages: "task 3", or "item 'slide-3'" for one made from an item.

    >>> TaskPlaces.of(parse_batch({"name": "b", "items": [{"id": "a", "prompt": "x"}]}))(0)
    "item 'a'"
    """

    tasks: Sequence[TaskSpec] = field(repr=False, compare=False)

    @classmethod
    def of(cls, spec: BatchSpec) -> TaskPlaces:
        """The names of ``spec``'s tasks (its items already made tasks)."""
        return cls(tuple(spec.tasks))

    @cached_property
    def _first_item(self) -> int:
        return next((i for i, t in enumerate(self.tasks) if t.item is not None), 0)

    def __call__(self, index: int) -> str:
        task = self.tasks[index]
        if task.item is None:
            return f"task {index + 1}"
        return item_place(task.key, index - self._first_item)
