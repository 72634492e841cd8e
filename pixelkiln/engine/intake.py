"""From a validated spec to a batch ready to store: resolve tasks, ingest input images.

Input images named by path are read once, checked by content (type, size,
pixel count), and copied into the data folder by hash, so a batch never
depends on files that may move before it runs.

An img2img task that asks for no size and no ratio keeps its input's shape
(:func:`pixelkiln.params.size_like`), and a batch whose every task is an input
image keyed by its file name (an upload batch) names its outputs after those
names (:func:`name_outputs`).

Bad input is reported whole: the spec's own problems (a salvaged spec, see
``parse_batch(partial=True)``), every task's values and every input image are
all checked, and one SpecError lists what is wrong, wherever it was found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pixelkiln import params
from pixelkiln.db.batches import NewBatch
from pixelkiln.exceptions import NotFoundError, Problem, SpecError
from pixelkiln.naming import file_name, image_stem, unique_stem
from pixelkiln.problems import capped, merge_problems
from pixelkiln.resolve import ResolvedTask, check_tasks
from pixelkiln.specs import MAX_TASKS, BatchSpec, TaskPlaces, expand_items
from pixelkiln.storage import InputImage, Storage, StorageError, read_input_image
from pixelkiln.sweeps import recorded, seeded


def prepare_batch(
    spec: BatchSpec,
    *,
    storage: Storage,
    default_backend: str,
    known_backends: Sequence[str],
    max_attempts: int,
    source: str = "cli",
    source_name: str = "",
    base_dir: Path | None = None,
    where: Callable[[int], str] | None = None,
    owner_id: int | None = None,
    scheduled_at: float | None = None,
    resolve_asset: Callable[[str], str] | None = None,
    uploads_only: bool = False,
    max_tasks: int = MAX_TASKS,
) -> NewBatch:
    """Resolve every task and store its input images; SpecError lists every problem.

    ``resolve_asset("asset:ID")`` gives the stored path of an image uploaded
    earlier (the API passes one that only finds the caller's own uploads) or
    raises NotFoundError; without it, asset references are refused. With
    ``uploads_only`` (an API caller) input images must be such references: paths
    are refused without a look at the files they name. A spec whose wildcards and sweep
    make more than ``max_tasks`` tasks is refused before they are made.
    """
    spec = expand_items(spec, source_name)  # a spec made without parse_batch may hold items
    spec = seeded(spec)  # random draws without a seed: one drawn now, and recorded
    name_of = where or TaskPlaces.of(spec)
    tasks, problems = check_tasks(
        spec,
        default_backend=default_backend,
        known_backends=known_backends,
        base_dir=base_dir,
        source=source_name,
        where=name_of,
        uploads_only=uploads_only,
        max_tasks=max_tasks,
    )

    def origin(index: int) -> str:  # names a made task by the spec's task it was made from
        return name_of(tasks[index].origin)

    # With problems already found the batch is refused, so its images are only checked.
    reader = _Inputs(storage, source_name, origin, resolve_asset, store=not problems)
    inputs = [reader.of_task(i, task) for i, task in enumerate(tasks)]
    problems = list(merge_problems(problems, reader.problems))
    if problems:
        raise SpecError(capped(problems, source_name))
    tasks = [reader.shaped(task) for task in tasks]
    name_outputs(tasks, inputs)
    return NewBatch(
        name=spec.name,
        source=source,
        max_attempts=spec.max_attempts or max_attempts,
        tasks=tasks,
        inputs=inputs,
        assets=list(reader.assets.values()),
        priority=spec.priority,
        defaults=spec.defaults.model_dump(exclude_none=True),
        owner_id=owner_id,
        scheduled_at=scheduled_at,
        max_workers=spec.max_workers,
        delay=spec.delay,
        webhook=spec.webhook,
        # how the items' prompts were made, for whoever reads the batch later
        extra={k: v for k, v in (("template", spec.template), ("vars", spec.vars)) if v}
        | recorded(spec),
    )


class _Inputs:
    """Reads, checks and (with ``store``) stores the input images of a batch's tasks.

    Each path is read once however many tasks name it; each problem is kept in
    ``problems`` rather than raised, so that every bad image is reported.
    """

    def __init__(
        self,
        storage: Storage,
        source_name: str,
        where: Callable[[int], str] | None,
        resolve_asset: Callable[[str], str] | None,
        *,
        store: bool,
    ) -> None:
        self.storage = storage
        self.source_name = source_name
        self.name_of = where or (lambda i: f"task {i + 1}")
        self.resolve_asset = resolve_asset
        self.store = store
        self.stored: dict[str, str] = {}  # original path or reference → stored relative path
        self.assets: dict[str, dict[str, Any]] = {}  # sha256 → record
        self.problems: list[Problem] = []
        self.failed: set[str] = set()  # reported once, not for every task that names it
        self.shapes: dict[str, tuple[int, int]] = {}  # original → width, height

    def of_task(self, index: int, task: ResolvedTask) -> dict[str, Any]:
        """The task's {"init_image": path, "reference_images": [paths]}."""
        entry: dict[str, Any] = {}
        if task.init_image:
            entry["init_image"] = self.ingest(task.init_image, index, "init_image")
        if task.reference_images:
            entry["reference_images"] = [
                self.ingest(p, index, "reference_images") for p in task.reference_images
            ]
        return entry

    def ingest(self, original: str, index: int, field: str) -> str:
        if original in self.stored:
            return self.stored[original]
        if original in self.failed:
            return ""
        try:
            if original.startswith("asset:"):
                # already validated and stored when it was uploaded: only look it up
                path = self._uploaded(original)
            else:
                path = self._read(original)
        except (OSError, ValueError, NotFoundError) as exc:
            where = self.name_of(index)
            self.problems.append(Problem(self.source_name, where, field, f"{original}: {exc}"))
            self.failed.add(original)
            return ""
        self.stored[original] = path
        return path

    def _uploaded(self, ref: str) -> str:
        if self.resolve_asset is None:
            raise NotFoundError("uploaded images can only be used through the HTTP API")
        return self.resolve_asset(ref)

    def _read(self, original: str) -> str:
        image = read_input_image(Path(original).read_bytes())
        self.shapes[original] = image.width, image.height
        if not self.store:
            return ""
        path = self.storage.write_asset(image)
        name = file_name(Path(original).name, "image")
        self.assets.setdefault(image.sha256, asset_record(image, path, name))
        return path

    def shaped(self, task: ResolvedTask) -> ResolvedTask:
        """``task`` sized like its init image when it asked for no size (see params)."""
        shape = self._shape(task.init_image) if task.open_size and task.init_image else None
        if shape is None:
            return task
        width, height = params.size_like(*shape, task.open_size)
        return replace(task, width=width, height=height)

    def _shape(self, original: str) -> tuple[int, int] | None:
        """An ingested image's width and height; an upload's read from its file's header.

        None when the upload's file cannot be read now: the task keeps its size (the run
        reports the missing file).
        """
        if original not in self.shapes:
            try:
                with self.storage.open_image(self.stored[original]) as image:
                    self.shapes[original] = image.size
            except (OSError, ValueError, StorageError):
                return None
        return self.shapes[original]


def name_outputs(tasks: Sequence[ResolvedTask], inputs: Sequence[dict[str, Any]]) -> None:
    """Name each task's images after its key, as ``inputs[i]["name"]`` (the file stem).

    Only when every task has an init image, no ``filename_prefix``, and a key that is an
    image's file name (``photo_00.png``: an upload batch, see ``POST /batches/upload``):
    its images are then ``photo_00_0.png`` … instead of ``<key>_<position>_<index>.png``.
    The stems are made unique in the batch (any case), so two tasks never share a file;
    a batch that mixes kinds keeps positions everywhere, for the same reason.
    """
    stems = [image_stem(t.key) if t.init_image and not t.filename_prefix else None for t in tasks]
    if not stems or None in stems:
        return
    taken: set[str] = set()
    for stem, entry in zip(stems, inputs, strict=True):
        entry["name"] = unique_stem(stem or "", taken)


def asset_record(image: InputImage, path: str, name: str | None = None) -> dict[str, Any]:
    """The ``assets`` row of a stored input image (CLI inputs and API uploads alike);
    ``name`` is the file's own name, made safe (:func:`pixelkiln.naming.file_name`)."""
    return {
        "path": path,
        "name": name,
        "sha256": image.sha256,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "bytes": len(image.data),
    }
