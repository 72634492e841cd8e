"""Deleting the newest batch: its id and its files never meet the next batch's."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, api_settings, running_api, spec

from pixelkiln.db.records import delete_batch
from pixelkiln.service.control import remove_batch_files

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The API on SQLite and on PostgreSQL."""
    data = tmp_path / "data"
    settings = api_settings(data, storage={"data_dir": str(data), "database_url": database_url})
    async with running_api(settings) as running:
        yield running


async def run(api: Api, *prompts: str) -> dict[str, Any]:
    r = await api.client.post("/api/v1/batches?wait=true", json=spec(*prompts))
    assert r.status_code == 201, r.text
    batch: dict[str, Any] = r.json()
    assert batch["status"] == "completed", batch
    return batch


def files_of(api: Api, batch_id: int) -> dict[str, tuple[str, int]]:
    """A batch's image files: name → (sha256, modification time)."""
    folder = api.ctx.storage.absolute(f"images/{batch_id}")
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
    }


async def served(api: Api, batch: dict[str, Any]) -> list[int]:
    return [
        (await api.client.get(image["url"])).status_code
        for task in batch["tasks"]
        for image in task["images"]
    ]


async def test_the_next_batch_gets_a_new_id_and_the_old_files_stay_as_they_were(
    api: Api,
) -> None:
    kept = await run(api, "a fox", "a hen")
    newest = await run(api, "a wolf", "a bear")
    before = files_of(api, kept["id"])
    assert (await api.client.delete(f"/api/v1/batches/{newest['id']}")).status_code == 204
    assert not api.ctx.storage.absolute(f"images/{newest['id']}").exists()

    later = await run(api, "an owl", "a mole")
    assert later["id"] > newest["id"]
    assert (await api.client.get(f"/api/v1/batches/{newest['id']}")).status_code == 404
    old_images = {i["id"] for t in newest["tasks"] for i in t["images"]}
    assert all(i["id"] > max(old_images) for t in later["tasks"] for i in t["images"])
    assert len(files_of(api, later["id"])) == 2 and await served(api, later) == [200, 200]
    assert files_of(api, kept["id"]) == before


async def test_files_of_a_deleted_batch_removed_late_never_touch_a_newer_batch(api: Api) -> None:
    """A delete whose file removal lands after the next batch has run (the rows go first)."""
    await run(api, "a fox")
    newest = await run(api, "a wolf", "a bear")
    await api.ctx.write(delete_batch, newest["id"])
    later = await run(api, "an owl", "a mole")
    await api.ctx.run(remove_batch_files, api.ctx.storage, newest["id"])
    assert later["id"] != newest["id"]
    assert len(files_of(api, later["id"])) == 2 and await served(api, later) == [200, 200]
