"""What users submit: batch specs, per-task overrides, and their validation.

A batch spec is ``{"name", "defaults": {...params}, "tasks": [{...params, "key"}]}``;
each task's parameters override the defaults. :func:`parse_batch` turns raw
data into a :class:`BatchSpec`, reporting *every* problem with where it is;
:func:`resolve_tasks` merges defaults into each task and fixes every value
(size, seed) so the database holds exactly what will run.

>>> spec = parse_batch({"name": "demo", "defaults": {"n": 2},
...                     "tasks": [{"prompt": "a red fox"}]}, source="demo.yaml")
>>> [t.n for t in resolve_tasks(spec, default_backend="placeholder")]
[2]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixelkiln import params
from pixelkiln.exceptions import Problem, SpecError

#: names of every parameter a task or the defaults may carry
PARAM_NAMES = (
    "backend model prompt negative_prompt aspect_ratio resolution width height steps "
    "cfg_scale sampler seed n denoise init_image reference_images filename_prefix"
).split()

#: most backends one task's chain may name
MAX_CHAIN = 10


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


class BatchSpec(BaseModel):
    """A whole batch as submitted."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    defaults: Params = Field(default_factory=Params)
    tasks: list[TaskSpec] = Field(min_length=1, max_length=1_000_000)
    priority: int = Field(0, ge=-100, le=100)  #: higher runs first
    max_attempts: int | None = Field(None, ge=1, le=100)  #: overrides [scheduler] max_attempts


@dataclass(frozen=True)
class ResolvedTask:
    """A task with every parameter decided: what is stored and what runs."""

    position: int  #: 1-based order in the batch
    key: str  #: caller's key, or the position as text
    backend: str
    prompt: str
    negative_prompt: str
    model: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str
    seed: int  #: never -1: random seeds are drawn here and recorded
    n: int
    denoise: float
    filename_prefix: str
    init_image: str | None = None  #: path as given, resolved against the batch file's folder
    reference_images: tuple[str, ...] = field(default_factory=tuple)
    #: the task's own backend chain (first = ``backend``); () = ``backend`` and its configured
    #: ``fallback`` chain. Stored as ``params["backends"]``; ``tasks.backend`` is the one
    #: running it now (see engine.routing)
    backends: tuple[str, ...] = ()

    def params_json(self) -> dict[str, Any]:
        """The parameters stored in ``tasks.params`` (prompt and inputs live in own columns)."""
        chain = {"backends": list(self.backends)} if self.backends else {}
        return chain | {
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "sampler": self.sampler,
            "seed": self.seed,
            "n": self.n,
            "denoise": self.denoise,
            "filename_prefix": self.filename_prefix,
        }


def problems_from_validation(
    exc: ValidationError, source: str, locate: Callable[[tuple[Any, ...]], tuple[str, str]]
) -> list[Problem]:
    """Turn pydantic errors into Problems; ``locate(loc)`` gives (where, field)."""
    problems = []
    for error in exc.errors():
        where, name = locate(tuple(error["loc"]))
        problems.append(Problem(source, where, name, _message(error, name)))
    return problems


def _message(error: Any, name: str) -> str:
    if error["type"] == "extra_forbidden":
        known = ", ".join([*PARAM_NAMES, "key"])
        return f"unknown key '{name}'; known keys are: {known}"
    if error["type"] == "missing":
        return "is required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _locate_in_batch(loc: tuple[Any, ...]) -> tuple[str, str]:
    if loc and loc[0] == "tasks" and len(loc) >= 2 and isinstance(loc[1], int):
        return f"task {loc[1] + 1}", ".".join(str(p) for p in loc[2:])
    if loc and loc[0] == "defaults":
        return "defaults", ".".join(str(p) for p in loc[1:])
    return "", ".".join(str(p) for p in loc)


