"""Contact sheets of a sweep batch, for every face: which sheets there are, and one as PNG.

A sweep batch (``batches.extra["sweep"]``) gets one sheet per z value. When several tasks
share one cell (a batch of two prompts swept over the same axes), the k-th task of each
cell, in position order, goes on the k-th sheet of that z value: its ``group``. Each cell
shows its task's newest (not superseded) first image, or a placeholder saying why there
is none: pending, running, failed, cancelled, missing. See docs/sheets.md.

A sheet is drawn anew each time it is asked for (the batch page asks as results arrive),
so it decodes as little as it can: only the images of its own cells, and of an image
larger than a cell the smallest cached thumbnail (the API's, made as pages show the
images) at least as large as a cell, when there is one.

>>> png = await sheet_png(ctx, LOCAL, batch_id, z="m1")                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import Connection

from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import images_of_tasks
from pixelkiln.db.tasks import list_tasks
from pixelkiln.exceptions import InvalidStateError, InvalidValueError
from pixelkiln.models import Batch, ImageRecord, Task, TaskStatus
from pixelkiln.service.context import Caller, ServiceContext
from pixelkiln.sheets import (
    DEFAULT_CELL,
    Cell,
    SheetPlan,
    Sweep,
    SweepShapeError,
    render_sheet,
    value_text,
)
from pixelkiln.storage import Storage


@dataclass(frozen=True)
class SheetRef:
    """One sheet of a sweep batch."""

    z: str | None  #: the z value as ``?z=`` takes it; None when the sweep has no z axis
    label: str  #: "model=m1"; "" without a z axis
    group: int  #: 1-based: the k-th task of each cell (several tasks per cell)
    groups: int  #: how many groups this z value has
    task: str = ""  #: with several groups, which task this one is: its key before the axes


@dataclass(frozen=True)
class _Swept:
    """A sweep batch read in one snapshot: its tasks placed in cells."""

    batch: Batch
    sweep: Sweep
    #: (z, group) → {(row, column): task}; group is 0-based here
    cells: dict[tuple[int, int], dict[tuple[int, int], Task]]

    def groups(self, z: int) -> int:
        return max([g + 1 for zz, g in self.cells if zz == z], default=1)

    def base_key(self, z: int, group: int) -> str:
        """The key its tasks share before the axes' part (``fox#2`` of ``fox#2|cfg=7``):
        which prompt a group of a sweep of several tasks is; 0-based ``group``."""
        placed = self.cells.get((z, group), {})
        first = min(placed.values(), key=lambda task: task.position, default=None)
        return "" if first is None else first.key.split("|", 1)[0]


def _read_swept(conn: Connection, batch_id: int, scope: int | None) -> _Swept | None:
    """The batch's tasks placed in cells; None when the batch is not a sweep."""
    batch = get_batch(conn, batch_id, scope)
    sweep = Sweep.of(batch.extra)
    if sweep is None:
        return None
    try:
        sweep.check()
    except SweepShapeError as exc:
        raise InvalidStateError(f"batch {batch_id}: {exc}") from None
    cells: dict[tuple[int, int], dict[tuple[int, int], Task]] = defaultdict(dict)
    seen: dict[tuple[int, int, int], int] = defaultdict(int)
    for task in list_tasks(conn, batch_id):  # position order: the k-th of a cell is group k
        place = sweep.cell_of(task.axes)
        if place is None:
            continue
        group = seen[place]
        seen[place] += 1
        cells[place[0], group][place[1], place[2]] = task
    return _Swept(batch, sweep, dict(cells))


async def list_sheets(ctx: ServiceContext, caller: Caller, batch_id: int) -> list[SheetRef]:
    """The sheets of a batch, z value by z value; none when it is not a sweep.

    NotFoundError when the caller may not see it; InvalidStateError for a sweep too large
    to draw."""
    swept = await ctx.read(_read_swept, batch_id, caller.scope)
    if swept is None:
        return []
    z = swept.sweep.z
    refs: list[SheetRef] = []
    for i, value in enumerate(z.values):
        groups = swept.groups(i)
        text = value_text(value) if z.name else None
        refs.extend(
            SheetRef(
                text, z.label(value), g, groups, swept.base_key(i, g - 1) if groups > 1 else ""
            )
            for g in range(1, groups + 1)
        )
    return refs


