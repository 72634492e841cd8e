"""What a user's images cost, and charging for them: the one module that takes credits.

Credits per image per backend come from ``[credits]``; a backend the user
stored their own key for costs them nothing, and their tasks on it are marked
``own_key`` so that key goes with the request. A create and a retry are
charged here, inside the transaction that stores them; refunds (a task that
failed or was cancelled) happen where the task moves, in the database layer,
under the ``refund_failed`` policy noted on the batch with each charge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from pixelkiln.config import CreditsSettings, Settings
from pixelkiln.db import transitions
from pixelkiln.db.credits import (
    charge,
    set_costs,
    set_own_key,
    set_task_costs,
)
from pixelkiln.db.database import Tx
from pixelkiln.db.users import provider_key_backends
from pixelkiln.models import Task
from pixelkiln.service.context import BackendCatalog, ServiceContext


@dataclass(frozen=True)
class Pricing:
    """What images cost one user; nothing when credits are off.

    ``own_keys``: backends the user stored their own key for; tasks on them
    run on that key (``tasks.own_key``) and cost nothing.
    """

    credits: CreditsSettings | None = None  #: the price list; None: credits are off
    own_keys: frozenset[str] = frozenset()

    def price(self, backend: str) -> int:
        """Credits for one image on ``backend``."""
        if self.credits is None or backend in self.own_keys:
            return 0
        return self.credits.price(backend)

    def task_cost(self, backend: str, n: int) -> int:
        """Credits for a task of ``n`` images on ``backend``."""
        return self.price(backend) * n


def load_pricing(
    conn: Connection, settings: Settings, catalog: BackendCatalog, user_id: int | None
) -> Pricing:
    """What images cost ``user_id`` (nothing without a user or with credits off)."""
    if user_id is None:
        return Pricing()
    stored = provider_key_backends(conn, user_id)
    own = frozenset(b for b in stored if b in catalog.user_keys)
    return Pricing(settings.credits if settings.credits.enabled else None, own)


async def pricing_for(ctx: ServiceContext, user_id: int | None) -> Pricing:
    """What images cost ``user_id`` in this installation."""
    if user_id is None:  # the local installation pays nothing: no query
        return Pricing()
    return await ctx.read(load_pricing, ctx.settings, ctx.backends, user_id)


def charge_new_batch(
    tx: Tx,
    batch_id: int,
    *,
    name: str,
    backends: Sequence[str],
    costs: Sequence[int],
    pricing: Pricing,
    user_id: int | None,
) -> None:
    """Charge a just-stored batch (``costs[i]`` for position i + 1; ``backends`` likewise).

    Raises InsufficientCreditsError when the balance does not cover it, which
    rolls back the whole create.
    """
    total = sum(costs)
    if total and user_id is not None:
        charge(tx, user_id, total, batch_id, note=f"batch '{name}': {len(costs)} task(s)")
        set_task_costs(tx, batch_id, costs)
        _note_policy(tx, batch_id, pricing)
    if pricing.own_keys & set(backends):
        set_own_key(tx, batch_id, pricing.own_keys)


def charge_retry(
    tx: Tx,
    batch_id: int,
    owner_id: int | None,
    retried: Sequence[Task],
    pricing: Pricing,
    what: str = "retry",
) -> None:
    """Charge the owner again for tasks put back in the queue: a retry (they were refunded)
    or a regenerate (their next run costs what a new one does)."""
    costs = {t.id: pricing.task_cost(t.backend, int(t.params.get("n", 1))) for t in retried}
    total = sum(costs.values())
    if total and owner_id is not None:
        charge(tx, owner_id, total, batch_id, note=f"{what} of {len(retried)} task(s)")
        _note_policy(tx, batch_id, pricing)
    # a task holds what its current run was charged, 0 when it is free: a refund never
    # pays back an earlier run's charge (the images it made, or a charge a policy kept)
    set_costs(tx, costs if owner_id is not None else dict.fromkeys(costs, 0))
    # a retry runs on the key the owner has now: their own (free) or the system's (charged)
    set_own_key(tx, batch_id, pricing.own_keys, [t.id for t in retried])


def _note_policy(tx: Tx, batch_id: int, pricing: Pricing) -> None:
    """The batch keeps the refund policy of its latest charge (see ``[credits] refund_failed``)."""
    if pricing.credits is not None:
        transitions.charged_under(tx, batch_id, pricing.credits.refund_failed)
