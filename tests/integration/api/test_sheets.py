"""Spreadsheets over HTTP: import with Chinese headings and a pasted picture, export back
as XLSX and CSV (owner-only), the template; on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, api_settings, running_api

from tests.sheets import ZH_HEADER, png, sheet_rows, workbook_bytes

pytestmark = pytest.mark.anyio
ROWS = [
    ZH_HEADER,
    ["=a fox in snow", "blurry", "1:1", "1K", None, 2, "fox"],
    ["a REJECT lighthouse", None, "16:9", "1K", None, 1, None],
]


@pytest.fixture
async def users_api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    data = tmp_path / "data"
    settings = api_settings(data, storage={"database_url": database_url}, auth={"enabled": True})
    async with running_api(settings) as running:
        yield running


async def _import(client: Any, data: bytes, name: str = "模板.xlsx") -> Any:
    return await client.post(
        "/api/v1/batches/import?wait=true", files={"file": (name, data)}, data={"name": "sheet"}
    )


async def test_import_run_and_export_back(users_api: Api) -> None:
    _, alice = await users_api.add_user("alice")
    _, bob = await users_api.add_user("bob")
    picture = png(30, 20)
    data = workbook_bytes(ROWS, {"E2": picture}, formulas=False)
    r = await _import(alice, data)
    assert r.status_code == 201, r.text
    batch = r.json()
    assert [t["status"] for t in batch["tasks"]] == ["succeeded", "failed"]
    batch_id = batch["id"]

    r = await alice.get(f"/api/v1/batches/{batch_id}/export.xlsx?headers=zh")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="batch-{batch_id}.xlsx"'
    header, fox, lighthouse = sheet_rows(r.content)
    fox_row = dict(zip(header, fox, strict=True))
    for column, typed in zip(ZH_HEADER, ROWS[1], strict=True):
        if column != "参考示例图":
            assert fox_row[column] == typed, column
    assert dict(zip(header, lighthouse, strict=True))["状态"] == "failed"
    # the picture became alice's upload: the table imports again as it is
    reference = fox_row["参考示例图"]
    assert reference.startswith("asset:")
    r = await alice.get(f"/api/v1/assets/{reference.removeprefix('asset:')}/file")
    assert r.status_code == 200 and r.content == picture
    links = fox_row["图片链接"].split("\n")
    assert len(links) == 2 and all(
        link.startswith("http://localhost/api/v1/images/") for link in links
    )
    image = await alice.get(links[0].removeprefix("http://localhost"))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert fox_row["最终提示词"] == "=a fox in snow"

    again = await _import(
        alice, (await alice.get(f"/api/v1/batches/{batch_id}/export.xlsx")).content, "out.xlsx"
    )
    assert again.status_code == 201, again.text
    assert [t["status"] for t in again.json()["tasks"]] == ["succeeded", "failed"]

    # another user sees no such batch
    assert (await bob.get(f"/api/v1/batches/{batch_id}/export.xlsx")).status_code == 404


async def test_export_csv_guards_formulas(users_api: Api) -> None:
    _, alice = await users_api.add_user("alice")
    r = await _import(alice, workbook_bytes(ROWS[:2], formulas=False))
    assert r.status_code == 201, r.text
    r = await alice.get(f"/api/v1/batches/{r.json()['id']}/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    header, row = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert dict(zip(header, row, strict=True))["prompt"] == "'=a fox in snow"
    assert (await alice.get("/api/v1/batches/1/export.pdf")).status_code == 422
    assert (await alice.get("/api/v1/batches/1/export.csv?headers=fr")).status_code == 422


async def test_bad_cells_are_answered_with_their_rows(users_api: Api) -> None:
    _, alice = await users_api.add_user("alice")
    rows = [ZH_HEADER, ["a fox"], ['=A2&" again"'], ["a bird"]]
    r = await _import(alice, workbook_bytes(rows, {"B4": png()}))
    assert r.status_code == 422
    problems = {(p["where"], p["field"]): p["message"] for p in r.json()["error"]["problems"]}
    assert "formula cells are not supported; paste values" in problems[("row 3", "prompt")]
    assert "a picture is placed in column B ('负面提示词')" in problems[("row 4", "")]


async def test_the_template_downloads_and_imports(users_api: Api) -> None:
    _, alice = await users_api.add_user("alice")
    r = await alice.get("/api/v1/templates/batch.xlsx?headers=zh")
    assert r.status_code == 200
    header, _ = sheet_rows(r.content)
    assert header[1:] == ZH_HEADER
    done = await _import(alice, r.content, "batch.xlsx")
    assert done.status_code == 201, done.text
    assert (await users_api.with_token(None).get("/api/v1/templates/batch.xlsx")).status_code == 401
