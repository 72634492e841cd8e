"""What a user's images cost, and retries charged like creates (no FastAPI here: the CLI uses it).

Credits per image per backend come from ``[credits]``; a backend the user
stored their own key for costs them nothing, and their tasks on it are marked
``own_key`` so that key goes with the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from pixelkiln.backends.base import BackendInfo, accepts_user_keys
from pixelkiln.config import Settings
from pixelkiln.db.batches import get_batch, retry_batch
from pixelkiln.db.credits import charge, set_costs, set_own_key
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import tasks as tasks_table
from pixelkiln.db.users import provider_key_backends
from pixelkiln.models import TaskStatus


@dataclass(frozen=True)
class Pricing:
    """Credits per image per backend for one caller; nothing when credits are off.

    ``own_keys``: backends the caller stored their own key for; tasks on them
    run on that key (``tasks.own_key``) and cost nothing.
    """

    enabled: bool
    per_image: int = 0
    backends: dict[str, int] = field(default_factory=dict)
    own_keys: frozenset[str] = frozenset()

    def price(self, backend: str) -> int:
        if not self.enabled or backend in self.own_keys:
            return 0
        return self.backends.get(backend, self.per_image)

    def task_cost(self, backend: str, n: int) -> int:
        return self.price(backend) * n


def load_pricing(
    conn: Connection, settings: Settings, backends: Mapping[str, BackendInfo], user_id: int | None
) -> Pricing:
    """What images cost ``user_id`` (nothing without a user or with credits off)."""
    if user_id is None:
        return Pricing(False)
    stored = provider_key_backends(conn, user_id)
    own = frozenset(b for b in stored if b in backends and accepts_user_keys(backends[b]))
    credits = settings.credits
    if not credits.enabled:
        return Pricing(False, own_keys=own)
    return Pricing(True, credits.per_image, dict(credits.backends), own)


def retry_charged(
    tx: Tx,
    batch_id: int,
    *,
    scope: int | None,
    task_ids: Sequence[int] | None,
    include_cancelled: bool,
    pricing: Pricing,
) -> int:
    """Put tasks back in the queue and charge for them again, in one transaction."""
    batch = get_batch(tx.conn, batch_id, scope)
    states = [str(TaskStatus.FAILED)] + ([str(TaskStatus.CANCELLED)] if include_cancelled else [])
    query = select(tasks_table.c.id, tasks_table.c.backend, tasks_table.c.params).where(
        tasks_table.c.batch_id == batch_id, tasks_table.c.status.in_(states)
    )
    if task_ids is not None:
        query = query.where(tasks_table.c.id.in_(list(task_ids)))
    rows = tx.conn.execute(query).all()
    count = retry_batch(
        tx, batch_id, include_cancelled=include_cancelled, task_ids=task_ids, owner_id=scope
    )
    costs = {r.id: pricing.task_cost(r.backend, int(r.params.get("n", 1))) for r in rows}
    total = sum(costs.values())
    if total and batch.owner_id is not None:
        charge(tx, batch.owner_id, total, batch_id, note=f"retry of {count} task(s)")
        set_costs(tx, costs)
    # a retry runs on the key the owner has now: their own (free) or the system's (charged)
    set_own_key(tx, batch_id, pricing.own_keys, [r.id for r in rows])
    return count
