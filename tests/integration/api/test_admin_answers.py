"""A value the service refuses (InvalidValueError) is a 422 naming the field, on every face."""

from __future__ import annotations

import pytest
from apikit import Api

pytestmark = pytest.mark.anyio


async def test_a_concurrency_past_the_highest_is_a_422_naming_the_field(api: Api) -> None:
    r = await api.client.put("/api/v1/admin/concurrency", json={"concurrency": 11})
    assert r.status_code == 422
    assert r.json() == {
        "error": {
            "code": "invalid_request",
            "message": "concurrency must be between 1 and 10 ([server] max_concurrency)",
            "field": "concurrency",
        }
    }
    assert (await api.client.get("/api/v1/admin/concurrency")).json()["concurrency"] == 4


async def test_a_presets_bad_params_are_named_each_and_nothing_is_stored(api: Api) -> None:
    body = {"title": "x", "content": "y", "params": {"steps": -1, "n": 99}}
    r = await api.client.post("/api/v1/presets", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "params.steps")
    assert error["message"].startswith("params.steps: ")
    assert [p["field"] for p in error["problems"]] == ["params.steps", "params.n"]
    unknown = await api.client.post(
        "/api/v1/presets", json={"title": "x", "content": "y", "params": {"colour": "red"}}
    )
    assert unknown.json() == {
        "error": {
            "code": "invalid_request",
            "message": "unknown parameter(s): colour",
            "field": "params",
        }
    }
    assert (await api.client.get("/api/v1/presets?include_inactive=true")).json() == []
