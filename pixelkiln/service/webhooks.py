"""Webhooks as the faces see them: a batch's deliveries, and the secret they are signed with.

Sending is the engine's (:mod:`pixelkiln.engine.webhooks`); here is what a
caller may read or change. A user's secret is theirs; without auth the
installation has one secret of its own, for batches without an owner.

>>> secret = await webhook_secret(ctx, caller)                  # doctest: +SKIP
>>> rows = await deliveries(ctx, caller, batch_id)
"""

from __future__ import annotations

from sqlalchemy import Connection

from pixelkiln.db.batches import get_batch
from pixelkiln.db.webhooks import (
    WebhookDelivery,
    ensure_secret,
    list_deliveries,
    rotate_secret,
    stored_secret,
)
from pixelkiln.service.context import Caller, ServiceContext


def _deliveries(conn: Connection, batch_id: int, scope: int | None) -> list[WebhookDelivery]:
    get_batch(conn, batch_id, scope)  # NotFoundError when the caller may not see it
    return list_deliveries(conn, batch_id)


async def deliveries(ctx: ServiceContext, caller: Caller, batch_id: int) -> list[WebhookDelivery]:
    """The batch's webhook deliveries, one per batch end, oldest first."""
    return await ctx.read(_deliveries, batch_id, caller.scope)


async def webhook_secret(ctx: ServiceContext, caller: Caller) -> str:
    """The secret the caller's webhooks are signed with, made on first use."""
    found = await ctx.read(stored_secret, caller.user_id)
    return found if found is not None else await ctx.write(ensure_secret, caller.user_id)


async def rotate_webhook_secret(ctx: ServiceContext, caller: Caller) -> str:
    """A new secret for the caller; every delivery from now on is signed with it."""
    return await ctx.write(rotate_secret, caller.user_id)
