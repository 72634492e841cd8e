"""``/api/v1/batches/{id}/webhooks`` (a batch's deliveries) and ``/api/v1/me/webhook-secret``."""

from __future__ import annotations

from fastapi import APIRouter

from pixelkiln.api.deps import CallerDep, CtxDep, IdPath
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.db.webhooks import DeliveryStatus, WebhookDelivery
from pixelkiln.service import webhooks as service
from pixelkiln.wire.schemas import WebhookDeliveryPublic, WebhookSecretPublic

router = APIRouter(tags=["webhooks"])


def delivery_public(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
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


@router.get(
    "/batches/{batch_id}/webhooks",
    responses=ERRORS,
    summary="A batch's webhook deliveries (one per time it ended)",
)
async def batch_webhooks(
    batch_id: IdPath, ctx: CtxDep, caller: CallerDep
) -> list[WebhookDeliveryPublic]:
    """Oldest first: tries, status, the receiver's last answer or error, times."""
    found = await service.deliveries(ctx.service, caller, batch_id)
    return [delivery_public(d) for d in found]


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
