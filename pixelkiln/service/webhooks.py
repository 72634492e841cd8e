"""Webhooks as the faces see them: a batch's deliveries, the secret they are signed with,
what a submitted webhook may name, and a bounded round of deliveries for a cron job.

Sending is the engine's (:mod:`pixelkiln.engine.webhooks`); here is what a
caller may read or change. A user's secret is theirs; without auth the
installation has one secret of its own, for batches without an owner.

>>> secret = await webhook_secret(ctx, caller)                  # doctest: +SKIP
>>> rows = await deliveries(ctx, caller, batch_id)
>>> done = await deliver_due(ctx, within=60)                    # `kiln webhooks deliver`
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection

from pixelkiln.config import Settings
from pixelkiln.db.batches import get_batch
from pixelkiln.db.webhooks import (
    DeliveryStatus,
    WebhookDelivery,
    ensure_secret,
    list_deliveries,
    pending_deliveries,
    rotate_secret,
    stored_secret,
)
from pixelkiln.engine.webhooks import Deliverer, literal_refusal, private_allowed
from pixelkiln.exceptions import Problem
from pixelkiln.service.context import Caller, ServiceContext
from pixelkiln.specs import BatchSpec
from pixelkiln.wire.schemas import WebhookDeliveryPublic


def _deliveries(conn: Connection, batch_id: int, scope: int | None) -> list[WebhookDelivery]:
    get_batch(conn, batch_id, scope)  # NotFoundError when the caller may not see it
    return list_deliveries(conn, batch_id)


async def deliveries(ctx: ServiceContext, caller: Caller, batch_id: int) -> list[WebhookDelivery]:
    """The batch's webhook deliveries, one per batch end, oldest first."""
    return await ctx.read(_deliveries, batch_id, caller.scope)


def delivery_public(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
    """A delivery as every face shows it (the API's list, ``kiln webhooks list --json``,
    the JSON report)."""
    pending = delivery.status == DeliveryStatus.PENDING
    return WebhookDeliveryPublic(
        id=delivery.id,
        batch_id=delivery.batch_id,
        event_id=delivery.event_id,
        url=delivery.url,
        status=str(delivery.status),
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if pending else None,
        response_code=delivery.response_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )


async def webhook_secret(ctx: ServiceContext, caller: Caller) -> str:
    """The secret the caller's webhooks are signed with, made on first use."""
    found = await ctx.read(stored_secret, caller.user_id)
    return found if found is not None else await ctx.write(ensure_secret, caller.user_id)


async def rotate_webhook_secret(ctx: ServiceContext, caller: Caller) -> str:
    """A new secret for the caller; every delivery from now on is signed with it."""
    return await ctx.write(rotate_secret, caller.user_id)


def webhook_problems(spec: BatchSpec, settings: Settings, source: str = "") -> list[Problem]:
    """A webhook naming a literal private, loopback or link-local address is refused at
    submit while such addresses are not allowed: it could never be delivered, and the
    user learns it now rather than from a failed delivery. Host names pass here; what
    they resolve to is checked when each delivery is sent."""
    if spec.webhook is None or private_allowed(settings):
        return []
    why = literal_refusal(spec.webhook)
    return [] if why is None else [Problem(source, "", "webhook", f"refused: {why}")]


@dataclass(frozen=True)
class DeliveryRound:
    """What ``kiln webhooks deliver`` did, and what is left."""

    delivered: int  #: tries the receivers acknowledged
    failed: int  #: tries that failed (due again later, or given up)
    pending: int  #: deliveries still waiting for a try, of every batch
    next_due_at: float | None  #: when the earliest of those is due


async def deliver_due(ctx: ServiceContext, *, within: float) -> DeliveryRound:
    """Send the deliveries that are due now, of every batch (including batch ends no
    process delivered yet), starting no try after ``within`` seconds: for a cron job or
    after an installation ran without a scheduler. Tries under way then finish."""
    deliverer = Deliverer(ctx.db, ctx.settings)
    try:
        done = await deliverer.deliver_round(deadline=time.monotonic() + within)
    finally:
        await deliverer.aclose()
    pending, next_due_at = await ctx.read(pending_deliveries)
    return DeliveryRound(done.delivered, done.failed, pending, next_due_at)
