"""What ``[retention]`` deletes, as storage speaks it: the old finished batches, the events of
others, the uploads no task uses, the runs left without batches; and deleting them in steps.

A step is one short transaction: at most :data:`EVENT_CHUNK` events, or
:data:`TASK_CHUNK` tasks with their images, so a batch of 100,000 tasks never holds
SQLite's one writer for long (each step lets the writes waiting behind it in). Each
step first checks again, inside its transaction, that its batch is still the
finished batch the plan saw: gone (another process deleted it), unfinished (retried
or regenerated since) or ended again since (a later end starts its time again) and
the step does nothing and says why. Deleting is idempotent: two passes racing over
the same rows delete each row once between them.

The batch row itself goes last, through :func:`pixelkiln.db.records.delete_batch`
(the same delete as ``DELETE /api/v1/batches/{id}``), once what is left under it is
smaller than a step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, Text, cast, delete, exists, func, select

from pixelkiln.db.database import Tx
from pixelkiln.db.records import delete_batch
from pixelkiln.db.tables import assets, batches, events, images, runs, tasks, webhook_deliveries
from pixelkiln.models import FINISHED_BATCH

#: events deleted by one step at most
EVENT_CHUNK = 5_000
#: tasks (each with its images) deleted by one step at most
TASK_CHUNK = 500
#: uploads deleted by one step at most (and how many values one ``IN (…)`` binds)
UPLOAD_CHUNK = 500
#: a plan read the tasks up to some id; a step checks again the tasks after that id less
#: this many (PostgreSQL hands ids out before commit, so a few may commit after the read)
RECHECK_TASKS = 10_000

_FINISHED = sorted(str(s) for s in FINISHED_BATCH)
_PENDING_WEBHOOK = "pending"  #: db.webhooks.DeliveryStatus.PENDING


@dataclass(frozen=True)
class OldBatch:
    """A finished batch a rule names, with what it holds."""

    id: int
    name: str
    owner_id: int | None
    status: str  #: completed, partial, failed or cancelled
    finished_at: float  #: when it ended: the step checks this again
    tasks: int  #: its tasks (rows)
    images: int  #: its images (rows, history included)
    events: int  #: its events (rows)


@dataclass(frozen=True)
class OldUpload:
    """An uploaded image (an ``assets`` row) a rule names."""

    id: int
    owner_id: int | None
    path: str  #: its file, relative to the data folder; rows of several owners may share it
    bytes: int
    created_at: float


class Step(NamedTuple):
    """What one step deleted; ``done`` once nothing of its batch is left to delete."""

    events: int = 0
    tasks: int = 0
    images: int = 0
    done: bool = False
    kept: str = ""  #: why the batch was left alone ("" when it was not)


# -- reading what the rules name -------------------------------------------------------------


def _counted(*where: Any) -> Any:
    """Finished batches matching ``where``, with their rows counted, oldest end first."""
    n_images = select(func.count()).where(images.c.batch_id == batches.c.id).scalar_subquery()
    n_events = select(func.count()).where(events.c.batch_id == batches.c.id).scalar_subquery()
    n_tasks = select(func.count()).where(tasks.c.batch_id == batches.c.id).scalar_subquery()
    counts = (n_tasks.label("tasks"), n_images.label("images"), n_events.label("events"))
    columns = (batches.c.id, batches.c.name, batches.c.owner_id, batches.c.status)
    return (
        select(*columns, batches.c.finished_at, *counts)
        .where(batches.c.status.in_(_FINISHED), batches.c.finished_at.is_not(None), *where)
        .order_by(batches.c.finished_at, batches.c.id)
    )


def _old_batch(row: Row[Any]) -> OldBatch:
    return OldBatch(
        row.id,
        row.name,
        row.owner_id,
        row.status,
        row.finished_at,
        row.tasks,
        row.images,
        row.events,
    )


def _in_running_run() -> Any:
    """The batch belongs to a project run still going: deleting it would make the run
    start that project again (its batches are how a run knows what it has done)."""
    return exists().where(runs.c.id == batches.c.run_id, runs.c.status == "running")


def ended_before(conn: Connection, cutoff: float) -> list[OldBatch]:
    """Finished batches that ended before ``cutoff`` (their whole selves go), except those
    of a run still going."""
    query = _counted(batches.c.finished_at < cutoff, ~_in_running_run())
    return [_old_batch(r) for r in conn.execute(query)]


def _webhook_pending(batch: Any) -> Any:
    """The batch's webhook is still owed: its payload is read from its ``done`` event."""
    return exists().where(
        webhook_deliveries.c.batch_id == batch, webhook_deliveries.c.status == _PENDING_WEBHOOK
    )