def parse_batch(data: Any, source: str = "") -> BatchSpec:
    """Validate raw batch data (from JSON/YAML/TOML/an API body) into a BatchSpec."""
    if not isinstance(data, dict):
        raise SpecError([Problem(source, "", "", "a batch must be a mapping with 'tasks'")])
    try:
        return BatchSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_from_validation(exc, source, _locate_in_batch)) from exc


def resolve_tasks(
    spec: BatchSpec,
    *,
    default_backend: str,
    known_backends: Iterable[str] | None = None,
    base_dir: Path | None = None,
    source: str = "",
    rng: random.Random | None = None,
    where: Callable[[int], str] | None = None,
) -> list[ResolvedTask]:
    """Merge defaults into every task and decide every value; SpecError lists all problems.

    ``where(i)`` names task i (0-based) in messages: "task 3" by default, "row 4" for tables.
    """
    rng = rng or random.Random()
    known = set(known_backends) if known_backends is not None else None
    name_of = where or (lambda i: f"task {i + 1}")
    resolved: list[ResolvedTask] = []
    problems: list[Problem] = []
    defaults = spec.defaults.model_dump(exclude_none=True)
    for i, task in enumerate(spec.tasks):
        merged = {**defaults, **task.model_dump(exclude_none=True)}
        try:
            resolved.append(_resolve_one(i, merged, default_backend, known, base_dir, rng))
        except _TaskProblem as problem:
            problems.append(Problem(source, name_of(i), problem.field, problem.message))
    if problems:
        raise SpecError(problems)
    return resolved


class _TaskProblem(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message


def _resolve_one(
    index: int,
    merged: dict[str, Any],
    default_backend: str,
    known: set[str] | None,
    base_dir: Path | None,
    rng: random.Random,
) -> ResolvedTask:
    prompt = merged.get("prompt") or ""
    if not prompt:
        raise _TaskProblem("prompt", "is required (in the task or in defaults)")
    chosen = merged.get("backend") or default_backend
    chain = tuple(chosen) if isinstance(chosen, list) else ()
    backend = chain[0] if chain else chosen
    unknown = [b for b in chain or (backend,) if known is not None and b not in known]
    if unknown:
        raise _TaskProblem(
            "backend", f"unknown backend '{unknown[0]}'; configured: {sorted(known or ())}"
        )
    try:
        width, height = params.resolve_size(
            merged.get("aspect_ratio"),
            merged.get("resolution"),
            merged.get("width"),
            merged.get("height"),
        )
    except ValueError as exc:
        raise _TaskProblem("aspect_ratio", str(exc)) from exc
    seed = merged.get("seed", params.RANDOM_SEED)
    if seed == params.RANDOM_SEED:
        seed = rng.randrange(0, params.MAX_SEED)
    init_image = _input_path(merged.get("init_image"), base_dir, "init_image")
    references = tuple(
        _input_path(p, base_dir, "reference_images") or ""
        for p in merged.get("reference_images", ())
    )
    return ResolvedTask(
        position=index + 1,
        key=str(merged.get("key") or index + 1),
        backend=backend,
        prompt=prompt,
        negative_prompt=merged.get("negative_prompt") or "",
        model=merged.get("model") or "",
        width=width,
        height=height,
        steps=merged.get("steps", params.DEFAULT_STEPS),
        cfg_scale=float(merged.get("cfg_scale", params.DEFAULT_CFG_SCALE)),
        sampler=merged.get("sampler") or "",
        seed=seed,
        n=merged.get("n", 1),
        denoise=float(merged.get("denoise", params.DEFAULT_DENOISE)),
        filename_prefix=merged.get("filename_prefix") or "",
        init_image=init_image,
        reference_images=references,
        backends=chain,
    )


def _input_path(value: str | None, base_dir: Path | None, name: str) -> str | None:
    """An input image named by path must exist; assets (``asset:ID``) are checked on ingest."""
    if not value:
        return None
    if value.startswith("asset:"):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise _TaskProblem(name, f"file not found: {value}")
    return str(path.resolve())
