"""Submitting a batch: validate, prepare, price, charge, store in one write, wake.

A submit is: check the spec against what the caller may ask (inputs must be
the caller's uploads, never server paths, unless the installation itself
chose them; users may not raise priority or buy extra tries), resolve it
(``prepare_batch``), price every task (credits per image per backend; 0 on a
backend the user has their own key for), then one write that checks the
idempotency key, stores the batch, charges the ledger and records the key.
If the balance does not cover it, that write raises and nothing is stored.
Then the schedulers of this process are woken.

A dry run (:func:`plan`) makes every check of a submit, the same code path up to
the write, and answers what the batch would be, cost and take
(:mod:`pixelkiln.service.plans`): nothing stored, nothing charged.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from pixelkiln.db.batches import NewBatch, create_batch
from pixelkiln.db.database import Tx
from pixelkiln.db.records import find_idempotent, get_asset, remember_idempotent
from pixelkiln.engine.intake import prepare_batch
from pixelkiln.exceptions import (
    IdempotencyKeyReusedError,
    InvalidStateError,
    NotFoundError,
    Problem,
    SpecError,
)
from pixelkiln.models import parse_id
from pixelkiln.problems import capped
from pixelkiln.service import plans
from pixelkiln.service.context import Caller, ServiceContext
from pixelkiln.service.plans import Plan
from pixelkiln.service.pricing import Pricing, charge_new_batch, pricing_for
from pixelkiln.service.webhooks import webhook_problems
from pixelkiln.specs import BatchSpec, expand_items
from pixelkiln.sweeps import Expansion, may_expand


@dataclass(frozen=True)
class Submission:
    """A batch a caller asks for, and how it came."""

    spec: BatchSpec
    source: str = "api"  #: cli, api, web, project, schedule; img2img, slides (drop-in APIs)
    source_name: str = ""  #: the file it came from, for messages
    where: Callable[[int], str] | None = None  #: names task i in messages ("row 4")
    idempotency_key: str | None = None
    fingerprint: str = ""  #: hash of the request: a reused key must come with the same one
    #: inputs are files on this machine that the installation itself chose (the CLI's and the
    #: library's batch files, the API's edit of a stored image); else only the caller's uploads
    server_paths: bool = False
    base_dir: Path | None = None  #: relative input paths are relative to this folder
    #: who owns (and pays for) the batch when an admin queues it for someone; default: the caller
    owner_id: int | None = None
    run_id: int | None = None  #: the run it belongs to (a project run: one per project)


class Submitted(NamedTuple):
    batch_id: int
    created: bool  #: False: an earlier request with the same idempotency key made it


def fingerprint(*parts: Any) -> str:
    """A stable hash of what a request asked for (JSON-able parts, or batch specs).

    A :class:`BatchSpec` part hashes as its ``model_dump(mode="json")`` would, to the
    byte, but one task at a time: a spec of 100,000 tasks is never held twice more (as
    a dump and as its JSON text) just to be hashed.
    """
    digest = hashlib.sha256()
    for chunk in _json_chunks(list(parts)):
        digest.update(chunk.encode())
    return digest.hexdigest()


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _json_chunks(parts: list[Any]) -> Iterator[str]:
    """``json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)`` in pieces:
    each BatchSpec's tasks dumped and encoded one by one, in place of its list."""
    specs = [i for i, part in enumerate(parts) if isinstance(part, BatchSpec)]
    if not specs:
        yield _ENCODER.encode(parts)
        return
    # each spec dumped without its tasks, a mark (a text no value can hold) where they go
    mark = f"tasks-{uuid.uuid4().hex}"
    shown = list(parts)
    for i in specs:
        shown[i] = {**parts[i].model_dump(mode="json", exclude={"tasks"}), "tasks": mark}
    pieces = _ENCODER.encode(shown).split(f'"{mark}"')
    for piece, i in zip(pieces, specs, strict=False):
        yield piece
        yield "["
        for n, task in enumerate(parts[i].tasks):
            yield ("," if n else "") + _ENCODER.encode(task.model_dump(mode="json"))
        yield "]"
    yield pieces[-1]


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


