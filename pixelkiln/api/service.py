"""Batches through the API: price, charge and store in one transaction; details; waiting.

A create is: validate the spec (inputs must be the caller's uploads, never
server paths), resolve it (``prepare_batch``), price every task (credits per
image per backend; 0 on a backend the user has their own key for), then one
write that checks the idempotency key, stores the batch, charges the ledger
and records the key. If the balance does not cover it, that write raises and
nothing at all is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection

from pixelkiln.api.deps import ApiContext, Caller
from pixelkiln.api.errors import ApiError
from pixelkiln.api.pricing import Pricing, load_pricing, retry_charged
from pixelkiln.api.schemas import BatchDetail
from pixelkiln.api.views import batch_fields, task_public
from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.credits import charge, set_own_key, set_task_costs
from pixelkiln.db.database import Tx
from pixelkiln.db.records import find_idempotent, get_asset, images_of_tasks, remember_idempotent
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.intake import prepare_batch
from pixelkiln.exceptions import NotFoundError, Problem
from pixelkiln.models import Batch, ImageRecord, Task, TaskStatus, parse_id
from pixelkiln.specs import BatchSpec

ALL_TASKS = 1_000_000  # "every task" for a waited-for create


@dataclass(frozen=True)
class Submission:
    """A batch a caller asks for, and how it came."""

    spec: BatchSpec
    source: str = "api"
    source_name: str = ""  #: uploaded file name, for messages
    where: Callable[[int], str] | None = None  #: names task i in messages ("row 4")
    idempotency_key: str | None = None
    fingerprint: str = ""  #: hash of the request: a reused key must come with the same one
    server_paths: bool = False  #: inputs are server files the API itself chose (edit)


def fingerprint(*parts: Any) -> str:
    """A stable hash of what a request asked for (JSON-able parts)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


async def pricing_for(ctx: ApiContext, user_id: int | None) -> Pricing:
    """What images cost ``user_id`` (nothing without a user or with credits off)."""
    return await ctx.read(load_pricing, ctx.settings, ctx.kiln.backends, user_id)


def limit_problems(spec: BatchSpec, max_attempts: int, source: str = "") -> list[Problem]:
    """A user may lower their batch's priority, not raise it over others'; nor buy extra tries.

    Extra attempts would spend the system's provider key on retries charged once.
    """
    problems = []
    if spec.priority > 0:
        problems.append(
            Problem(source, "", "priority", "only admins may give a batch a priority above 0")
        )
    if spec.max_attempts is not None and spec.max_attempts > max_attempts:
        problems.append(
            Problem(source, "", "max_attempts", f"at most {max_attempts} attempts per task")
        )
    return problems


async def submit(ctx: ApiContext, caller: Caller, sub: Submission) -> tuple[int, bool]:
    """Store (and charge for) a batch; (batch id, False when an idempotent replay)."""
    key = sub.idempotency_key
    since = time.time() - ctx.settings.server.idempotency_hours * 3600  # older keys expired
    if key:
        found = await ctx.read(find_idempotent, caller.owner_key, key, since)
        if found is not None:
            return _replayed(found, sub.fingerprint), False
    if not caller.is_admin:  # reported with every other problem of the input, by prepare_batch
        problems = limit_problems(sub.spec, ctx.settings.scheduler.max_attempts, sub.source_name)
        sub = replace(sub, spec=sub.spec.with_problems(problems))
    new = await ctx.run(_prepare, ctx, caller, sub)
    pricing = await pricing_for(ctx, caller.user_id)
    costs = [pricing.task_cost(t.backend, t.n) for t in new.tasks]
    batch_id, created, stored_hash = await ctx.write(
        _store,
        new,
        costs,
        pricing.own_keys,
        caller.user_id,
        caller.owner_key,
        (key, sub.fingerprint, since),
    )
    if not created:
        return _replayed((batch_id, stored_hash), sub.fingerprint), False
    ctx.wake_scheduler()
    return batch_id, True


def _replayed(found: tuple[int, str], wanted: str) -> int:
    batch_id, stored = found
    if stored != wanted:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
            field="Idempotency-Key",
        )
    return batch_id


