"""Webhooks over the API: a batch's deliveries listed, the signing secret shown and rotated."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from apikit import Api, Live, spec

from pixelkiln import AsyncClient
from pixelkiln.testing import FakeWebhookReceiver, wait_until
from pixelkiln.wire.signing import verify

pytestmark = pytest.mark.anyio

ApiMaker = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


async def _delivered(kiln: AsyncClient, batch_id: int) -> bool:
    rows = await kiln.webhooks(batch_id)
    return bool(rows) and rows[-1].status == "delivered"


async def test_deliveries_are_listed_and_signed_with_the_shown_secret(live: Live) -> None:
    with FakeWebhookReceiver() as receiver:
        receiver.fail_first(1, 500)
        async with AsyncClient(live.url) as kiln:
            batch = await kiln.create_batch(
                {**spec("a fox"), "webhook": receiver.hook_url}, wait=True
            )
            assert batch.webhook == receiver.hook_url
            await wait_until(lambda: _delivered(kiln, batch.id))
            [row] = await kiln.webhooks(batch.id)
            secret = await kiln.webhook_secret()
            assert secret == await kiln.webhook_secret()  # made once, then kept
            rotated = await kiln.webhook_secret(rotate=True)
            again = await kiln.create_batch(
                {**spec("a hen"), "webhook": receiver.hook_url}, wait=True
            )
            await wait_until(lambda: _delivered(kiln, again.id))
    assert (row.attempts, row.response_code, row.last_error) == (2, 200, None)
    assert row.delivered_at is not None and row.next_attempt_at is None
    first, second = [r for r in receiver.received("/hook") if r.outcome == "ok"]
    assert verify(secret, first.body, first.headers)
    assert rotated != secret
    assert verify(rotated, second.body, second.headers)
    assert not verify(secret, second.body, second.headers)


async def test_a_users_deliveries_and_secret_are_their_own(make_api: ApiMaker) -> None:
    settings: dict[str, Any] = {"auth": {"enabled": True}, "webhooks": {"allow_private": True}}
    with FakeWebhookReceiver() as receiver:
        async with make_api(**settings) as api:
            _, ana = await api.add_user("ana")
            _, bob = await api.add_user("bob")
            made = await ana.post(
                "/api/v1/batches", json={**spec("a fox"), "webhook": receiver.hook_url}
            )
            batch_id = made.json()["id"]
            await api.wait_finished(batch_id, ana)

            async def delivered() -> bool:
                rows = (await ana.get(f"/api/v1/batches/{batch_id}/webhooks")).json()
                return bool(rows) and rows[0]["status"] == "delivered"

            await wait_until(delivered)
            hidden = await bob.get(f"/api/v1/batches/{batch_id}/webhooks")
            ana_secret = (await ana.get("/api/v1/me/webhook-secret")).json()
            bob_secret = (await bob.get("/api/v1/me/webhook-secret")).json()
            anonymous = await api.client.get("/api/v1/me/webhook-secret")
    assert hidden.status_code == 404
    assert anonymous.status_code == 401
    assert ana_secret["secret"] != bob_secret["secret"]
    assert ana_secret["signature_header"] == "X-Pixelkiln-Signature"
    [request] = receiver.received("/hook")
    assert verify(ana_secret["secret"], request.body, request.headers)


async def test_a_webhook_that_is_not_http_is_refused_with_its_field(api: Api) -> None:
    answer = await api.client.post(
        "/api/v1/batches", json={**spec("a fox"), "webhook": "ftp://example.com/x"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["problems"][0]["field"] == "webhook"
