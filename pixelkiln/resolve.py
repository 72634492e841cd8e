"""From a validated spec to what is stored and runs: every task's values decided.

:func:`resolve_tasks` merges the defaults into each task and fixes every value
(size, seed, backend chain), so that the database holds exactly what will run;
:func:`check_tasks` does the same without raising, reporting every problem of
every task (input files included) at once.

>>> from pixelkiln.specs import parse_batch
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

from pixelkiln import params
from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.problems import capped, merge_problems
from pixelkiln.specs import MAX_TASKS, BatchSpec, Params, TaskPlaces, expand_items
from pixelkiln.sweeps import Expansion


@dataclass(frozen=True, slots=True)  # slots: a sweep holds 100,000 of them
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
    #: the item this task was made from (``items`` + ``template``), stored as ``tasks.item``
    item: dict[str, Any] | None = None
    #: no width, height or aspect ratio was given: the resolution ("1k" when none) at which
    #: an init image's shape picks the size (``engine.intake``); None: the size is decided
    open_size: str | None = None
    #: the seed was drawn here (asked -1 or none): a regenerate draws a new one
    seed_drawn: bool = False
    #: a sweep task's value per axis, ``{"x": {"cfg_scale": 7}}`` (``tasks.axes``)
    axes: dict[str, Any] | None = None
    #: the index (0-based) of the spec's task it was made from (wildcards and sweeps make
    #: several of one), for naming it in messages
    origin: int = 0

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
            **({"seed_drawn": True} if self.seed_drawn else {}),
            "n": self.n,
            "denoise": self.denoise,
            "filename_prefix": self.filename_prefix,
        }


def resolve_tasks(
    spec: BatchSpec,
    *,
    default_backend: str,
    known_backends: Iterable[str] | None = None,
    base_dir: Path | None = None,
    source: str = "",
    rng: random.Random | None = None,
    where: Callable[[int], str] | None = None,
    max_tasks: int = MAX_TASKS,
) -> list[ResolvedTask]:
    """Merge defaults into every task and decide every value; SpecError lists all problems.

    ``where(i)`` names task i (0-based) in messages: "task 3" by default, "row 4" for tables.
    The problems of a salvaged spec (:attr:`BatchSpec.problems`) come first.
    """
    tasks, problems = check_tasks(
        spec,
        default_backend=default_backend,
        known_backends=known_backends,
        base_dir=base_dir,
        source=source,
        rng=rng,
        where=where,
        max_tasks=max_tasks,
    )
    if problems:
        raise SpecError(capped(problems, source))
    return tasks


def check_tasks(
    spec: BatchSpec,
    *,
    default_backend: str,
    known_backends: Iterable[str] | None = None,
    base_dir: Path | None = None,
    source: str = "",
    rng: random.Random | None = None,
    where: Callable[[int], str] | None = None,
    uploads_only: bool = False,
    max_tasks: int = MAX_TASKS,
) -> tuple[list[ResolvedTask], list[Problem]]:
    """:func:`resolve_tasks` without raising: every task, and every problem of every task.

    A value with a problem is replaced by its default in the task returned, so
    that the task's other values (its input images) can still be checked. An
    input image is checked where it is written (in "defaults" once, not in each
    task). With ``uploads_only`` (the API) an input image must be an uploaded
    ``asset:ID``: a path is refused without looking at this machine's files.

    Each task becomes one per text of its prompts' wildcards and per combination of the
    sweep's axes (:mod:`pixelkiln.sweeps`; lists read from ``base_dir/wildcards``); past
    ``max_tasks`` tasks none is made and a problem says so.
    """
    spec = expand_items(spec, source)
    rng = rng or random.Random()
    known = set(known_backends) if known_backends is not None else None
    name_of = where or TaskPlaces.of(spec)
    resolved: list[ResolvedTask] = []
    found: list[Problem] = []
    said: set[tuple[str, str, str]] = set()  # the tasks made of one task: each problem once
    expansion = Expansion(
        spec,
        base_dir=None if uploads_only else base_dir,
        source=source,
        where=name_of,
        known_backends=known,
        max_tasks=max_tasks,
    )

    def reporter(place: str, unsaid: str = "") -> Callable[[str, str], None]:
        def report(field: str, message: str) -> None:
            if field != unsaid and (place, field, message) not in said:
                said.add((place, field, message))
                found.append(Problem(source, place, field, message))

        return report

    # with a template that is not valid no item has a prompt: the template's problem says why
    bad_template = any(p.field == "template" and not p.where for p in spec.problems)
    images = _InputPaths(base_dir, uploads_only)
    shared = images.of(spec.defaults, reporter("defaults"))
    defaults = spec.defaults.model_dump(exclude_none=True)
    for i, task in enumerate(spec.tasks):
        merged = {**defaults, **task.model_dump(exclude_none=True)}
        report = reporter(name_of(i), "prompt" if bad_template and task.item is not None else "")
        inputs = {**shared, **images.of(task, report)}
        for values in expansion.variants(i, merged):
            values["origin"] = i
            resolved.append(
                _resolve_one(len(resolved), values, default_backend, known, rng, report, inputs)
            )
    problems = merge_problems(spec.problems, [*expansion.problems, *found])
    return resolved, list(problems)


def _resolve_one(
    index: int,
    merged: dict[str, Any],
    default_backend: str,
    known: set[str] | None,
    rng: random.Random,
    report: Callable[[str, str], None],
    inputs: dict[str, Any],
) -> ResolvedTask:
    prompt = merged.get("prompt") or ""
    if not prompt:
        report("prompt", "is required (in the task or in defaults)")
    chosen = merged.get("backend") or default_backend
    chain = tuple(chosen) if isinstance(chosen, list) else ()
    backend = chain[0] if chain else chosen
    unknown = [b for b in chain or (backend,) if known is not None and b not in known]
    if unknown:
        names = ", ".join(f"'{b}'" for b in unknown)
        plural = "s" if len(unknown) > 1 else ""
        report(
            "backend",
            f"unknown backend{plural} {names}; configured: {', '.join(sorted(known or ()))}",
        )
    try:
        width, height = params.resolve_size(
            merged.get("aspect_ratio"),
            merged.get("resolution"),
            merged.get("width"),
            merged.get("height"),
        )
    except ValueError as exc:
        report("aspect_ratio", str(exc))
        width, height = params.resolve_size(None, None, None, None)
    seed = merged.get("seed", params.RANDOM_SEED)
    drawn = seed == params.RANDOM_SEED
    if drawn:
        seed = rng.randrange(0, params.MAX_SEED)
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
        seed_drawn=drawn,
        n=merged.get("n", 1),
        denoise=float(merged.get("denoise", params.DEFAULT_DENOISE)),
        filename_prefix=merged.get("filename_prefix") or "",
        init_image=inputs.get("init_image"),
        reference_images=inputs.get("reference_images", ()),
        backends=chain,
        open_size=_open_size(merged),
        item=merged.get("item"),
        axes=merged.get("axes"),
        origin=merged.get("origin", index),
    )


def _open_size(merged: dict[str, Any]) -> str | None:
    get = merged.get  # once per task of 100,000: no generator
    if get("aspect_ratio") is not None or get("width") is not None or get("height") is not None:
        return None
    return str(merged.get("resolution") or "1k")


@dataclass(frozen=True)
class _InputPaths:
    """Where the input images named in a task (or the defaults) are."""

    base_dir: Path | None  #: relative paths resolve against it (the batch file's folder)
    uploads_only: bool  #: only ``asset:ID`` references may be named

    def of(self, given: Params, report: Callable[[str, str], None]) -> dict[str, Any]:
        """{"init_image": path or None, "reference_images": (paths...)}, for those set."""
        found: dict[str, Any] = {}
        if given.init_image is not None:
            found["init_image"] = self.path(given.init_image, "init_image", report)
        if given.reference_images is not None:
            paths = (self.path(p, "reference_images", report) for p in given.reference_images)
            found["reference_images"] = tuple(p for p in paths if p)
        return found

    def path(self, value: str, name: str, report: Callable[[str, str], None]) -> str | None:
        """An uploaded ``asset:ID`` as it is (checked on ingest), or an existing file's path.

        A missing file (or any path, with ``uploads_only``) is reported and gives None.
        """
        if not value:
            return None
        if value.startswith("asset:"):
            return value
        if self.uploads_only:
            report(
                name,
                f"'{value}' is not an uploaded image; upload it (POST /api/v1/assets) and "
                "use the 'asset:<id>' it returns",
            )
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        if not path.is_file():
            report(name, f"file not found: {value}")
            return None
        return str(path.resolve())