def _owner(caller: Caller, sub: Submission) -> int | None:
    if sub.owner_id is None or sub.owner_id == caller.user_id:
        return caller.user_id
    if not caller.is_admin:
        raise InvalidStateError("only admins may queue a batch for another user")
    return sub.owner_id


@dataclass(frozen=True)
class _Checked:
    """A submission that passed every check, resolved and priced: ready to store."""

    new: NewBatch
    costs: list[int]  #: per task, in position order
    pricing: Pricing


async def submit(
    ctx: ServiceContext,
    caller: Caller,
    sub: Submission,
    confirm: Callable[[Plan], Awaitable[None]] | None = None,
) -> Submitted:
    """Store (and charge for) a batch, then wake the schedulers.

    SpecError lists every problem of the input at once (the spec's own, see
    ``parse_batch(partial=True)``, and every later check; over ``[limits]``);
    InsufficientCreditsError when the owner cannot pay (nothing stored);
    IdempotencyKeyReusedError when the key came before with another request.
    ``confirm`` is awaited with the batch's plan between the checks and the write (the
    batch resolved once for both): whatever it raises stores nothing.
    """
    key = sub.idempotency_key
    since = time.time() - ctx.settings.server.idempotency_hours * 3600  # older keys expired
    if key:
        found = await ctx.read(find_idempotent, caller.owner_key, key, since)
        if found is not None:
            return Submitted(_replayed(found, sub.fingerprint), False)
    checked = await _check(ctx, caller, sub)
    if confirm is not None:
        await confirm(await plans.plan_batch(ctx, checked.new, checked.costs))
    batch_id, created, stored_hash = await ctx.write(
        _store,
        checked.new,
        checked.costs,
        checked.pricing,
        caller.owner_key,
        (key, sub.fingerprint, since),
    )
    if not created:
        return Submitted(_replayed((batch_id, stored_hash), sub.fingerprint), False)
    ctx.schedulers.wake()
    return Submitted(batch_id, True)


async def plan(ctx: ServiceContext, caller: Caller, sub: Submission) -> Plan:
    """A dry run of :func:`submit`: its every check, then what it would store, charge and
    take (see :mod:`pixelkiln.service.plans`).

    The same SpecError a submit raises for bad input. What only limits refuse — more
    tasks than ``[limits] max_tasks_per_batch``, more credits than the owner's balance
    now (a submit could still race a grant) — is in :attr:`Plan.problems`, and
    :meth:`Plan.refuse` raises what the submit would. Nothing is stored or charged, and
    the idempotency key is not looked at.
    """
    over = plans.task_limit_problem(sub.spec, ctx.settings.limits, sub.source_name, sub.base_dir)
    if over is not None:  # not resolved: the limit is there so that none has to be
        return plans.over_limit(sub.spec, over, sub.base_dir)
    sampled = await _sampled_plan(ctx, caller, sub)
    if sampled is not None:
        return sampled
    checked = await _check(ctx, caller, sub, counted=True)
    return await plans.plan_batch(ctx, checked.new, checked.costs)


async def _sampled_plan(ctx: ServiceContext, caller: Caller, sub: Submission) -> Plan | None:
    """The plan of a sweep from its :class:`~pixelkiln.sweeps.Sample` (its tasks over the
    axes that change a plan, weighted), without making its 100,000 tasks; None when it has
    no sample, or when the sample does not pass every check: then the whole batch is
    checked, which says exactly what is wrong and where."""
    spec = expand_items(sub.spec, sub.source_name)
    if not may_expand(spec):  # a plain list: every task is planned
        return None
    expansion = Expansion(
        spec,
        base_dir=sub.base_dir if sub.server_paths else None,  # as check_tasks reads lists
        known_backends=ctx.backends.names,
    )
    sample = expansion.sample()
    if sample is None:
        return None
    try:
        checked = await _check(ctx, caller, replace(sub, spec=sample.spec), counted=True)
    except SpecError:
        return None
    weights = [sample.weights[task.origin] for task in checked.new.tasks]
    return await plans.plan_batch(ctx, checked.new, checked.costs, weights)


