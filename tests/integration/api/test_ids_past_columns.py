"""An id in a query past every id a row can have (PostgreSQL's and MySQL's 32-bit
columns refuse it in a comparison: "integer out of range") answers what it means —
nothing of that id, everything below it, nothing after it — on every database."""

from __future__ import annotations

import pytest
from apikit import Api, spec

pytestmark = pytest.mark.anyio

PAST = 3_000_000_000  #: a valid id for the API (up to 2**53 - 1), past any 32-bit column


async def test_ids_past_any_column_mean_what_they_say(auth_db_api: Api) -> None:
    _, admin = await auth_db_api.add_user("root", admin=True)
    made = await admin.post("/api/v1/batches", params={"wait": "true"}, json=spec("a moth"))
    assert made.status_code == 201, made.text
    batch_id = made.json()["id"]
    answers = {
        "nobody's batches": await admin.get("/api/v1/admin/batches", params={"owner_id": PAST}),
        "no batch's images": await admin.get("/api/v1/images", params={"batch_id": PAST}),
        "every image below": await admin.get("/api/v1/images", params={"before": PAST}),
        "no event after": await admin.get(
            f"/api/v1/batches/{batch_id}/log", params={"after": PAST}
        ),
    }
    for what, answer in answers.items():
        assert answer.status_code == 200, (what, answer.text)
    items = {what: answer.json()["items"] for what, answer in answers.items()}
    assert items["nobody's batches"] == [] and items["no batch's images"] == []
    assert items["no event after"] == []
    assert [i["batch_id"] for i in items["every image below"]] == [batch_id]
