"""Users' own provider keys: stored encrypted, sent with their tasks' requests, priced 0.

A real fake OpenAI server records the ``Authorization`` header of every request,
so each test can see which key went with which user's task.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, api_settings, running_api, spec
from sqlalchemy import select

from pixelkiln.db.tables import provider_keys
from pixelkiln.testing.openai import FakeOpenAI

pytestmark = pytest.mark.anyio

SYSTEM_KEY = "sk-system-0123456789"
FRANK_KEY = "sk-frank-own-key-9876"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=(SYSTEM_KEY, FRANK_KEY)) as server:
        yield server


def settings_with_openai(tmp_path: Path, fake: FakeOpenAI) -> Any:
    base = api_settings(tmp_path / "data")
    backends = [b.model_dump() for b in base.backends] + [
        {"name": "oa", "type": "openai", "urls": [fake.url], "api_key": SYSTEM_KEY, "timeout": 10}
    ]
    return api_settings(
        tmp_path / "data",
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1},
        backends=backends,
    )


def keys_sent(fake: FakeOpenAI) -> list[str]:
    """The bearer keys of the image requests the fake received, in order."""
    return [
        r.headers.get("authorization", "").removeprefix("Bearer ")
        for r in fake.requests
        if r.path.startswith("/v1/images/")
    ]


async def balance(client: Any) -> int:
    return int((await client.get("/api/v1/me")).json()["balance"])


async def test_own_key_goes_with_the_owners_tasks_and_costs_nothing(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with running_api(settings_with_openai(tmp_path, fake)) as api:
        _, frank = await api.add_user("frank", credits=0)
        _, gina = await api.add_user("gina", credits=5)
        stored = await frank.put("/api/v1/me/provider-keys/oa", json={"api_key": FRANK_KEY})
        assert stored.status_code == 204
        listed = {b["name"]: b for b in (await frank.get("/api/v1/backends")).json()}
        assert listed["oa"] == {**listed["oa"], "credits_per_image": 0, "own_key": True}
        assert listed["oa"]["takes_own_key"] and not listed["placeholder"]["takes_own_key"]
        await assert_stored_encrypted_and_never_shown(api, frank)

        mine = await frank.post("/api/v1/batches", json=spec("a fox", "a hen", backend="oa"))
        assert mine.status_code == 201, mine.text
        done = await api.wait_finished(mine.json()["id"], frank)
        assert done["status"] == "completed"
        assert keys_sent(fake) == [FRANK_KEY, FRANK_KEY]
        assert await balance(frank) == 0

        theirs = await gina.post("/api/v1/batches", json=spec("a cat", backend="oa"))
        assert theirs.status_code == 201
        assert (await api.wait_finished(theirs.json()["id"], gina))["status"] == "completed"
        assert keys_sent(fake)[2:] == [SYSTEM_KEY]
        assert await balance(gina) == 4  # charged on the system's key

        assert (await frank.delete("/api/v1/me/provider-keys/oa")).status_code == 204
        assert (await frank.get("/api/v1/me/provider-keys")).json() == []
        unpaid = await frank.post("/api/v1/batches", json=spec("a fox", backend="oa"))
        assert unpaid.status_code == 402  # without the key, frank pays like anyone


async def assert_stored_encrypted_and_never_shown(api: Api, frank: Any) -> None:
    listed = await frank.get("/api/v1/me/provider-keys")
    assert [k["backend"] for k in listed.json()] == ["oa"]
    rows = await api.ctx.read(lambda c: list(c.execute(select(provider_keys)).all()))
    assert len(rows) == 1 and FRANK_KEY not in rows[0].ciphertext
    assert api.ctx.keys.decrypt(rows[0].ciphertext) == FRANK_KEY
    for path in (
        "/api/v1/me",
        "/api/v1/me/credits",
        "/api/v1/backends",
        "/api/v1/me/provider-keys",
    ):
        assert FRANK_KEY not in (await frank.get(f"/api/v1/{path}")).text
    unknown = await frank.put("/api/v1/me/provider-keys/nope", json={"api_key": FRANK_KEY})
    assert unknown.status_code == 404


async def test_a_wrong_own_key_fails_only_that_task_and_never_shows(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    wrong = "sk-wrong-key-5555"
    async with running_api(settings_with_openai(tmp_path, fake)) as api:
        _, frank = await api.add_user("frank", credits=0)
        await frank.put("/api/v1/me/provider-keys/oa", json={"api_key": wrong})
        created = await frank.post("/api/v1/batches", json=spec("a fox", backend="oa"))
        done = await api.wait_finished(created.json()["id"], frank)
        assert done["status"] == "failed"
        task = done["tasks"][0]
        assert "Incorrect API key" in task["error"] and task["attempts"] == 1
        assert keys_sent(fake) == [wrong]
        events = (await frank.get(f"/api/v1/batches/{created.json()['id']}")).text
        assert wrong not in events and wrong not in task["error"]
        log_dir = tmp_path / "data"
        for path in log_dir.rglob("*.log"):
            assert wrong not in path.read_text()


async def test_storing_a_key_for_a_local_generator_is_refused(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with running_api(settings_with_openai(tmp_path, fake)) as api:
        _, frank = await api.add_user("frank")
        r = await frank.put("/api/v1/me/provider-keys/placeholder", json={"api_key": "k" * 12})
        assert r.status_code == 422
        assert r.json()["error"] == {
            "code": "own_key_not_supported",
            "message": r.json()["error"]["message"],
            "field": "backend",
        }
        assert (await frank.get("/api/v1/me/provider-keys")).json() == []


async def test_key_removed_before_the_task_runs_fails_it_and_retry_pays(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    """No free ride on the system's key: the task fails; a retry is charged and uses ours."""
    settings = settings_with_openai(tmp_path, fake)
    async with running_api(settings, run_scheduler=False) as api:
        assert api.ctx.runner is None  # the API alone: nothing runs until a scheduler does
        _, frank = await api.add_user("frank", credits=3)
        await frank.put("/api/v1/me/provider-keys/oa", json={"api_key": FRANK_KEY})
        created = await frank.post("/api/v1/batches", json=spec("a fox", backend="oa"))
        batch_id = created.json()["id"]
        assert await balance(frank) == 3
        assert (await frank.get(f"/api/v1/batches/{batch_id}")).json()["status"] == "queued"
        assert (await frank.delete("/api/v1/me/provider-keys/oa")).status_code == 204

        await api.ctx.kiln.run_until_done([batch_id])
        failed = (await frank.get(f"/api/v1/batches/{batch_id}")).json()
        assert failed["status"] == "failed" and keys_sent(fake) == []
        assert "has since been removed" in failed["tasks"][0]["error"]

        retried = await frank.post(f"/api/v1/batches/{batch_id}/retry")
        assert retried.status_code == 200, retried.text
        assert await balance(frank) == 2  # now on the system's key, so charged
        await api.ctx.kiln.run_until_done([batch_id])
        done = (await frank.get(f"/api/v1/batches/{batch_id}")).json()
        assert done["status"] == "completed" and keys_sent(fake) == [SYSTEM_KEY]