def with_old_events(conn: Connection, cutoff: float, leaving: Collection[int]) -> list[OldBatch]:
    """Finished batches that ended before ``cutoff`` and still have events, except the
    ones in ``leaving`` (deleted whole) and those whose webhook is still being delivered."""
    has_events = exists().where(events.c.batch_id == batches.c.id)
    query = _counted(batches.c.finished_at < cutoff, has_events, ~_webhook_pending(batches.c.id))
    return [b for b in map(_old_batch, conn.execute(query)) if b.id not in leaving]


def uploaded_before(conn: Connection, cutoff: float) -> list[OldUpload]:
    """Uploads whose row was made before ``cutoff``, oldest first."""
    columns = (assets.c.id, assets.c.owner_id, assets.c.path, assets.c.bytes, assets.c.created_at)
    query = select(*columns).where(assets.c.created_at < cutoff).order_by(assets.c.id)
    return [OldUpload(r.id, r.owner_id, r.path, r.bytes, r.created_at) for r in conn.execute(query)]


def last_task_id(conn: Connection) -> int:
    """The newest task's id (0 without tasks): where a step's check of inputs starts."""
    return int(conn.execute(select(func.coalesce(func.max(tasks.c.id), 0))).scalar_one())


def inputs_in_use(conn: Connection, paths: Collection[str], after_task_id: int = 0) -> set[str]:
    """Which of ``paths`` a task (after ``after_task_id``) names as an init or reference image.

    Tasks name their input images by stored path (``tasks.inputs``); only the tasks
    whose inputs name an upload are read, a few thousand rows at a time.
    """
    if not paths:
        return set()
    query = select(tasks.c.inputs).where(
        tasks.c.id > after_task_id, cast(tasks.c.inputs, Text).like("%assets/%")
    )
    wanted, found = set(paths), set[str]()
    # on the statement: Connection.execution_options would change the connection itself
    for (inputs,) in conn.execute(query.execution_options(yield_per=2_000)):
        found.update(p for p in _input_paths(inputs) if p in wanted)
    return found


def _input_paths(inputs: Any) -> Iterable[str]:
    if not isinstance(inputs, dict):
        return ()
    named = [inputs.get("init_image"), *(inputs.get("reference_images") or ())]
    return [p for p in named if isinstance(p, str)]


def shared_paths(conn: Connection, paths: Collection[str], leaving: Collection[int]) -> set[str]:
    """Which of ``paths`` an upload not in ``leaving`` (another owner's, a newer one) holds."""
    found: set[str] = set()
    wanted = sorted(paths)
    for start in range(0, len(wanted), UPLOAD_CHUNK):
        chunk = wanted[start : start + UPLOAD_CHUNK]
        query = select(assets.c.id, assets.c.path).where(assets.c.path.in_(chunk))
        found.update(path for asset_id, path in conn.execute(query) if asset_id not in leaving)
    return found


def runs_left_empty(conn: Connection, cutoff: float, leaving: Collection[int]) -> list[int]:
    """Runs that ended before ``cutoff`` whose batches are all gone, or all in ``leaving``."""
    query = (
        select(runs.c.id, batches.c.id)
        .select_from(runs.outerjoin(batches, batches.c.run_id == runs.c.id))
        .where(runs.c.status != "running", runs.c.finished_at < cutoff)
    )
    holding: dict[int, bool] = {}
    for run_id, batch_id in conn.execute(query):
        kept = batch_id is not None and batch_id not in leaving
        holding[run_id] = holding.get(run_id, False) or kept
    return sorted(run_id for run_id, kept in holding.items() if not kept)


# -- deleting, one bounded step at a time ---------------------------------------------------


