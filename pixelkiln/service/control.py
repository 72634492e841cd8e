"""What happens to a batch after it was submitted: retry, regenerate, cancel, pause, resume,
delete.

Each is one write through the database's transitions, then a word to the
schedulers of this process (woken for new work; told to stop a cancelled
batch's running tasks now rather than at their next lease renewal).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pixelkiln.db import transitions
from pixelkiln.db.batches import cancel_batch, get_batch, retry_batch, set_paused
from pixelkiln.db.database import Tx
from pixelkiln.db.records import delete_batch
from pixelkiln.db.tasks import list_tasks
from pixelkiln.exceptions import NotFoundError, Problem, SpecError
from pixelkiln.models import Batch, Task, TaskStatus
from pixelkiln.service.context import Caller, ServiceContext
from pixelkiln.service.pricing import Pricing, charge_retry, pricing_for
from pixelkiln.storage import Storage, StorageError

log = logging.getLogger(__name__)


async def retry(
    ctx: ServiceContext,
    caller: Caller,
    batch_id: int,
    *,
    task_ids: Sequence[int] | None = None,
    include_cancelled: bool = False,
) -> int:
    """Re-queue failed (and maybe cancelled) tasks, every one or only ``task_ids``.

    The batch's owner is charged again (those tasks were refunded when they
    ended); InsufficientCreditsError leaves everything as it was. Returns how
    many tasks went back; InvalidStateError when there was none.
    """
    batch = await ctx.read(get_batch, batch_id, caller.scope)
    pricing = await pricing_for(ctx, batch.owner_id)
    count = await ctx.write(
        _retry_charged, batch_id, caller.scope, task_ids, include_cancelled, pricing
    )
    ctx.schedulers.wake()
    return count


def _retry_charged(
    tx: Tx,
    batch_id: int,
    scope: int | None,
    task_ids: Sequence[int] | None,
    include_cancelled: bool,
    pricing: Pricing,
) -> int:
    """Put tasks back in the queue and charge for them again, in one transaction."""
    batch = get_batch(tx.conn, batch_id, scope)
    states = [TaskStatus.FAILED] + ([TaskStatus.CANCELLED] if include_cancelled else [])
    retried = list_tasks(tx.conn, batch_id, statuses=states, task_ids=task_ids)
    count = retry_batch(
        tx, batch_id, include_cancelled=include_cancelled, task_ids=task_ids, owner_id=scope
    )
    charge_retry(tx, batch_id, batch.owner_id, retried, pricing)
    return count


async def regenerate(
    ctx: ServiceContext,
    caller: Caller,
    batch_id: int,
    *,
    keys: Sequence[str] | None = None,
    task_ids: Sequence[int] | None = None,
    replace: bool = False,
) -> int:
    """Run chosen finished tasks again (succeeded ones too), by ``keys`` or ``task_ids``.

    Each goes to its next run; its earlier images are kept as history once the
    new run succeeds, or deleted then with ``replace``. Charged like a retry.
    NotFoundError naming keys or ids the batch lacks; InvalidStateError naming
    tasks still pending or running. Returns how many tasks went back.
    """
    if (keys is None) == (task_ids is None) or not (keys or task_ids):
        why = "name the tasks to regenerate: keys or task ids (one of them, not empty)"
        raise SpecError([Problem("", "", "keys", why)])
    batch = await ctx.read(get_batch, batch_id, caller.scope)
    pricing = await pricing_for(ctx, batch.owner_id)
    count = await ctx.write(
        _regenerate_charged, batch_id, caller.scope, keys, task_ids, replace, pricing
    )
    ctx.schedulers.wake()
    return count


def _regenerate_charged(
    tx: Tx,
    batch_id: int,
    scope: int | None,
    keys: Sequence[str] | None,
    task_ids: Sequence[int] | None,
    replace: bool,
    pricing: Pricing,
) -> int:
    """Move the named tasks to their next run and charge for it, in one transaction."""
    batch = get_batch(tx.conn, batch_id, scope)
    chosen = list_tasks(tx.conn, batch_id, keys=keys, task_ids=task_ids)
    _require_all(batch_id, chosen, keys, task_ids)
    count = transitions.regenerate(tx, batch, [t.id for t in chosen], replace=replace)
    charge_retry(tx, batch_id, batch.owner_id, chosen, pricing, "regenerate")
    return count


def _require_all(
    batch_id: int, found: list[Task], keys: Sequence[str] | None, ids: Sequence[int] | None
) -> None:
    """NotFoundError naming what was asked for and is not a task of the batch."""
    if keys is not None:
        missing = [repr(k) for k in dict.fromkeys(keys) if k not in {t.key for t in found}]
        what = "key"
    else:
        missing = [str(i) for i in dict.fromkeys(ids or ()) if i not in {t.id for t in found}]
        what = "id"
    if missing:
        raise NotFoundError(f"batch {batch_id} has no task with {what} {', '.join(missing)}")


async def cancel(ctx: ServiceContext, caller: Caller, batch_id: int) -> Batch:
    """Cancel a batch: pending tasks at once (refunded), this process's running ones now,
    other processes' at their next lease renewal."""
    batch = await ctx.write(cancel_batch, batch_id, caller.scope)
    ctx.schedulers.cancel_batch(batch_id)
    return batch


async def pause(ctx: ServiceContext, caller: Caller, batch_id: int) -> Batch:
    """No new task of the batch starts; running ones finish."""
    return await ctx.write(set_paused, batch_id, True, caller.scope)


async def resume(ctx: ServiceContext, caller: Caller, batch_id: int) -> Batch:
    """Let a paused batch run again (a batch that is not paused stays as it is)."""
    batch = await ctx.write(set_paused, batch_id, False, caller.scope)
    ctx.schedulers.wake()
    return batch


async def delete(ctx: ServiceContext, caller: Caller, batch_id: int) -> None:
    """Forget a finished batch with its tasks, events and image files.

    InvalidStateError while it is unfinished. The rows go first, then the files:
    a row never points at a missing file for longer than this call.
    """
    await ctx.write(delete_batch, batch_id, caller.scope)
    await ctx.run(remove_batch_files, ctx.storage, batch_id)


def batch_folders(batch_id: int) -> tuple[str, str]:
    """A batch's folders in the data folder, relative: its images and their thumbnails.

    Only its own files are there (an image made an upload is copied); what deletes or
    measures a batch's files asks here.
    """
    return f"images/{batch_id}", f"thumbs/{batch_id}"


def remove_batch_files(storage: Storage, batch_id: int) -> None:
    """Delete a batch's images and thumbnails (after its rows are gone).

    See ``Storage.delete_folder``: a local folder is renamed out of the way first, and
    what cannot be removed (a runner of another process still writing, the object store
    unreachable) is logged, not raised: the rows are gone, so it is only space.
    """
    for folder in batch_folders(batch_id):
        try:
            storage.delete_folder(folder)
        except StorageError as exc:
            log.warning("could not remove the files of %s: %s", folder, exc)
