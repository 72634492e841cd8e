"""Per-batch limits through the API: accepted in the create body, returned, bad values refused."""

from __future__ import annotations

import pytest
from apikit import Api, spec

pytestmark = pytest.mark.anyio


async def test_max_workers_and_delay_are_taken_and_returned(api: Api) -> None:
    body = {**spec("a cat", "a dog"), "max_workers": 2, "delay": 0.05}
    r = await api.client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["max_workers"], made["delay"], made["status"]) == (2, 0.05, "completed")
    again = (await api.client.get(f"/api/v1/batches/{made['id']}")).json()
    assert (again["max_workers"], again["delay"]) == (2, 0.05)


async def test_limits_out_of_range_are_refused_in_one_answer(api: Api) -> None:
    body = {**spec("a cat"), "max_workers": 11, "delay": -1}
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == 422, r.text
    fields = {p["field"]: p["message"] for p in r.json()["error"]["problems"]}
    assert set(fields) == {"max_workers", "delay"}
    assert "10" in fields["max_workers"] and "0" in fields["delay"]
    assert (await api.client.get("/api/v1/batches")).json()["total"] == 0
