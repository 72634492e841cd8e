"""Webhooks: batch ends POSTed, signed, retried, listed; never lost, never sent twice.

Real SQLite and PostgreSQL, a real scheduler, and a real receiver on loopback
(:class:`pixelkiln.testing.FakeWebhookReceiver`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.batches import list_batches
from pixelkiln.db.database import Database
from pixelkiln.db.users import add_user
from pixelkiln.db.webhooks import DeliveryStatus, list_deliveries, stored_secret
from pixelkiln.engine.webhooks import (
    IDLE_BACKOFF,
    Deliverer,
    Round,
    WebhookRefusedError,
    address_kind,
    forbidden_address,
    idle_pause,
    literal_refusal,
)
from pixelkiln.exceptions import SpecError
from pixelkiln.service import LOCAL
from pixelkiln.service.webhooks import deliver_due
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeWebhookReceiver, wait_until
from pixelkiln.wire.schemas import WebhookPayload
from pixelkiln.wire.signing import verify
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def receiver() -> Iterator[FakeWebhookReceiver]:
    with FakeWebhookReceiver() as server:
        yield server


def _settings(tmp_path: Path, database_url: str, **webhooks: Any) -> Settings:
    return make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        webhooks={"backoff": 0.01, "backoff_max": 0.05, "poll_interval": 0.02, **webhooks},
        backends=[
            {
                "name": "placeholder",
                "type": "placeholder",
                "concurrency": 2,
                "options": {"reject_if_prompt_contains": "REJECT"},
            }
        ],
    )


async def _run(kiln: Kiln, url: str, *prompts: str, owner_id: int | None = None) -> int:
    spec = parse_batch(
        {
            "name": "hooked",
            "webhook": url,
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": p, "key": f"k{i}"} for i, p in enumerate(prompts, 1)],
        }
    )
    batch_id = await kiln.submit(spec, owner_id=owner_id)
    await kiln.run_until_done([batch_id])
    return batch_id


async def _deliver_until(deliverer: Deliverer, db: Database, batch_id: int, status: str) -> None:
    async def settled() -> bool:
        await deliverer.deliver_pending()
        rows = await db.aread(list_deliveries, batch_id)
        return bool(rows) and rows[-1].status == status

    await wait_until(settled)


async def test_a_batch_end_is_posted_signed_and_listed(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    async with Kiln(_settings(tmp_path, database_url)) as kiln:
        batch_id = await _run(kiln, receiver.hook_url, "a fox", "REJECT this")
        # kiln run delivers before it leaves (within [webhooks] timeout)
        [payload] = receiver.deliveries()
        secret = await kiln.db.aread(stored_secret, None)
        [row] = await kiln.db.aread(list_deliveries, batch_id)
    assert secret is not None and secret.startswith("whsec_")
    request = receiver.received("/hook")[0]
    assert verify(secret, request.body, request.headers)
    assert not verify(secret + "x", request.body, request.headers)
    assert request.headers["x-pixelkiln-delivery"] == str(row.id)
    parsed = WebhookPayload.model_validate(payload)
    assert (parsed.batch.id, parsed.batch.name, parsed.batch.status) == (
        batch_id,
        "hooked",
        "partial",
    )
    assert (parsed.summary.total, parsed.summary.succeeded, parsed.summary.failed) == (2, 1, 1)
    assert parsed.batch.counts.images == 1
    assert parsed.links.batch == f"/api/v1/batches/{batch_id}"
    assert (row.status, row.attempts, row.response_code) == (DeliveryStatus.DELIVERED, 1, 200)
    assert row.event_id == parsed.event_id and row.url == receiver.hook_url


async def test_failed_tries_are_retried_with_back_off_until_delivered(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    receiver.fail_first(2, 500)
    receiver.fail_first(1, 302)  # a redirect is a failed try, never followed
    async with Kiln(_settings(tmp_path, database_url)) as kiln:
        batch_id = await _run(kiln, receiver.hook_url, "a fox")
        deliverer = Deliverer(kiln.db, kiln.settings)
        await _deliver_until(deliverer, kiln.db, batch_id, DeliveryStatus.DELIVERED)
        [row] = await kiln.db.aread(list_deliveries, batch_id)
        await deliverer.aclose()
    assert [r.outcome for r in receiver.received("/hook")] == ["500", "500", "302", "ok"]
    assert (row.attempts, row.response_code, row.last_error) == (4, 200, None)
    assert len(receiver.deliveries()) == 1
    assert len({r.headers["x-pixelkiln-delivery"] for r in receiver.received("/hook")}) == 1


async def test_a_delivery_gives_up_after_max_attempts(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    receiver.fail_first(10, 503)
    async with Kiln(_settings(tmp_path, database_url, max_attempts=3)) as kiln:
        batch_id = await _run(kiln, receiver.hook_url, "a fox")
        deliverer = Deliverer(kiln.db, kiln.settings)
        await _deliver_until(deliverer, kiln.db, batch_id, DeliveryStatus.FAILED)
        await deliverer.deliver_pending()  # nothing more is sent
        [row] = await kiln.db.aread(list_deliveries, batch_id)
        await deliverer.aclose()
    assert (row.attempts, row.response_code, row.last_error) == (3, 503, "HTTP 503")
    assert len(receiver.received("/hook")) == 3


async def test_an_unanswered_try_times_out_and_kiln_run_does_not_wait_for_it(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    receiver.time_out_first(1, seconds=60)
    settings = _settings(tmp_path, database_url, timeout=0.5, backoff=60, backoff_max=60)
    async with Kiln(settings) as kiln:
        batch_id = await _run(kiln, receiver.hook_url, "a fox")  # returns after ~timeout
        [row] = await kiln.db.aread(list_deliveries, batch_id)
    # left for the next process, due again after the back-off
    assert (row.status, row.attempts) == (DeliveryStatus.PENDING, 1)
    assert row.last_error == "no answer within 0.5 s"
    assert row.next_attempt_at >= row.created_at + 60


async def test_a_batch_end_no_process_delivered_is_found_later(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    """The outbox: a batch that ended while no deliverer ran (here: cancelled before any
    scheduler started; in life, a crash after the end) is delivered by the next one."""
    settings = _settings(tmp_path, database_url)
    async with Kiln(settings, engine=False) as kiln:
        spec = parse_batch(
            {"name": "later", "webhook": receiver.hook_url, "tasks": [{"prompt": "a fox"}]}
        )
        batch_id = await kiln.submit(spec)
        await service.cancel(kiln.service, LOCAL, batch_id)
        assert await kiln.db.aread(list_deliveries, batch_id) == []
    async with Kiln(settings, engine=False) as kiln:
        deliverer = Deliverer(kiln.db, kiln.settings)
        assert await deliverer.deliver_pending() == 1
        assert await deliverer.deliver_pending() == 0  # delivered once, not again
        await deliverer.aclose()
    [payload] = receiver.deliveries()
    assert payload["batch"]["status"] == payload["summary"]["status"] == "cancelled"


async def test_a_batch_that_ends_again_owes_a_second_delivery(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    async with Kiln(_settings(tmp_path, database_url)) as kiln:
        batch_id = await _run(kiln, receiver.hook_url, "REJECT me")
        await service.retry(kiln.service, LOCAL, batch_id)
        await kiln.run_until_done([batch_id])
        rows = await kiln.db.aread(list_deliveries, batch_id)
    assert [r.status for r in rows] == [DeliveryStatus.DELIVERED] * 2
    assert rows[0].event_id < rows[1].event_id
    assert [p["event_id"] for p in receiver.deliveries()] == [r.event_id for r in rows]


async def test_two_processes_sharing_a_database_send_a_delivery_once(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    settings = _settings(tmp_path, database_url)
    receiver.faults.latency = 0.2  # both look while the first try is in flight
    async with Kiln(settings, engine=False) as kiln:
        for name in ("one", "two", "three"):
            spec = parse_batch(
                {"name": name, "webhook": receiver.hook_url, "tasks": [{"prompt": "x"}]}
            )
            await service.cancel(kiln.service, LOCAL, await kiln.submit(spec))
    first, second = Database.open(database_url), Database.open(database_url)
    try:
        deliverers = [Deliverer(first, settings), Deliverer(second, settings)]
        sent = await asyncio.gather(*(d.deliver_pending() for d in deliverers))
        sent += await asyncio.gather(*(d.deliver_pending() for d in deliverers))
        for deliverer in deliverers:
            await deliverer.aclose()
    finally:
        first.close()
        second.close()
    assert sum(sent) == 3
    assert sorted(p["batch"]["name"] for p in receiver.deliveries()) == ["one", "three", "two"]
    assert len(receiver.received("/hook")) == 3


async def test_with_auth_on_private_addresses_are_refused_unless_allowed(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    settings = _settings(tmp_path, database_url, max_attempts=5)
    settings.auth.enabled = True
    # a name passes the submit check (a literal 127.0.0.1 would not): checked when sent
    by_name = receiver.hook_url.replace("127.0.0.1", "localhost")
    async with Kiln(settings) as kiln:
        user, _ = await kiln.db.awrite(add_user, "ana")
        batch_id = await _run(kiln, by_name, "a fox", owner_id=user.id)
        [row] = await kiln.db.aread(list_deliveries, batch_id)
        secret = await kiln.db.aread(stored_secret, user.id)
    assert receiver.received("/hook") == []
    assert (row.status, row.attempts) == (DeliveryStatus.FAILED, 1)  # not retried
    assert row.last_error is not None and "127.0.0.1" in row.last_error
    assert "allow_private" in row.last_error
    assert secret is not None  # the user's own, made on first use
    settings.webhooks.allow_private = True
    async with Kiln(settings) as kiln:
        batch_id = await _run(kiln, by_name, "a fox", owner_id=user.id)
        [row] = await kiln.db.aread(list_deliveries, batch_id)
    assert row.status == DeliveryStatus.DELIVERED
    request = receiver.received("/hook")[0]
    assert verify(secret, request.body, request.headers)


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("127.0.0.1", True),
        ("10.0.0.8", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("fd00::1", True),
        ("::ffff:10.0.0.1", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_which_addresses_are_private(address: str, forbidden: bool) -> None:
    assert forbidden_address(address) is forbidden


async def test_a_checked_request_goes_to_the_checked_address_with_its_own_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With private addresses refused, the name is resolved once, every address checked,
    and the request sent to that address (Host and TLS name kept): no second lookup."""
    answers = {"hooks.example.com": ["93.184.216.34"], "mixed.example.com": ["8.8.8.8", "10.0.0.1"]}

    async def fake_resolve(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr("pixelkiln.engine.webhooks.resolve", fake_resolve)
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'kiln.db'}", allow_private=False)
    deliverer = Deliverer(Database.open(settings.storage.resolved_database_url()), settings)
    try:
        request = await deliverer._request("https://hooks.example.com:8443/in", b"{}", {})
        assert (request.url.host, request.url.port) == ("93.184.216.34", 8443)
        assert request.headers["host"] == "hooks.example.com:8443"
        assert request.extensions["sni_hostname"] == "hooks.example.com"
        with pytest.raises(WebhookRefusedError, match=r"10\.0\.0\.1"):
            await deliverer._request("http://mixed.example.com/in", b"{}", {})
    finally:
        await deliverer.aclose()
        deliverer.db.close()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("8.8.8.8", None),
    ],
)
def test_what_makes_an_address_private_is_named(address: str, kind: str | None) -> None:
    assert address_kind(address) == kind


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
        ("http://127.0.0.1:9/x", "127.0.0.1 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://localhost/", None),  # a name: checked when sent (what it resolves to changes)
        ("https://hooks.example.com/in", None),
        ("http://8.8.8.8/", None),
    ],
)
def test_a_literal_address_is_judged_by_the_same_rule(url: str, why: str | None) -> None:
    found = literal_refusal(url)
    assert found == why if why is None else found is not None and found.startswith(why)


