"""``POST /api/v1/batches/{id}/regenerate``, image history in the records, the clients."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Live, api_settings, running_api

from pixelkiln import ApiError, AsyncClient, Client

pytestmark = pytest.mark.anyio

CREDITS = {"enabled": True, "per_image": 1}
#: the placeholder no longer rejects: the generator was fixed between two runs
FIXED = [{"name": "placeholder", "type": "placeholder", "concurrency": 4}]


def storyboard() -> dict[str, Any]:
    """Six shots s1..s6; s3 and s5 are rejected by the test backend."""
    return {
        "name": "storyboard",
        "defaults": {"width": 64, "height": 64},
        "tasks": [
            {"key": f"s{i}", "prompt": f"shot {i}" + (" REJECT" if i in (3, 5) else "")}
            for i in range(1, 7)
        ],
    }


async def _wait(client: httpx.AsyncClient, batch_id: int) -> dict[str, Any]:
    for _ in range(1000):
        body: dict[str, Any] = (await client.get(f"/api/v1/batches/{batch_id}")).json()
        if body["finished"]:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not finish")


async def test_regenerate_over_the_api_keeps_history_and_charges_like_a_retry(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    settings = api_settings(data, auth={"enabled": True}, credits=CREDITS)
    async with running_api(settings) as api:
        _, user = await api.add_user("ann", credits=20)
        made = (await user.post("/api/v1/batches?wait=true", json=storyboard())).json()
        assert made["status"] == "partial" and made["counts"]["images"] == 4
        token = user.headers["Authorization"]
    fixed = api_settings(data, auth={"enabled": True}, credits=CREDITS, backends=FIXED)
    async with running_api(fixed) as api:
        user = api.with_token(token.removeprefix("Bearer "))
        assert (await user.get("/api/v1/me/credits")).json()["balance"] == 20 - 6 + 2
        r = await user.post(f"/api/v1/batches/{made['id']}/regenerate", json={"keys": ["s3", "s2"]})
        assert r.status_code == 200, r.text
        assert r.json()["regenerated"] == 2  # the scheduler may have started them already
        assert (await user.get("/api/v1/me/credits")).json()["balance"] == 16 - 2
        done = await _wait(user, made["id"])
        assert done["status"] == "partial" and done["counts"]["images"] == 5

        tasks = {t["key"]: t for t in done["tasks"]}
        assert (tasks["s2"]["run"], tasks["s3"]["run"], tasks["s1"]["run"]) == (1, 1, 0)
        assert [i["run"] for i in tasks["s2"]["images"] + tasks["s3"]["images"]] == [1, 1]
        s2 = (await user.get(f"/api/v1/tasks/{tasks['s2']['id']}")).json()
        assert [(i["run"], i["superseded"]) for i in s2["images"]] == [(1, False)]
        s2_all = (await user.get(f"/api/v1/tasks/{tasks['s2']['id']}?history=true")).json()
        assert [(i["run"], i["superseded"]) for i in s2_all["images"]] == [(0, True), (1, False)]
        old = s2_all["images"][0]
        assert (await user.get(old["url"])).content.startswith(b"\x89PNG")  # still served

        records = (await user.get(f"/api/v1/images?batch_id={made['id']}")).json()
        assert records["total"] == 5 and old["id"] not in {i["id"] for i in records["items"]}
        history = (await user.get(f"/api/v1/images?batch_id={made['id']}&history=true")).json()
        assert history["total"] == 6 and old["id"] in {i["id"] for i in history["items"]}

        archive = await user.get(f"/api/v1/batches/{made['id']}/images.zip")
        names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
        assert len(names) == 5 and any("_0_r1.png" in n for n in names)


async def test_regenerate_errors_are_clear(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "data", auth={"enabled": True}, credits=CREDITS)
    async with running_api(settings, run_scheduler=False) as api:
        _, user = await api.add_user("ann", credits=6)
        batch = (await user.post("/api/v1/batches", json=storyboard())).json()
        url = f"/api/v1/batches/{batch['id']}/regenerate"

        unknown = await user.post(url, json={"keys": ["s1", "nope"]})
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]["message"]
        busy = await user.post(url, json={"keys": ["s1", "s4"]})
        assert busy.status_code == 409
        assert "s1, s4 are still pending or running" in busy.json()["error"]["message"]
        for body in ({}, {"keys": ["s1"], "task_ids": [1]}, {"keys": []}, {"keys": ["s1"], "x": 1}):
            bad = await user.post(url, json=body)
            assert bad.status_code == 422, body
        missing = await user.post("/api/v1/batches/999/regenerate", json={"keys": ["s1"]})
        assert missing.status_code == 404
        _, other = await api.add_user("bob", credits=6)
        assert (await other.post(url, json={"keys": ["s1"]})).status_code == 404

        # no scheduler runs here: cancelling ends the batch (refunded in full)
        await user.post(f"/api/v1/batches/{batch['id']}/cancel")
        every = {"keys": [f"s{i}" for i in range(1, 7)]}
        assert (await user.post(url, json=every)).json()["regenerated"] == 6
        assert (await user.get("/api/v1/me/credits")).json()["balance"] == 0
        await user.post(f"/api/v1/batches/{batch['id']}/cancel")
        _, admin = await api.add_user("root", admin=True)
        me = (await user.get("/api/v1/me")).json()
        await admin.post(f"/api/v1/admin/users/{me['id']}/credits", json={"amount": -1})
        refused = await user.post(url, json=every)
        assert refused.status_code == 402  # 6 credits due, 5 held: nothing moves
        after = (await user.get(f"/api/v1/batches/{batch['id']}")).json()
        assert after["status"] == "cancelled" and {t["run"] for t in after["tasks"]} == {1}


async def test_clients_regenerate_by_key_and_by_id_with_replace(live: Live) -> None:
    async with AsyncClient(live.url) as kiln:
        batch = await kiln.create_batch(storyboard(), wait=True)
        s1 = next(t for t in batch.tasks if t.key == "s1")
        again = await kiln.regenerate(batch.id, keys=["s1"])
        assert again.regenerated == 1
        await _wait_client(kiln, batch.id)
        history = await kiln.get_task(s1.id, history=True)
        assert [(i.run, i.superseded) for i in history.images] == [(0, True), (1, False)]
        assert [i.run for i in (await kiln.get_task(s1.id)).images] == [1]
        with pytest.raises(ApiError) as unknown:
            await kiln.regenerate(batch.id, keys=["zz"])
        assert (unknown.value.status, unknown.value.code) == (404, "not_found")

    def sync_replace() -> list[tuple[int, bool]]:
        with Client(live.url) as client:
            assert client.regenerate(batch.id, task_ids=[s1.id], replace=True).regenerated == 1
            for _ in range(1000):
                if client.get_batch(batch.id).finished:
                    break
                time.sleep(0.02)
            return [(i.run, i.superseded) for i in client.get_task(s1.id, history=True).images]

    assert await asyncio.to_thread(sync_replace) == [(2, False)]


async def _wait_client(kiln: AsyncClient, batch_id: int) -> None:
    for _ in range(1000):
        if (await kiln.get_batch(batch_id)).finished:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not finish")


async def test_an_item_with_a_numeric_id_is_regenerated_by_that_number(tmp_path: Path) -> None:
    async with running_api(api_settings(tmp_path / "data"), run_scheduler=False) as api:
        spec = {
            "name": "deck",
            "items": [{"id": 3, "prompt": "a slide"}, {"id": "b", "prompt": "x"}],
        }
        batch = (await api.client.post("/api/v1/batches", json=spec)).json()
        await api.client.post(f"/api/v1/batches/{batch['id']}/cancel")
        url = f"/api/v1/batches/{batch['id']}/regenerate"
        again = await api.client.post(url, json={"keys": [3]})
        assert again.status_code == 200, again.text
        assert again.json()["regenerated"] == 1
