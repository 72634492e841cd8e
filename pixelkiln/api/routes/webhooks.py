"""``/api/v1/batches/{id}/webhooks`` (a batch's deliveries) and ``/api/v1/me/webhook-secret``."""

from __future__ import annotations

from fastapi import APIRouter

from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.service import webhooks as service
from pixelkiln.wire.schemas import WebhookDeliveryPublic, WebhookSecretPublic

router = APIRouter(tags=["webhooks"])


@router.get(
    "/batches/{batch_id:int}/webhooks",
    responses=ERRORS,
    summary="A batch's webhook deliveries (one per time it ended)",
)
async def batch_webhooks(
    batch_id: IdPath, ctx: CtxDep, caller: CallerDep
) -> list[WebhookDeliveryPublic]:
    """Oldest first: tries, status, the receiver's last answer or error, times."""
    found = await service.deliveries(ctx.service, caller, batch_id)
    return [service.delivery_public(d) for d in found]


@router.get(
    "/me/webhook-secret", responses=ERRORS, summary="The secret my webhooks are signed with"
)
async def my_webhook_secret(ctx: CtxDep, caller: CallerDep) -> WebhookSecretPublic:
    """Made on first use. Without auth: the installation's own secret."""
    return WebhookSecretPublic(secret=await service.webhook_secret(ctx.service, caller))


@router.post(
    "/me/webhook-secret/rotate",
    responses=ERRORS,
    summary="Replace the secret my webhooks are signed with",
)
async def rotate_my_webhook_secret(ctx: CtxDep, caller: CallerDep) -> WebhookSecretPublic:
    """Deliveries from now on are signed with the new secret; the old one stops working."""
    return WebhookSecretPublic(secret=await service.rotate_webhook_secret(ctx.service, caller))