def _prepare(ctx: ApiContext, caller: Caller, sub: Submission) -> NewBatch:
    settings = ctx.settings

    def resolve_asset(ref: str) -> str:
        number = ref.removeprefix("asset:")
        if not (number.isascii() and number.isdigit()):  # isdigit() alone takes "²"
            raise NotFoundError("not an asset reference; expected 'asset:<id>'")
        asset_id = parse_id(number)
        if asset_id is None:  # 0, or past 64 bits: no such row (and the driver would overflow)
            raise NotFoundError("no uploaded image with that id")
        return ctx.db.read(get_asset, asset_id, caller.scope).path

    return prepare_batch(
        sub.spec,
        storage=ctx.storage,
        default_backend=settings.default_backend(),
        known_backends=list(ctx.kiln.backends),
        max_attempts=settings.scheduler.max_attempts,
        source=sub.source,
        source_name=sub.source_name,
        where=sub.where,
        owner_id=caller.user_id,
        resolve_asset=resolve_asset,
        uploads_only=not sub.server_paths,  # a caller may only use its own uploads
    )


def _store(
    tx: Tx,
    new: NewBatch,
    costs: Sequence[int],
    own_keys: frozenset[str],
    user_id: int | None,
    owner_key: int,
    idempotency: tuple[str | None, str, float],
) -> tuple[int, bool, str]:
    """The one write of a create: idempotency check, batch, charge, key.

    ``idempotency`` is (key or None, request hash, oldest time a key is still valid).
    """
    key, request_hash, since = idempotency
    if key:
        found = find_idempotent(tx.conn, owner_key, key, since)
        if found is not None:  # a concurrent request with the same key won
            return found[0], False, found[1]
    batch_id = create_batch(tx, new)
    total = sum(costs)
    if total and user_id is not None:
        charge(tx, user_id, total, batch_id, note=f"batch '{new.name}': {len(costs)} task(s)")
        set_task_costs(tx, batch_id, costs)
    if own_keys & {t.backend for t in new.tasks}:
        set_own_key(tx, batch_id, own_keys)
    if key:
        remember_idempotent(tx, owner_key, key, request_hash, batch_id, since)
    return batch_id, True, request_hash


# -- retry (charged again: a failed or cancelled task was refunded) ---------------------------


async def retry(
    ctx: ApiContext,
    caller: Caller,
    batch_id: int,
    task_ids: Sequence[int] | None,
    include_cancelled: bool,
) -> int:
    """Re-queue failed (and maybe cancelled) tasks, charging the batch's owner again."""
    batch = await ctx.read(get_batch, batch_id, caller.scope)
    pricing = await pricing_for(ctx, batch.owner_id)
    count = await ctx.write(
        retry_charged,
        batch_id,
        scope=caller.scope,
        task_ids=task_ids,
        include_cancelled=include_cancelled,
        pricing=pricing,
    )
    ctx.wake_scheduler()
    return count


# -- reading a batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskPage:
    statuses: list[TaskStatus] | None = None
    limit: int = 50
    offset: int = 0


def _detail(
    conn: Connection, batch_id: int, scope: int | None, page: TaskPage
) -> tuple[Batch, list[Task], dict[int, list[ImageRecord]]]:
    batch = get_batch(conn, batch_id, scope)
    tasks = list_tasks(conn, batch_id, statuses=page.statuses, limit=page.limit, offset=page.offset)
    return batch, tasks, images_of_tasks(conn, [t.id for t in tasks])


async def batch_detail(
    ctx: ApiContext, batch_id: int, scope: int | None, page: TaskPage
) -> BatchDetail:
    batch, tasks, images = await ctx.read(_detail, batch_id, scope, page)
    counts = batch.counts
    if page.statuses is None:
        task_total = counts.total
    else:
        task_total = sum(getattr(counts, str(s)) for s in page.statuses)
    return BatchDetail.model_construct(
        **batch_fields(batch),
        tasks=[task_public(t, images.get(t.id, [])) for t in tasks],
        task_total=task_total,
        task_offset=page.offset,
        finished=batch.status.finished,
    )


async def wait_until_finished(ctx: ApiContext, batch_id: int, timeout: float) -> bool:
    """Wait for the batch's final status (or the timeout); True when it finished."""
    deadline = time.monotonic() + timeout
    subscription = ctx.kiln.bus.subscribe(batch_id)
    try:
        while True:
            batch = await ctx.read(get_batch, batch_id)
            if batch.status.finished:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # any event of the batch (or a second's pause) is a reason to look again
            await subscription.get(timeout=min(left, 1.0))
    finally:
        subscription.close()
