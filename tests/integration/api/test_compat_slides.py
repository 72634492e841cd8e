"""The slide API: its mapping onto one batch, its ``{"detail"}`` errors, its switch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, api_settings, running_api

from pixelkiln.exceptions import ConfigError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def slides_api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = api_settings(
        tmp_path / "data",
        auth={"enabled": True},
        compat={"slides": True, "slide_template": "{style_prompt} | {type} | {title}"},
    )
    async with running_api(settings) as running:
        yield running


def deck(**extra: Any) -> dict[str, Any]:
    slides = [
        {"id": 7, "title": "Cover"},  # a number id, no page_num, fields left out
        {"id": "b", "page_num": 9, "type": "content", "title": "Body", "mood": "calm"},
    ]
    return {
        "slides": slides,
        "style_prompt": "ink",
        "aspect_ratio": "1:1",
        "resolution": "1k",
        **extra,
    }


def _detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


async def test_switched_off_the_paths_are_not_there(api: Api) -> None:
    assert (await api.client.get("/api/slide/batch/active-count")).status_code == 404
    assert (await api.client.post("/api/slide/batch/generate", json=deck())).status_code == 404


async def test_slides_become_items_of_one_batch(slides_api: Api) -> None:
    _, user = await slides_api.add_user("deck")
    answer = await user.post("/api/slide/batch/generate", json=deck(max_workers=20))
    assert answer.status_code == 200, answer.text
    done = answer.json()
    results = done["results"]
    assert [(r["slide_id"], r["page_num"], r["title"]) for r in results] == [
        (7, 1, "Cover"),  # the caller's id as given: a number stays a number
        ("b", 9, "Body"),
    ]
    assert [r["final_prompt"] for r in results] == ["ink | Cover", "ink | content | Body"]
    assert all(r["image_url"].startswith("http://localhost/api/v1/images/") for r in results)
    batch = (await user.get(f"/api/v1/batches/{done['batch_id']}")).json()
    assert batch["max_workers"] == 10  # 20 is taken as the most a batch may have
    assert batch["tasks"][1]["item"]["mood"] == "calm"  # extra fields kept with the task
    assert (await user.get("/api/slide/batch/active-count")).json() == {"active_batches": 0}


async def test_image_urls_open_without_a_token_and_only_their_own_image(slides_api: Api) -> None:
    """A deck tool shows ``image_url`` in ``<img src>``, which cannot send a bearer token:
    with auth on the URL is signed for that one image, for ``[auth] link_ttl`` seconds."""
    _, user = await slides_api.add_user("deck")
    done = (await user.post("/api/slide/batch/generate", json=deck())).json()
    first, second = (httpx.URL(r["image_url"]) for r in done["results"])
    anonymous = slides_api.client  # no Authorization header
    opened = await anonymous.get(first.path, params=first.params)
    assert opened.status_code == 200 and opened.content[:4] == b"\x89PNG"
    thumb_path = first.path.replace("/file", "/thumbnail")
    assert (await anonymous.get(thumb_path, params=first.params)).status_code == 200
    # the signature is for its own image only, and only as it was given
    assert (await anonymous.get(second.path, params=first.params)).status_code == 401
    tampered = dict(first.params) | {"sig": "0" * 64}
    refused = await anonymous.get(first.path, params=tampered)
    assert refused.status_code == 401 and "expired or is not valid" in refused.text
    later = dict(first.params) | {"exp": str(int(first.params["exp"]) + 1)}
    assert (await anonymous.get(first.path, params=later)).status_code == 401
    assert (await anonymous.get(first.path)).status_code == 401  # no link, no token
    expired = dict(first.params) | {"exp": "1"}
    assert (await anonymous.get(first.path, params=expired)).status_code == 401
    odd = await anonymous.get(first.path, params=dict(first.params) | {"sig": "é"})
    assert odd.status_code == 422  # not hex: refused before any comparison


async def test_with_auth_off_an_image_opens_whatever_link_it_carries(api: Api) -> None:
    made = await api.client.post(
        "/api/v1/batches?wait=true", json={"name": "b", "tasks": [{"prompt": "a fox"}]}
    )
    image_id = made.json()["tasks"][0]["images"][0]["id"]
    stale = {"exp": "1", "sig": "0" * 64}  # a link signed by an installation with auth on
    opened = await api.client.get(f"/api/v1/images/{image_id}/file", params=stale)
    assert opened.status_code == 200


async def test_bad_bodies_answer_detail(slides_api: Api) -> None:
    _, user = await slides_api.add_user("deck")
    post = user.post
    _detail(await post("/api/slide/batch/generate", json={"style_prompt": "x"}), 422)
    _detail(await post("/api/slide/batch/generate", json={"slides": []}), 422)
    _detail(await post("/api/slide/batch/generate", json={"slides": [{"title": "no id"}]}), 422)
    _detail(await post("/api/slide/batch/generate", content=b"{broken"), 422)
    ratio = _detail(await post("/api/slide/batch/generate", json=deck(aspect_ratio="7:3")), 422)
    assert "7:3" in ratio
    _detail(await post("/api/slide/batch/generate", json=deck(max_workers=0)), 422)
    twice = deck()
    twice["slides"][1]["id"] = "7"
    assert "7" in _detail(await post("/api/slide/batch/generate", json=twice), 422)
    _detail(await post("/api/slide/batch/generate", json=deck(backend="nope")), 422)
    _detail(await post("/api/slide/batch/status", json={"batch_id": "abc"}), 422)
    _detail(await post("/api/slide/batch/status", json={}), 422)
    _detail(await post("/api/slide/batch/status", json={"batch_id": "424242"}), 404)
    anonymous = await slides_api.with_token(None).get("/api/slide/batch/active-count")
    _detail(anonymous, 401)


async def test_a_template_field_no_slide_has_is_refused_naming_the_slide(tmp_path: Path) -> None:
    settings = api_settings(
        tmp_path / "data", compat={"slides": True, "slide_template": "{style_prompt} {mood}"}
    )
    async with running_api(settings) as running:
        refused = await running.client.post("/api/slide/batch/generate", json=deck())
        detail = _detail(refused, 422)
        assert "item '7'" in detail and "mood" in detail


async def test_another_users_batch_is_not_found(slides_api: Api) -> None:
    _, alice = await slides_api.add_user("alice")
    _, bob = await slides_api.add_user("bob")
    made = (await alice.post("/api/slide/batch/generate", json=deck())).json()
    status = await alice.post("/api/slide/batch/status", json={"batch_id": made["batch_id"]})
    assert status.json()["progress"] == 1.0
    _detail(await bob.post("/api/slide/batch/status", json={"batch_id": made["batch_id"]}), 404)


async def test_a_slide_template_that_is_not_valid_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compat.slide_template: '\{title!r\}' at character 1"):
        api_settings(tmp_path / "data", compat={"slides": True, "slide_template": "{title!r}"})


async def test_active_count_counts_only_slide_batches(slides_api: Api) -> None:
    _, user = await slides_api.add_user("deck")
    # unfinished for an hour (its second task waits out the delay), and not a deck
    slow = {"name": "v1", "delay": 3600, "tasks": [{"prompt": "x"}, {"prompt": "y"}]}
    other = (await user.post("/api/v1/batches", json=slow)).json()
    assert (await user.get("/api/v1/batches/active")).json() == {"active": 1}
    assert (await user.get("/api/slide/batch/active-count")).json() == {"active_batches": 0}
    await user.post(f"/api/v1/batches/{other['id']}/cancel")
    done = (await user.post("/api/slide/batch/generate", json=deck())).json()
    batch = (await user.get(f"/api/v1/batches/{done['batch_id']}")).json()
    assert batch["source"] == "slides"
