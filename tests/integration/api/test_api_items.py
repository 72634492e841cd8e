"""Items and templates through the API and the Python client: final prompts stored and returned."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from apikit import SMALL, Api, Live

from pixelkiln.client import Client
from pixelkiln.specs import parse_batch

pytestmark = pytest.mark.anyio

SLIDES: list[dict[str, Any]] = [
    {"id": "slide-1", "page_num": 1, "title": "Intro", "visual_desc": "a sunrise"},
    {"id": "slide-2", "page_num": 2, "title": "Growth", "visual_desc": "a tree", "n": 2},
    {"id": 3, "page_num": 3, "title": "Risks", "visual_desc": "REJECT a storm"},
]


def slide_batch(*items: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "name": "deck",
        "template": "{style}. Slide {page_num}, {title}: {visual_desc}",
        "vars": {"style": "flat vector"},
        "defaults": SMALL,
        "items": list(items),
        **top,
    }


async def test_items_are_tasks_with_their_final_prompt_and_item(api: Api) -> None:
    body = slide_batch(*SLIDES, tasks=[{"key": "cover", "prompt": "a title card"}])
    r = await api.client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "partial"
    batch = (await api.client.get(f"/api/v1/batches/{r.json()['id']}")).json()
    tasks = batch["tasks"]
    assert [t["key"] for t in tasks] == ["cover", "slide-1", "slide-2", "3"]
    assert tasks[1]["prompt"] == "flat vector. Slide 1, Intro: a sunrise"
    assert [t["item"] for t in tasks] == [None, *SLIDES]
    assert [t["status"] for t in tasks] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert len(tasks[2]["images"]) == 2
    one = (await api.client.get(f"/api/v1/tasks/{tasks[1]['id']}")).json()
    assert one["item"] == SLIDES[0] and one["prompt"] == tasks[1]["prompt"]


async def test_every_problem_of_the_items_is_answered_in_one_422(api: Api) -> None:
    body = slide_batch(
        {"id": "slide-3", "title": "t"},
        {"id": "slide-3", "page_num": 2, "title": "t", "visual_desc": "v"},
        {"id": "s4", "page_num": 4, "title": "t", "visual_desc": "v", "n": 99},
        "a slide",
    )
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [(p["where"], p["field"]) for p in error["problems"]] == [
        ("item 4", "items[3]"),
        ("item 'slide-3'", "prompt"),
        ("item 2", "id"),
        ("item 's4'", "items[2].n"),
    ]
    assert (
        error["problems"][1]["message"] == "template fields 'page_num', 'visual_desc' are missing"
    )
    assert (await api.client.get("/api/v1/batches")).json()["total"] == 0


async def test_a_template_that_is_not_valid_is_refused_with_where(api: Api) -> None:
    body = slide_batch(*SLIDES, template="{title} {visual_desc!r}")
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == 422
    [problem] = r.json()["error"]["problems"]
    assert problem["field"] == "template" and "at character 9" in problem["message"]


async def test_the_python_client_sends_items_as_a_dict_or_a_parsed_spec(live: Live) -> None:
    def stage() -> tuple[list[str], list[str]]:
        with Client(live.url) as kiln:
            raw = kiln.create_batch(slide_batch(*SLIDES[:2]), wait=True)
            parsed = kiln.create_batch(parse_batch(slide_batch(*SLIDES[:2])), wait=True)
            return [t.prompt for t in raw.tasks], [t.prompt for t in parsed.tasks]

    raw, parsed = await asyncio.to_thread(stage)
    assert (
        raw
        == parsed
        == [
            "flat vector. Slide 1, Intro: a sunrise",
            "flat vector. Slide 2, Growth: a tree",
        ]
    )
