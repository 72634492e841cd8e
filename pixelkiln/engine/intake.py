"""From a validated spec to a batch ready to store: resolve tasks, ingest input images.

Input images named by path are read once, checked by content (type, size,
pixel count), and copied into the data folder by hash, so a batch never
depends on files that may move before it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pixelkiln.db.batches import NewBatch
from pixelkiln.exceptions import NotFoundError, Problem, SpecError
from pixelkiln.specs import BatchSpec, ResolvedTask, resolve_tasks
from pixelkiln.storage import InputImage, Storage, read_input_image


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
) -> NewBatch:
    """Resolve every task and store its input images; SpecError lists every problem.

    ``resolve_asset("asset:ID")`` gives the stored path of an image uploaded
    earlier (the API passes one that only finds the caller's own uploads) or
    raises NotFoundError; without it, asset references are refused.
    """
    tasks = resolve_tasks(
        spec,
        default_backend=default_backend,
        known_backends=known_backends,
        base_dir=base_dir,
        source=source_name,
        where=where,
    )
    inputs, assets = _ingest_inputs(tasks, storage, source_name, where, resolve_asset)
    return NewBatch(
        name=spec.name,
        source=source,
        max_attempts=spec.max_attempts or max_attempts,
        tasks=tasks,
        inputs=inputs,
        assets=assets,
        priority=spec.priority,
        defaults=spec.defaults.model_dump(exclude_none=True),
        owner_id=owner_id,
        scheduled_at=scheduled_at,
    )


def _ingest_inputs(
    tasks: Sequence[ResolvedTask],
    storage: Storage,
    source_name: str,
    where: Callable[[int], str] | None,
    resolve_asset: Callable[[str], str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per task {"init_image": path, "reference_images": [paths]}, and the asset records."""
    stored: dict[str, str] = {}  # original path → stored relative path
    assets: dict[str, dict[str, Any]] = {}  # sha256 → record
    problems: list[Problem] = []
    inputs: list[dict[str, Any]] = []
    name_of = where or (lambda i: f"task {i + 1}")

    def ingest(original: str, index: int, field: str) -> str:
        if original in stored:
            return stored[original]
        if original.startswith("asset:"):
            return uploaded(original, index, field)
        try:
            image = read_input_image(Path(original).read_bytes())
        except (OSError, ValueError) as exc:
            problems.append(Problem(source_name, name_of(index), field, f"{original}: {exc}"))
            return ""
        stored[original] = storage.write_asset(image)
        assets.setdefault(image.sha256, asset_record(image, stored[original]))
        return stored[original]

    def uploaded(ref: str, index: int, field: str) -> str:
        # already validated and stored when it was uploaded: only look it up
        try:
            if resolve_asset is None:
                raise NotFoundError("uploaded images can only be used through the HTTP API")
            stored[ref] = resolve_asset(ref)
        except NotFoundError as exc:
            problems.append(Problem(source_name, name_of(index), field, f"{ref}: {exc}"))
            return ""
        return stored[ref]

    for i, task in enumerate(tasks):
        entry: dict[str, Any] = {}
        if task.init_image:
            entry["init_image"] = ingest(task.init_image, i, "init_image")
        if task.reference_images:
            entry["reference_images"] = [
                ingest(p, i, "reference_images") for p in task.reference_images
            ]
        inputs.append(entry)
    if problems:
        raise SpecError(problems)
    return inputs, list(assets.values())


def asset_record(image: InputImage, path: str) -> dict[str, Any]:
    """The ``assets`` row of a stored input image (CLI inputs and API uploads alike)."""
    return {
        "path": path,
        "sha256": image.sha256,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "bytes": len(image.data),
    }
