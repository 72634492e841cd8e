"""Text that XML cannot hold (a vertical tab pasted from Word) is refused on the way in,
still exports to XLSX where it was stored before, and thumbnails are never kept by a
shared cache."""

from __future__ import annotations

import io

import openpyxl
import pytest
from apikit import Api

from pixelkiln.workbooks import xlsx_bytes

pytestmark = pytest.mark.anyio


@pytest.fixture
def api(auth_db_api: Api) -> Api:
    return auth_db_api


def _cells(data: bytes) -> list[str]:
    sheet = openpyxl.load_workbook(io.BytesIO(data)).worksheets[0]
    return [str(c.value) for row in sheet.iter_rows(min_row=2) for c in row if c.value]


async def test_control_characters_are_refused_and_old_ones_export_as_marks(api: Api) -> None:
    _, alice = await api.add_user("alice", credits=100)
    rows = [{"prompt": "a\x01b", "negative_prompt": "c\x0bd"}]
    table = await alice.post("/api/v1/tables/export", json={"rows": rows})
    assert table.status_code == 422 and "rows[0].prompt" in table.text, table.text
    spec = {"name": "pasted", "defaults": {"width": 64, "height": 64}}
    spec["tasks"] = [{"prompt": "a\x0bb fox", "key": "k"}]
    refused = await alice.post("/api/v1/batches", params={"wait": "true"}, json=spec)
    assert refused.status_code == 422 and "tasks[0].prompt" in refused.text, refused.text

    # text stored before such text was refused still exports: each becomes U+FFFD
    data = xlsx_bytes(["prompt", "negative_prompt"], [["a\x01b", "c\x0bd"]])
    assert {"a\ufffdb", "c\ufffdd"} <= set(_cells(data))

    spec["tasks"] = [{"prompt": "a fox", "key": "k"}]
    made = await alice.post("/api/v1/batches", params={"wait": "true"}, json=spec)
    assert made.status_code == 201, made.text
    batch = made.json()
    image = batch["tasks"][0]["images"][0]["id"]
    thumb = await alice.get(f"/api/v1/images/{image}/thumbnail", params={"size": 128})
    assert thumb.headers["cache-control"].startswith("private")