async def sheet_png(
    ctx: ServiceContext,
    caller: Caller,
    batch_id: int,
    z: str | None = None,
    group: int = 1,
    cell: int = DEFAULT_CELL,
) -> bytes:
    """One contact sheet as PNG: the one of z value ``z`` (default: the first) and ``group``.

    NotFoundError for a batch the caller may not see; InvalidStateError when it is not a
    sweep (or too large a one); InvalidValueError naming the values there are for a ``z``
    or ``group`` that is not one of them.
    """
    swept = await ctx.read(_read_swept, batch_id, caller.scope)
    if swept is None:
        raise InvalidStateError(
            f"batch {batch_id} is not a sweep: contact sheets are drawn for batches with a "
            "'sweep' (x, y and z axes)"
        )
    z_index = _z_index(swept.sweep, z)
    groups = swept.groups(z_index)
    if not 1 <= group <= groups:
        raise InvalidValueError(
            f"group must be 1…{groups}: this sheet has {groups} group(s)", field="group"
        )
    placed = swept.cells.get((z_index, group - 1), {})
    images = await ctx.read(images_of_tasks, [t.id for t in placed.values()])
    plan = _plan(swept, z_index, group, groups, placed, images)
    smaller = _thumbnails(images.values(), cell)
    return await ctx.run(render_sheet, plan, _opener(ctx.storage, smaller), cell)


def _z_index(sweep: Sweep, z: str | None) -> int:
    axis = sweep.z
    if z is None:
        return 0
    if not axis.name:
        raise InvalidValueError("this sweep has no z axis: leave z out", field="z")
    texts = [value_text(v) for v in axis.values]
    if z not in texts:
        raise InvalidValueError(
            f"z: '{z}' is not a value of the sweep's z axis ({axis.name}); "
            f"its values: {', '.join(texts)}",
            field="z",
        )
    return texts.index(z)


def _plan(
    swept: _Swept,
    z: int,
    group: int,
    groups: int,
    placed: dict[tuple[int, int], Task],
    images: dict[int, list[ImageRecord]],
) -> SheetPlan:
    sweep = swept.sweep
    title = [swept.batch.name, sweep.z.label(sweep.z.values[z])]
    if groups > 1:
        base = swept.base_key(z, group - 1)
        title.append(f"set {group} of {groups}" + (f": {base}" if base else ""))
    cells = tuple(
        tuple(_cell(placed.get((r, c)), images) for c in range(len(sweep.x.values)))
        for r in range(len(sweep.y.values))
    )
    return SheetPlan(
        title=" · ".join(t for t in title if t),
        columns=tuple(sweep.x.label(v) for v in sweep.x.values),
        rows=tuple(sweep.y.label(v) for v in sweep.y.values),
        cells=cells,
        shape=_shape(placed.values()),
    )


#: what a placeholder says for a task without an image yet, by its status
NOTES = {
    TaskStatus.PENDING: "pending",
    TaskStatus.RUNNING: "running",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.SUCCEEDED: "missing",  # its images were deleted
}


def _cell(task: Task | None, images: dict[int, list[ImageRecord]]) -> Cell:
    if task is None:
        return Cell(note="missing")
    own = images.get(task.id) or []
    if not own:
        return Cell(note=NOTES[task.status])
    newest = max(own, key=lambda i: (i.run, -i.index))  # the newest run's first image
    return Cell(image=newest.path)


def _shape(tasks: Iterable[Task]) -> tuple[int, int]:
    """The largest width and height asked for: what the cells are shaped after."""
    sizes = [(int(t.params.get("width") or 0), int(t.params.get("height") or 0)) for t in tasks]
    width = max((w for w, _ in sizes), default=0)
    height = max((h for _, h in sizes), default=0)
    return (width, height) if width and height else (1, 1)


#: the sizes the API caches thumbnails at (``api.media.THUMB_SIZES``), longest side
THUMB_SIZES = (128, 256, 512)


def _thumbnails(found: Iterable[list[ImageRecord]], cell: int) -> dict[str, tuple[str, ...]]:
    """For each image larger than a cell, the cached thumbnails that would fill one
    (``thumbs/<batch>/<image>_<size>.webp``, as ``api.media.thumbnail`` names them),
    smallest first; a smaller image is drawn from its own file."""
    sizes = [size for size in THUMB_SIZES if size >= cell]
    return {
        image.path: tuple(f"thumbs/{image.batch_id}/{image.id}_{size}.webp" for size in sizes)
        for records in found
        for image in records
        if sizes and max(image.width, image.height) > cell
    }


def _opener(
    storage: Storage, thumbnails: dict[str, tuple[str, ...]]
) -> Callable[[str], Image.Image]:
    def open_image(path: str) -> Image.Image:
        try:
            for thumbnail in thumbnails.get(path, ()):
                with contextlib.suppress(FileNotFoundError):
                    return storage.open_image(thumbnail)
            return storage.open_image(path)
        except ValueError as exc:  # a path outside the data folder: never opened
            raise OSError(str(exc)) from exc

    return open_image
