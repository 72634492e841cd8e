"""Credits: charged with the batch, refunded for failed and cancelled tasks, never overspent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apikit import Api, api_settings, running_api, spec
from sqlalchemy import Connection, func, select

from pixelkiln.db.credits import grant
from pixelkiln.db.tables import batches, credit_ledger, tasks

pytestmark = pytest.mark.anyio


def ledger_of(conn: Connection, user_id: int) -> list[tuple[int, str]]:
    query = select(credit_ledger.c.delta, credit_ledger.c.reason).where(
        credit_ledger.c.user_id == user_id
    )
    return [(row.delta, row.reason) for row in conn.execute(query.order_by(credit_ledger.c.id))]


def costs_of(conn: Connection, batch_id: int) -> list[int]:
    query = select(tasks.c.cost).where(tasks.c.batch_id == batch_id).order_by(tasks.c.position)
    return list(conn.execute(query).scalars())


async def balance(client: object) -> int:
    response = await client.get("/api/v1/me/credits")  # type: ignore[attr-defined]
    value: int = response.json()["balance"]
    return value


async def test_a_batch_is_charged_per_image_per_backend(auth_api: Api) -> None:
    _, user = await auth_api.add_user("ann", credits=20)
    body = spec("one", "two")
    body["tasks"][0]["n"] = 3
    body["tasks"][1]["backend"] = "slow"  # 3 credits an image there
    r = await user.post("/api/v1/batches", json=body)
    assert r.status_code == 201, r.text
    assert await balance(user) == 20 - 3 - 3
    assert await auth_api.ctx.read(costs_of, r.json()["id"]) == [3, 3]
    entries = (await user.get("/api/v1/me/credits")).json()["entries"]
    assert [(e["delta"], e["reason"]) for e in entries] == [(-6, "charge"), (20, "grant")]
    assert entries[0]["batch_id"] == r.json()["id"]


async def test_an_unaffordable_batch_is_402_and_nothing_is_queued(auth_api: Api) -> None:
    _, user = await auth_api.add_user("ben", credits=2)
    r = await user.post("/api/v1/batches", json=spec("a", "b", "c"))
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    assert "costs 3" in r.json()["error"]["message"]
    assert (
        await auth_api.ctx.read(
            lambda c: c.execute(select(func.count()).select_from(batches)).scalar()
        )
        == 0
    )
    assert (
        await auth_api.ctx.read(
            lambda c: c.execute(select(func.count()).select_from(tasks)).scalar()
        )
        == 0
    )
    assert await balance(user) == 2
    assert (await user.post("/api/v1/batches", json=spec("a", "b"))).status_code == 201
    assert await balance(user) == 0


async def test_fifty_racing_creates_with_credits_for_25_accept_exactly_25(auth_api: Api) -> None:
    user_id, user = await auth_api.add_user("race", credits=25)
    responses = await asyncio.gather(
        *[user.post("/api/v1/batches", json=spec(f"task {i}")) for i in range(50)]
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 25 + [402] * 25
    assert await balance(user) == 0
    entries = await auth_api.ctx.read(ledger_of, user_id)
    assert sum(d for d, _ in entries) == 0
    assert entries.count((-1, "charge")) == 25 and entries[0] == (25, "grant")
    running = 0
    for delta, _ in entries:  # the balance never dipped below zero on the way
        running += delta
        assert running >= 0
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 25


async def test_failed_tasks_are_refunded_once(auth_api: Api) -> None:
    user_id, user = await auth_api.add_user("cat", credits=10)
    batch = (
        await user.post("/api/v1/batches?wait=true", json=spec("good", "REJECT a", "REJECT b"))
    ).json()
    assert batch["status"] == "partial"
    assert await balance(user) == 10 - 1  # 3 charged, 2 refunded
    assert await auth_api.ctx.read(costs_of, batch["id"]) == [1, 0, 0]
    reasons = [r for _, r in await auth_api.ctx.read(ledger_of, user_id)]
    assert reasons == ["grant", "charge"] + ["refund"] * reasons.count("refund")
    assert sum(d for d, r in await auth_api.ctx.read(ledger_of, user_id) if r == "refund") == 2
    # a retry is charged again, and refunded again when it fails again
    retried = await user.post(f"/api/v1/batches/{batch['id']}/retry")
    assert retried.json()["retried"] == 2
    await auth_api.wait_finished(batch["id"], user)
    assert await balance(user) == 9


async def test_a_retry_the_user_cannot_afford_is_402(auth_api: Api) -> None:
    _, user = await auth_api.add_user("dan", credits=2)
    batch = (await user.post("/api/v1/batches?wait=true", json=spec("REJECT a", "REJECT b"))).json()
    _, admin = await auth_api.add_user("root", admin=True)
    me = (await user.get("/api/v1/me")).json()
    await admin.post(f"/api/v1/admin/users/{me['id']}/credits", json={"amount": -1})
    r = await user.post(f"/api/v1/batches/{batch['id']}/retry")
    assert r.status_code == 402
    after = (await user.get(f"/api/v1/batches/{batch['id']}")).json()
    assert after["status"] == "failed" and after["counts"]["failed"] == 2


async def test_cancelled_tasks_are_refunded(auth_api: Api) -> None:
    user_id, user = await auth_api.add_user("eve", credits=30)
    batch = (
        await user.post("/api/v1/batches", json=spec(*[f"s{i}" for i in range(8)], backend="slow"))
    ).json()
    assert await balance(user) == 30 - 24
    cancelled = (await user.post(f"/api/v1/batches/{batch['id']}/cancel")).json()
    done = cancelled["counts"]["succeeded"]
    assert await balance(user) == 30 - 3 * done
    assert sum(await auth_api.ctx.read(costs_of, batch["id"])) == 3 * done
    entries = await auth_api.ctx.read(ledger_of, user_id)
    assert sum(d for d, _ in entries) == 30 - 3 * done


async def test_admins_grant_and_take_back_but_never_below_zero(auth_api: Api) -> None:
    user_id, user = await auth_api.add_user("fay")
    _, admin = await auth_api.add_user("root", admin=True)
    r = await admin.post(f"/api/v1/admin/users/{user_id}/credits", json={"amount": 7, "note": "hi"})
    assert r.status_code == 200 and r.json()["balance"] == 7
    too_much = await admin.post(f"/api/v1/admin/users/{user_id}/credits", json={"amount": -8})
    assert too_much.status_code == 402
    back = await admin.post(f"/api/v1/admin/users/{user_id}/credits", json={"amount": -7})
    assert back.json()["balance"] == 0
    nobody = await admin.post("/api/v1/admin/users/999/credits", json={"amount": 1})
    assert nobody.status_code == 404
    assert await balance(user) == 0


async def test_without_auth_nothing_is_charged(api: Api) -> None:
    r = await api.client.post("/api/v1/batches", json=spec("free"))
    assert r.status_code == 201
    assert (await api.client.get("/api/v1/me/credits")).json() == {
        "user_id": None,
        "balance": 0,
        "entries": [],
    }
    assert (await api.client.get("/api/v1/me")).status_code == 409


@pytest.mark.postgres
async def test_charges_refunds_and_races_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    settings = api_settings(
        tmp_path / "data",
        storage={"database_url": postgres_url},
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1},
    )
    async with running_api(settings) as api:
        user_id, user = await api.add_user("pg", credits=10)
        # seeds below 2**31: images.seed is a 32-bit integer on PostgreSQL (reported)
        responses = await asyncio.gather(
            *[user.post("/api/v1/batches", json=spec(f"p{i}", seed=i)) for i in range(20)]
        )
        assert sorted(r.status_code for r in responses) == [201] * 10 + [402] * 10
        assert await balance(user) == 0
        _, admin = await api.add_user("root", admin=True)
        await admin.post(f"/api/v1/admin/users/{user_id}/credits", json={"amount": 2})
        failed = (
            await user.post("/api/v1/batches?wait=true", json=spec("ok", "REJECT", seed=7))
        ).json()
        assert failed["status"] == "partial" and await balance(user) == 1
        assert sum(d for d, _ in await api.ctx.read(ledger_of, user_id)) == 1
        found = (await user.get("/api/v1/images", params={"q": "ok"})).json()
        assert found["total"] == 1
        assert (await admin.get("/api/v1/admin/stats")).json()["tasks"]["failed"] == 1


def kiln_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `kiln` command on the API's data folder, credits on as in ``auth_api``."""
    # the database stays the API's (KILN_TEST_DATABASE puts it in this variable)
    kept = ("KILN_STORAGE__DATABASE_URL",)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_") or k in kept}
    env |= {
        "COLUMNS": "200",
        "KILN_STORAGE__DATA_DIR": str(data_dir),
        "KILN_CREDITS__ENABLED": "true",
        "KILN_CREDITS__PER_IMAGE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pixelkiln.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_kiln_retry_charges_the_batch_owner_as_the_api_does(auth_api: Api) -> None:
    user_id, user = await auth_api.add_user("gus", credits=2)
    batch = (await user.post("/api/v1/batches?wait=true", json=spec("REJECT a", "REJECT b"))).json()
    assert batch["status"] == "failed" and await balance(user) == 2  # charged 2, refunded 2
    data_dir = auth_api.settings.storage.data_dir

    done = await asyncio.to_thread(kiln_cli, data_dir, "retry", str(batch["id"]), "--no-run")
    assert done.returncode == 0, done.stderr
    assert "2 task(s) back in the queue" in done.stdout
    await auth_api.wait_finished(batch["id"], user)  # the server runs them: rejected again
    entries = await auth_api.ctx.read(ledger_of, user_id)
    assert [e for e in entries if e[1] == "charge"] == [(-2, "charge")] * 2  # create, retry
    assert sum(d for d, r in entries if r == "refund") == 4
    assert await balance(user) == 2

    # nothing left to pay with: the retry is refused and nothing is queued
    await auth_api.ctx.write(grant, user_id, -2)
    refused = await asyncio.to_thread(kiln_cli, data_dir, "retry", str(batch["id"]), "--no-run")
    assert refused.returncode == 1
    assert "costs 2 credit(s); the balance is 0; add credits with 'kiln users grant" in (
        refused.stderr
    )
    after = (await user.get(f"/api/v1/batches/{batch['id']}")).json()
    assert after["status"] == "failed" and after["counts"]["failed"] == 2
