"""Retention: what ``[retention]`` says is old, listed (:func:`plan`) and deleted (:func:`apply`).

The rules, each off at 0 days:

- ``events_days``: the events of a finished batch that ended that long ago (its tasks and
  images stay; a batch whose webhook is still being delivered keeps them);
- ``images_days``: a finished batch that ended that long ago, whole: its rows (tasks,
  images, events, webhook deliveries), its image files and thumbnails; then a run
  (a nightly project run) whose batches are all gone, with its report;
- ``uploads_days``: an upload (``assets`` row) made that long ago that no task of any batch
  names as an input; its file goes with the last row that holds it (uploads of several
  owners share a file by content), and not while the file was stored again lately (the
  same picture uploaded again: see ``Storage.write_asset``).

A batch that is queued, running or paused is never touched: the plan lists finished
batches only, and the first deleting step checks again, in its own transaction, that its
batch is the finished batch the plan saw, and marks it as being deleted; from then on it
is gone to every face and no retry re-queues it, and a pass stopped half way is finished
by the next one (see :mod:`pixelkiln.db.retention`). A batch's image files live under its
own folders (``service.control.batch_folders``): no other batch uses them (an image made
an upload is copied, ``asset_from_image``). Files are removed after the transaction that
deleted their rows commits: a file without a row is harmless, a row without its file is not.

``kiln gc`` and the server's sweeper (:mod:`pixelkiln.engine.retention`) call these.

>>> found = await plan(kiln.service, LOCAL)                      # doctest: +SKIP
>>> done = await apply(kiln.service, LOCAL, found)
>>> done.batches, done.bytes
(3, 1234567)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pixelkiln.config import RetentionSettings
from pixelkiln.db import retention as db
from pixelkiln.db.retention import OldBatch, OldUpload, Step
from pixelkiln.service.context import Caller, ServiceContext, require_admin
from pixelkiln.service.control import batch_folders, remove_batch_files
from pixelkiln.storage import Storage, StorageError, StoredInfo

log = logging.getLogger("pixelkiln.retention")

DAY = 86_400.0


@dataclass(frozen=True)
class Plan:
    """What the rules remove at ``now``; nothing is deleted yet."""

    now: float  #: the moment the rules were applied to (epoch seconds)
    rules: RetentionSettings
    batches: tuple[OldBatch, ...] = ()  #: deleted whole (``bytes``: their files on disk)
    batch_files: tuple[tuple[int, int], ...] = ()  #: per batch above: (files, bytes) on disk
    events: tuple[OldBatch, ...] = ()  #: only their events go
    uploads: tuple[OldUpload, ...] = ()
    upload_files: tuple[str, ...] = ()  #: uploads' files that no row will hold any more
    upload_bytes: int = 0  #: the size of those files
    runs: tuple[int, ...] = ()  #: runs left without batches
    task_floor: int = 0  #: the steps check again the tasks after this id

    @property
    def off(self) -> bool:
        """Every rule is off (0 days)."""
        r = self.rules
        return not (r.events_days or r.images_days or r.uploads_days)

    @property
    def empty(self) -> bool:
        return not (self.batches or self.events or self.uploads or self.runs)

    @property
    def files(self) -> int:
        return sum(f for f, _ in self.batch_files) + len(self.upload_files)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.batch_files) + self.upload_bytes


@dataclass
class Outcome:
    """What a pass removed."""

    batches: int = 0
    tasks: int = 0
    images: int = 0
    events: int = 0  #: events deleted, of whole batches and of the events rule alike
    event_batches: int = 0  #: batches that lost their events only
    uploads: int = 0
    runs: int = 0
    files: int = 0  #: files removed from the data folder
    bytes: int = 0  #: their size
    kept: list[tuple[int, str]] = field(default_factory=list)  #: batches left alone: (id, why)
    seconds: float = 0.0
    stopped: bool = False  #: cut short (the server stopping); the next pass goes on

    def add(self, step: Step) -> None:
        self.events += step.events
        self.tasks += step.tasks
        self.images += step.images

    def summary(self) -> str:
        """One line: what went, for the log."""
        return (
            f"{self.batches} batch(es) ({self.tasks} task(s), {self.images} image(s)), "
            f"{self.events} event(s) ({self.event_batches} batch(es) kept their images), "
            f"{self.uploads} upload(s), {self.runs} run(s), "
            f"{self.files} file(s), {self.bytes:,} bytes freed"
        )


# -- what the rules name ---------------------------------------------------------------------


async def plan(ctx: ServiceContext, caller: Caller, now: float | None = None) -> Plan:
    """What the ``[retention]`` rules remove at ``now`` (default: now); deletes nothing."""
    require_admin(caller, "apply retention")
    rules = ctx.settings.retention
    now = time.time() if now is None else now
    return await ctx.run(_plan, ctx, Plan(now, rules))


def _plan(ctx: ServiceContext, found: Plan) -> Plan:
    """The plan's reads and its look at the files (in a worker thread).

    Batches a pass began deleting and left half way come first, even with every rule off:
    they are gone to every reader already, and their rows and files wait for this.
    """
    rules, now, read = found.rules, found.now, ctx.db.read
    going = read(db.half_deleted)
    if rules.images_days:
        cutoff = now - rules.images_days * DAY
        going += read(db.ended_before, cutoff)
        found = replace(found, runs=tuple(read(db.runs_left_empty, cutoff, {b.id for b in going})))
    found = replace(
        found,
        batches=tuple(going),
        batch_files=tuple(_batch_folders_size(ctx.storage, b.id) for b in going),
    )
    if found.off:
        return found
    found = replace(found, task_floor=max(0, read(db.last_task_id) - db.RECHECK_TASKS))
    if rules.events_days:
        leaving = {b.id for b in found.batches}
        events = read(db.with_old_events, now - rules.events_days * DAY, leaving)
        found = replace(found, events=tuple(events))
    if rules.uploads_days:
        found = _plan_uploads(ctx, found, now - rules.uploads_days * DAY)
    return found


def _plan_uploads(ctx: ServiceContext, found: Plan, cutoff: float) -> Plan:
    storage, read = ctx.storage, ctx.db.read
    old = read(db.uploaded_before, cutoff)
    used = read(db.inputs_in_use, {u.path for u in old})
    going = [u for u in old if u.path not in used and not _stored_since(storage, u.path, cutoff)]
    leaving = {u.id for u in going}
    files = sorted(
        {u.path for u in going} - read(db.shared_paths, {u.path for u in going}, leaving)
    )
    size = sum(_file_size(storage, p) for p in files)
    return replace(found, uploads=tuple(going), upload_files=tuple(files), upload_bytes=size)


def _stored_since(storage: Storage, path: str, moment: float) -> bool:
    """The file was (re)stored after ``moment``: someone uploaded these bytes again."""
    try:
        return storage.stat(path).mtime >= moment
    except (OSError, ValueError, StorageError):
        return False


def _file_size(storage: Storage, path: str) -> int:
    try:
        return storage.stat(path).size
    except (OSError, ValueError, StorageError):
        return 0


def _batch_folders_size(storage: Storage, batch_id: int) -> tuple[int, int]:
    """(files, bytes) under a batch's image and thumbnail folders."""
    files = size = 0
    for folder in batch_folders(batch_id):
        for info in storage.list_files(folder):
            files += 1
            size += info.size
    return files, size


