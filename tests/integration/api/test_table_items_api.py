"""A table of slides imported over HTTP with a ``template`` form field: rows made items,
bad form fields and rows answered 422 with where, and the exported CSV imported again;
on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, api_settings, running_api

pytestmark = pytest.mark.anyio
TEMPLATE = "{style}. Slide {page_num}, {title}: {visual_desc}"
SLIDES = (
    b"id,page_num,title,visual_desc,n\n"
    b"cover,1,Q3 review,a rising line,2\n"
    b"growth,2,Growth,a young tree,1\n"
)


@pytest.fixture
async def users_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    settings = api_settings(
        tmp_path / "data", storage={"database_url": database_url}, auth={"enabled": True}
    )
    async with running_api(settings) as running:
        yield running


async def _import(client: Any, data: bytes, **fields: str) -> Any:
    return await client.post(
        "/api/v1/batches/import?wait=true", files={"file": ("slides.csv", data)}, data=fields
    )


async def test_import_with_a_template_and_again_from_its_export(users_api: Api) -> None:
    _, alice = await users_api.add_user("alice")
    style = json.dumps({"style": "flat"})
    r = await _import(alice, SLIDES, template=TEMPLATE, vars=style)
    assert r.status_code == 201, r.text
    batch = r.json()
    cover, growth = batch["tasks"]
    assert (cover["key"], growth["key"]) == ("cover", "growth")
    assert cover["prompt"] == "flat. Slide 1, Q3 review: a rising line"
    assert cover["item"] == {
        "id": "cover",
        "page_num": "1",
        "title": "Q3 review",
        "visual_desc": "a rising line",
        "n": "2",
    }
    assert (cover["status"], growth["status"]) == ("succeeded", "succeeded")

    r = await alice.get(f"/api/v1/batches/{batch['id']}/export.csv")
    assert r.status_code == 200, r.text
    exported = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [(row["key"], row["title"], row["prompt"]) for row in exported] == [
        ("cover", "Q3 review", ""),
        ("growth", "Growth", ""),
    ]
    again = await _import(alice, r.content, template=TEMPLATE, vars=style)
    assert again.status_code == 201, again.text
    prompts = [(t["key"], t["prompt"]) for t in again.json()["tasks"]]
    assert prompts == [(t["key"], t["prompt"]) for t in batch["tasks"]]


async def test_bad_fields_and_rows_are_answered_with_where(users_api: Api) -> None:
    _, alice = await users_api.add_user("alice")
    r = await _import(alice, SLIDES, template=TEMPLATE, vars="[1]")
    assert r.status_code == 422 and r.json()["error"]["field"] == "vars"
    r = await _import(alice, SLIDES, template=TEMPLATE, vars="{style")
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = await _import(alice, SLIDES, vars='{"style": "flat"}')
    assert r.status_code == 422 and r.json()["error"]["field"] == "vars"

    r = await _import(alice, SLIDES, template=TEMPLATE)  # no vars: {style} is missing
    assert r.status_code == 422
    problems = {(p["where"], p["field"]): p["message"] for p in r.json()["error"]["problems"]}
    assert problems == {
        ("row 2", "prompt"): "template field 'style' is missing",
        ("row 3", "prompt"): "template field 'style' is missing",
    }