async def test_kiln_run_with_auth_on_refuses_a_literal_private_webhook_before_storing(
    tmp_path: Path, database_url: str
) -> None:
    """The local installation too: with auth on its deliverer would refuse the address,
    so the batch is refused at once rather than run to an undeliverable end."""
    settings = _settings(tmp_path, database_url)
    settings.auth.enabled = True
    spec = parse_batch({"name": "x", "webhook": "http://10.0.0.1/in", "tasks": [{"prompt": "a"}]})
    async with Kiln(settings, engine=False) as kiln:
        with pytest.raises(SpecError) as caught:
            await kiln.submit(spec)
        assert await kiln.db.aread(list_batches) == []
    [problem] = caught.value.problems
    assert problem.field == "webhook" and "10.0.0.1 is a private address" in problem.message


async def test_a_bounded_round_starts_no_try_after_its_deadline(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    """``kiln webhooks deliver --within 0`` leaves what is due for later, untried; with
    time, it delivers batch ends no process delivered (the outbox)."""
    settings = _settings(tmp_path, database_url)
    async with Kiln(settings, engine=False) as kiln:
        spec = parse_batch({"name": "x", "webhook": receiver.hook_url, "tasks": [{"prompt": "a"}]})
        batch_id = await kiln.submit(spec)
        await service.cancel(kiln.service, LOCAL, batch_id)
        none = await deliver_due(kiln.service, within=0)
        [untried] = await kiln.db.aread(list_deliveries, batch_id)
        done = await deliver_due(kiln.service, within=30)
    assert (none.delivered, none.failed, none.pending) == (0, 0, 1)
    assert (untried.status, untried.attempts) == (DeliveryStatus.PENDING, 0)
    assert (done.delivered, done.failed, done.pending, done.next_due_at) == (1, 0, 0, None)
    assert len(receiver.deliveries()) == 1


def test_the_poll_backs_off_while_nothing_is_owed() -> None:
    pauses = [idle_pause(1.0, n) for n in range(6)]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # at most IDLE_BACKOFF intervals
    assert max(pauses) == IDLE_BACKOFF and idle_pause(1.0, 10**6) == IDLE_BACKOFF


async def test_a_batch_ending_in_a_running_scheduler_is_delivered_without_waiting_for_a_poll(
    tmp_path: Path, database_url: str, receiver: FakeWebhookReceiver
) -> None:
    # a poll an hour apart: only the scheduler's poke on the batch's end can send it
    settings = _settings(tmp_path, database_url, poll_interval=3600.0)
    async with Kiln(settings) as kiln:
        deliverer = kiln.engine().deliverer
        passes: list[Round] = []
        pass_once = deliverer.deliver_round

        async def counted(deadline: float | None = None) -> Round:
            passes.append(await pass_once(deadline))
            return passes[-1]

        deliverer.deliver_round = counted  # type: ignore[method-assign]
        scheduler = kiln.new_scheduler()
        running = asyncio.create_task(scheduler.run())
        try:
            await wait_until(lambda: len(passes) == 1)  # its first pass, then an hour's pause
            spec = parse_batch(
                {"name": "hooked", "webhook": receiver.hook_url, "tasks": [{"prompt": "a fox"}]}
            )
            batch_id = await kiln.submit(spec)
            scheduler.wake()
            await wait_until(lambda: len(receiver.deliveries()) == 1)

            async def recorded() -> bool:  # written once the receiver's answer is in
                [row] = await kiln.db.aread(list_deliveries, batch_id)
                return row.status == DeliveryStatus.DELIVERED

            await wait_until(recorded)
        finally:
            scheduler.stop()
            await running