# -- deleting --------------------------------------------------------------------------------


async def apply(
    ctx: ServiceContext,
    caller: Caller,
    found: Plan,
    *,
    stop: Callable[[], bool] = lambda: False,
    advance: Callable[[int], None] = lambda n: None,
) -> Outcome:
    """Delete what ``found`` lists, in bounded steps; logs one INFO line with the counts.

    ``stop()`` is asked between steps (the server stopping): what is left waits for the
    next pass. ``advance(n)`` is told after each batch, events batch and upload step.
    """
    require_admin(caller, "apply retention")
    started, done = time.monotonic(), Outcome()
    for parts, deleter in (
        (found.batches, _delete_batch),
        (found.events, _delete_events),
    ):
        for batch in parts:
            if stop():
                done.stopped = True
                break
            await deleter(ctx, batch, done, stop)
            advance(1)
    if not done.stopped:
        await _delete_uploads(ctx, found, done, stop, advance)
    if not done.stopped and found.runs:
        done.runs = await ctx.write(db.delete_runs, found.runs)
    done.seconds = time.monotonic() - started
    if not found.empty:
        cut = "; stopped before the end, the next pass goes on" if done.stopped else ""
        log.info("retention: removed %s in %.1f s%s", done.summary(), done.seconds, cut)
    for batch_id, why in done.kept:
        log.info("retention: batch %d left alone: %s", batch_id, why)
    return done