def _changed(conn: Connection, batch_id: int, finished_at: float) -> str:
    """Why the batch is no longer the one the plan saw ("" when it still is)."""
    row = conn.execute(
        select(batches.c.status, batches.c.finished_at, _in_running_run().label("in_run")).where(
            batches.c.id == batch_id
        )
    ).first()
    if row is None:
        return "gone"
    if row.status not in _FINISHED:
        return f"{row.status} now"
    if row.finished_at != finished_at:
        return "ended again since"
    if row.in_run:
        return "its run is going on"
    return ""


def _delete_events(tx: Tx, batch_id: int, chunk: int) -> int:
    some = (
        select(events.c.id).where(events.c.batch_id == batch_id).order_by(events.c.id).limit(chunk)
    )
    ids = list(tx.conn.execute(some).scalars())
    if ids:
        tx.conn.execute(delete(events).where(events.c.id.in_(ids)))
    return len(ids)


def delete_batch_step(
    tx: Tx, batch_id: int, finished_at: float, *, chunk: int = TASK_CHUNK
) -> Step:
    """Delete a step of a finished batch: its events first, then its tasks with their
    images; once less than a step is left, the rest and the batch row (done).

    The caller removes the batch's files once the last step committed.
    """
    kept = _changed(tx.conn, batch_id, finished_at)
    if kept:
        return Step(done=True, kept=kept)
    n_events = _delete_events(tx, batch_id, EVENT_CHUNK)
    if n_events == EVENT_CHUNK:
        return Step(events=n_events)
    some = select(tasks.c.id).where(tasks.c.batch_id == batch_id).limit(chunk)
    ids = list(tx.conn.execute(some).scalars())
    n_images = 0
    if ids:
        count = select(func.count()).where(images.c.task_id.in_(ids))
        n_images = int(tx.conn.execute(count).scalar_one())
        tx.conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))  # images cascade
    if len(ids) == chunk:
        return Step(n_events, len(ids), n_images)
    delete_batch(tx, batch_id)  # nothing under it is left but rows no step counts
    return Step(n_events, len(ids), n_images, done=True)


def delete_events_step(
    tx: Tx, batch_id: int, finished_at: float, *, chunk: int = EVENT_CHUNK
) -> Step:
    """Delete a step of a finished batch's events (its tasks and images stay)."""
    kept = _changed(tx.conn, batch_id, finished_at)
    if not kept and tx.conn.execute(select(_webhook_pending(batch_id))).scalar():
        kept = "its webhook is being delivered"
    if kept:
        return Step(done=True, kept=kept)
    n_events = _delete_events(tx, batch_id, chunk)
    return Step(events=n_events, done=n_events < chunk)


def delete_uploads(
    tx: Tx,
    uploads: Iterable[OldUpload],
    *,
    after_task_id: int,
    fresh: Callable[[str], bool],
) -> tuple[list[OldUpload], list[str]]:
    """Delete these uploads unless a task made since the plan names their file, or the file
    was stored again lately (``fresh``); returns the uploads deleted and the files no row
    points at any more (the caller removes them once this commits)."""
    planned = {u.id: u for u in uploads}
    present = select(assets.c.id).where(assets.c.id.in_(list(planned)))
    rows = [planned[i] for i in tx.conn.execute(present).scalars()]
    used = inputs_in_use(tx.conn, {u.path for u in rows}, after_task_id)
    going = [u for u in rows if u.path not in used and not fresh(u.path)]
    if not going:
        return [], []
    tx.conn.execute(delete(assets).where(assets.c.id.in_([u.id for u in going])))
    paths = {u.path for u in going}
    still = set(tx.conn.execute(select(assets.c.path).where(assets.c.path.in_(paths))).scalars())
    return going, sorted(paths - still)


def delete_runs(tx: Tx, run_ids: Collection[int]) -> int:
    """Delete these runs if they ended and no batch of theirs is left; how many went."""
    if not run_ids:
        return 0
    holds_batch = exists().where(batches.c.run_id == runs.c.id)
    statement = delete(runs).where(
        runs.c.id.in_(list(run_ids)), runs.c.status != "running", ~holds_batch
    )
    return int(tx.conn.execute(statement).rowcount)
