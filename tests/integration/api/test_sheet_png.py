"""``/api/v1/batches/{id}/sheets`` and ``/sheet.png`` with auth on (SQLite and PostgreSQL):
a PNG never cached, by token or session cookie; another user's batch is not found; a batch
that is not a sweep, an unknown z value: clear errors; documented in the OpenAPI schema."""

from __future__ import annotations

import io

import pytest
from apikit import Api
from PIL import Image

from pixelkiln.sheets import PLACEHOLDER, Cell, SheetPlan, layout
from tests.sheet_sweeps import SWEEP, mark_sweep, plain_spec

pytestmark = pytest.mark.anyio


async def test_the_sheets_of_a_sweep_by_token_and_by_cookie(auth_db_api: Api) -> None:
    api = auth_db_api
    _, alice = await api.add_user("alice")
    _, bob = await api.add_user("bob")
    made = await alice.post("/api/v1/batches?wait=true", json=plain_spec(name="grid"))
    assert made.status_code == 201, made.text
    batch_id = made.json()["id"]
    await api.ctx.write(mark_sweep, batch_id)

    listed = await alice.get(f"/api/v1/batches/{batch_id}/sheets")
    assert listed.status_code == 200
    sheets = listed.json()["sheets"]
    assert [(s["z"], s["label"], s["group"], s["groups"]) for s in sheets] == [
        ("m1", "model=m1", 1, 1),
        ("m2", "model=m2", 1, 1),
    ]
    assert sheets[1]["url"] == f"/api/v1/batches/{batch_id}/sheet.png?z=m2"

    r = await alice.get(sheets[1]["url"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    sheet = Image.open(io.BytesIO(r.content)).convert("RGB")
    empty = tuple(tuple(Cell() for _ in range(3)) for _ in range(3))
    columns = tuple(f"cfg_scale={v}" for v in SWEEP["x"]["cfg_scale"])
    rows = tuple(f"sampler={v}" for v in SWEEP["y"]["sampler"])
    box = layout(SheetPlan("grid · model=m2", columns, rows, empty, (64, 64)))
    assert sheet.size == (box.width, box.height)
    assert all(
        sheet.getpixel(box.cell_box(r, c)[:2]) != PLACEHOLDER for r in range(3) for c in range(3)
    )
    small = await alice.get(f"/api/v1/batches/{batch_id}/sheet.png", params={"z": "m2", "cell": 64})
    assert Image.open(io.BytesIO(small.content)).width < sheet.width

    browser = api.with_token(None)
    signed_in = await browser.post("/api/v1/session", json={"token": _token(alice)})
    assert signed_in.status_code in (200, 201, 204), signed_in.text
    by_cookie = await browser.get(sheets[1]["url"])
    assert by_cookie.status_code == 200 and by_cookie.content == r.content

    for path in ("sheets", "sheet.png"):
        hidden = await bob.get(f"/api/v1/batches/{batch_id}/{path}")
        assert hidden.status_code == 404, hidden.text
        anonymous = await api.with_token(None).get(f"/api/v1/batches/{batch_id}/{path}")
        assert anonymous.status_code == 401


def _token(client: object) -> str:
    header: str = client.headers["Authorization"]  # type: ignore[attr-defined]
    return header.removeprefix("Bearer ")


async def test_not_a_sweep_and_unknown_values_are_clear_errors(auth_db_api: Api) -> None:
    api = auth_db_api
    _, alice = await api.add_user("alice")
    made = await alice.post("/api/v1/batches", json={"name": "cat", "tasks": [{"prompt": "a cat"}]})
    assert made.status_code == 201, made.text
    plain = made.json()
    listed = await alice.get(f"/api/v1/batches/{plain['id']}/sheets")
    assert listed.status_code == 200 and listed.json() == {"sheets": []}
    r = await alice.get(f"/api/v1/batches/{plain['id']}/sheet.png")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "invalid_state"
    assert "not a sweep" in r.json()["error"]["message"]

    swept = (await alice.post("/api/v1/batches", json=plain_spec())).json()["id"]
    await api.ctx.write(mark_sweep, swept)
    r = await alice.get(f"/api/v1/batches/{swept}/sheet.png", params={"z": "m9"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == "z" and "m1, m2" in error["message"]
    r = await alice.get(f"/api/v1/batches/{swept}/sheet.png", params={"z": "m1", "group": 2})
    assert r.status_code == 422 and r.json()["error"]["field"] == "group"
    for bad in ({"cell": 5}, {"group": 0}, {"cell": "big"}):
        r = await alice.get(f"/api/v1/batches/{swept}/sheet.png", params=bad)
        assert r.status_code == 422, bad
    missing = await alice.get("/api/v1/batches/999999/sheet.png")
    assert missing.status_code == 404


async def test_the_routes_are_in_the_openapi_schema(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    png = schema["paths"]["/api/v1/batches/{batch_id}/sheet.png"]["get"]
    assert "image/png" in png["responses"]["200"]["content"]
    assert {"404", "409", "422"} <= set(png["responses"])
    assert {p["name"] for p in png["parameters"]} >= {"batch_id", "z", "group", "cell"}
    listed = schema["paths"]["/api/v1/batches/{batch_id}/sheets"]["get"]
    assert "200" in listed["responses"]