async def _check(
    ctx: ServiceContext, caller: Caller, sub: Submission, *, counted: bool = False
) -> _Checked:
    """Every check of a submit, up to its write: who owns it, what the caller may ask,
    the spec resolved against uploads and backends (one SpecError for all), its price.

    ``counted``: the batch's tasks were counted against ``[limits]`` already (a plan).
    """
    owner_id = _owner(caller, sub)
    if not caller.is_admin:  # reported with every other problem of the input, by prepare_batch
        problems = limit_problems(sub.spec, ctx.settings.scheduler.max_attempts, sub.source_name)
        sub = replace(sub, spec=sub.spec.with_problems(problems))
    # a webhook to a literal private address could never be delivered: said now, to everyone
    hook_problems = webhook_problems(sub.spec, ctx.settings, sub.source_name)
    sub = replace(sub, spec=sub.spec.with_problems(hook_problems)) if hook_problems else sub
    limits = ctx.settings.limits
    if not counted:  # said before 100,000s of tasks are resolved for nothing
        over = plans.task_limit_problem(sub.spec, limits, sub.source_name, sub.base_dir)
        if over is not None:
            raise SpecError([over])
    new = await ctx.run(_prepare, ctx, caller, sub, owner_id)
    too_large = plans.pixel_problems(new.tasks, limits, sub.source_name)
    if too_large:
        raise SpecError(capped(too_large, sub.source_name))
    if sub.run_id is not None:
        new = replace(new, run_id=sub.run_id)
    pricing = await pricing_for(ctx, owner_id)
    return _Checked(new, [pricing.task_cost(t.backend, t.n) for t in new.tasks], pricing)


def _replayed(found: tuple[int, str], wanted: str) -> int:
    batch_id, stored = found
    if stored != wanted:
        raise IdempotencyKeyReusedError("this Idempotency-Key was used for a different request")
    return batch_id


def _prepare(
    ctx: ServiceContext, caller: Caller, sub: Submission, owner_id: int | None
) -> NewBatch:
    def resolve_asset(ref: str) -> str:
        number = ref.removeprefix("asset:")
        if not (number.isascii() and number.isdigit()):  # isdigit() alone takes "²"
            raise NotFoundError("not an asset reference; expected 'asset:<id>'")
        asset_id = parse_id(number)
        if asset_id is None:  # 0, or past 64 bits: no such row (and the driver would overflow)
            raise NotFoundError("no uploaded image with that id")
        return ctx.db.read(get_asset, asset_id, caller.scope).path

    settings = ctx.settings
    return prepare_batch(
        sub.spec,
        storage=ctx.storage,
        default_backend=settings.default_backend(),
        known_backends=list(ctx.backends.names),
        max_attempts=settings.scheduler.max_attempts,
        source=sub.source,
        source_name=sub.source_name,
        base_dir=sub.base_dir,
        where=sub.where,
        owner_id=owner_id,
        # uploads are for remote callers: local batch files name files on this machine
        resolve_asset=None if sub.server_paths else resolve_asset,
        uploads_only=not sub.server_paths,  # paths refused unread: this machine's files
        max_tasks=settings.limits.max_tasks_per_batch,
    )


def _store(
    tx: Tx,
    new: NewBatch,
    costs: Sequence[int],
    pricing: Pricing,
    owner_key: int,
    idempotency: tuple[str | None, str, float],
) -> tuple[int, bool, str]:
    """The one write of a submit: idempotency check, batch, charge, key.

    ``idempotency`` is (key or None, request hash, oldest time a key is still valid).
    """
    key, request_hash, since = idempotency
    if key:
        found = find_idempotent(tx.conn, owner_key, key, since)
        if found is not None:  # a concurrent request with the same key won
            return found[0], False, found[1]
    batch_id = create_batch(tx, new)
    charge_new_batch(
        tx,
        batch_id,
        name=new.name,
        backends=[t.backend for t in new.tasks],
        costs=costs,
        pricing=pricing,
        user_id=new.owner_id,
    )
    if key:
        remember_idempotent(tx, owner_key, key, request_hash, batch_id, since)
    return batch_id, True, request_hash