async def _delete_batch(
    ctx: ServiceContext, batch: OldBatch, done: Outcome, stop: Callable[[], bool]
) -> None:
    """Step by step; each step with its files is shielded: a pass cancelled mid-step still
    removes the files of a batch whose last step committed."""
    while True:
        step, files, size = await asyncio.shield(_batch_step(ctx, batch))
        done.add(step)
        done.files += files
        done.bytes += size
        if step.kept:
            done.kept.append((batch.id, step.kept))
            return
        if step.done:
            done.batches += 1
            return
        if stop():
            done.stopped = True
            return


async def _batch_step(ctx: ServiceContext, batch: OldBatch) -> tuple[Step, int, int]:
    step = await ctx.write(db.delete_batch_step, batch.id, batch.finished_at)
    if not step.done or step.kept:
        return step, 0, 0
    try:  # the rows are gone: the store unreachable leaves the files (logged), not an error
        files, size = await ctx.run(_batch_folders_size, ctx.storage, batch.id)
    except StorageError as exc:
        log.warning("retention: could not list the files of batch %d: %s", batch.id, exc)
        files = size = 0
    await ctx.run(remove_batch_files, ctx.storage, batch.id)
    return step, files, size


async def _delete_events(
    ctx: ServiceContext, batch: OldBatch, done: Outcome, stop: Callable[[], bool]
) -> None:
    while True:
        step = await ctx.write(db.delete_events_step, batch.id, batch.finished_at)
        done.add(step)
        if step.kept:
            done.kept.append((batch.id, step.kept))
            return
        if step.done:
            done.event_batches += 1
            return
        if stop():
            done.stopped = True
            return


async def _delete_uploads(
    ctx: ServiceContext,
    found: Plan,
    done: Outcome,
    stop: Callable[[], bool],
    advance: Callable[[int], None],
) -> None:
    cutoff = found.now - found.rules.uploads_days * DAY
    storage = ctx.storage

    def fresh(path: str) -> bool:
        return _stored_since(storage, path, cutoff)

    uploads = found.uploads
    for start in range(0, len(uploads), db.UPLOAD_CHUNK):
        if stop():
            done.stopped = True
            return
        chunk = uploads[start : start + db.UPLOAD_CHUNK]
        gone = await asyncio.shield(_uploads_step(ctx, chunk, found.task_floor, fresh, done))
        done.uploads += len(gone)
        advance(len(chunk))


async def _uploads_step(
    ctx: ServiceContext,
    chunk: tuple[OldUpload, ...],
    task_floor: int,
    fresh: Callable[[str], bool],
    done: Outcome,
) -> list[OldUpload]:
    gone, files = await ctx.write(db.delete_uploads, chunk, after_task_id=task_floor, fresh=fresh)
    removed, size = await ctx.run(_remove_upload_files, ctx.storage, gone, files, fresh)
    done.files += removed
    done.bytes += size
    return gone


def _remove_upload_files(
    storage: Storage, gone: list[OldUpload], files: list[str], fresh: Callable[[str], bool]
) -> tuple[int, int]:
    """Remove the files no upload row holds any more (unless stored again meanwhile), and
    the deleted uploads' cached thumbnails; (files, bytes) removed.

    The rows are gone already: a file that cannot be removed (the store unreachable) is
    logged and left (only space), never an error that would stop the pass before the
    others; thumbnails are looked up per upload, not by listing every upload's.
    """
    removed = size = 0
    doomed = [(path, None) for path in files if not fresh(path)]
    thumbs = _thumbnails(storage, "thumbs/assets", {u.id for u in gone}) if gone else []
    for path, known in (*doomed, *((t.path, t.size) for t in thumbs)):
        length = _file_size(storage, path) if known is None else known
        try:
            storage.delete(path)
        except StorageError as exc:
            log.warning("retention: could not delete %s (its row is gone): %s", path, exc)
            continue
        size += length
        removed += 1
    return removed, size


def _thumbnails(storage: Storage, folder: str, ids: set[int]) -> list[StoredInfo]:
    """The cached thumbnails of these ids; none (logged) when the store cannot list them."""
    try:
        return list(storage.thumbnails(folder, ids))
    except StorageError as exc:
        log.warning("retention: could not list the thumbnails in %s: %s", folder, exc)
        return []


async def sweep(
    ctx: ServiceContext, caller: Caller, *, stop: Callable[[], bool] = lambda: False
) -> Outcome:
    """One pass: :func:`plan` now, then :func:`apply` it (the server's hourly pass)."""
    return await apply(ctx, caller, await plan(ctx, caller), stop=stop)
