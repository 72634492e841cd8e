"""``/api/v1/tables``: a batch table read into rows (no batch made) and written back as XLSX.

The web UI's batch table imports a spreadsheet to edit it before anything runs, and
exports what it holds; the two meet again: an exported table parses to the same rows.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from apikit import Api

from tests.sheets import ZH_HEADER, png, sheet_rows, workbook_bytes

pytestmark = pytest.mark.anyio
ROWS = [
    ZH_HEADER,
    ["a fox in snow", "blurry", "16\uff1a9", "2k", None, 2, "fox"],  # a Chinese colon
    ["=1+1 a lighthouse", None, "3:4", "1K", None, None, None],
]


@pytest.fixture
def api(auth_db_api: Api) -> Api:
    return auth_db_api


async def parse(client: httpx.AsyncClient, data: bytes, name: str = "镜头.xlsx") -> httpx.Response:
    return await client.post("/api/v1/tables/parse", files={"file": (name, data)})


async def batches_of(client: httpx.AsyncClient) -> int:
    total: int = (await client.get("/api/v1/batches")).json()["total"]
    return total


async def test_a_chinese_workbook_with_a_picture_reads_into_rows(api: Api) -> None:
    _, alice = await api.add_user("alice")
    picture = png(30, 20)
    r = await parse(alice, workbook_bytes(ROWS, {"E2": picture}, formulas=False))
    assert r.status_code == 200, r.text
    table = r.json()
    assert table["name"] == "镜头" and table["defaults"] == {}
    fox, lighthouse = table["rows"]
    reference = fox.pop("reference_images")
    assert fox == {
        "prompt": "a fox in snow",
        "negative_prompt": "blurry",
        "aspect_ratio": "16:9",
        "resolution": "2K",
        "n": 2,
        "filename_prefix": "fox",
    }
    assert lighthouse == {"prompt": "=1+1 a lighthouse", "aspect_ratio": "3:4", "resolution": "1K"}
    [ref] = reference
    stored = await alice.get(f"/api/v1/assets/{ref.removeprefix('asset:')}/file")
    assert stored.status_code == 200 and stored.content == picture  # alice's upload now
    assert await batches_of(alice) == 0  # nothing was queued


async def test_a_csv_with_english_headings(api: Api) -> None:
    _, alice = await api.add_user("alice")
    text = "Prompt,Aspect Ratio,n,key,seed\na moth,9:16,3,m1,7\n\nan owl,,,o2,\n"
    r = await parse(alice, text.encode(), "shots.csv")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [
        {"prompt": "a moth", "aspect_ratio": "9:16", "n": 3, "key": "m1", "seed": 7},
        {"prompt": "an owl", "key": "o2"},
    ]


async def test_every_problem_names_its_row_and_column_and_nothing_is_stored(api: Api) -> None:
    _, alice = await api.add_user("alice")
    rows = [*ROWS, ["a crab", None, "5:4", "8K", None, 11, None]]
    r = await parse(alice, workbook_bytes(rows, {"E2": png()}, formulas=False))
    assert r.status_code == 422, r.text
    problems = {(p["where"], p["field"]) for p in r.json()["error"]["problems"]}
    assert problems == {("row 4", "aspect_ratio"), ("row 4", "resolution"), ("row 4", "n")}
    assert (await alice.get("/api/v1/assets")).json()["items"] == []  # the picture was not kept

    damaged = await parse(alice, b"PK\x03\x04 not really a workbook")
    assert damaged.status_code == 422 and damaged.json()["error"]["field"] == "file"
    assert (await parse(alice, b"prompt\n", "notes.txt")).status_code == 415
    two = await alice.post(
        "/api/v1/tables/parse", files=[("file", ("a.csv", b"prompt\na")), ("file", ("b.csv", b""))]
    )
    assert two.status_code == 422
    assert (await alice.post("/api/v1/tables/parse", data={"file": "text"})).status_code == 422


async def test_exported_rows_read_back_as_they_were(api: Api) -> None:
    _, alice = await api.add_user("alice")
    uploaded = await alice.post(
        "/api/v1/assets",
        files=[("files", (f"r{i}.png", png(color=(i, 9, 9)), "image/png")) for i in (1, 2)],
    )
    refs = [a["ref"] for a in uploaded.json()]
    rows: list[dict[str, Any]] = [
        {"key": "1", "prompt": "=SUM(A1) a fox", "aspect_ratio": "16:9", "n": 2},
        {
            "key": "2",
            "prompt": "an owl",
            "negative_prompt": "text",
            "resolution": "4K",
            "reference_images": refs,
            "filename_prefix": "owl",
            "seed": 42,
        },
    ]
    r = await alice.post(
        "/api/v1/tables/export", json={"name": "镜头", "headers": "zh", "rows": rows}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert "filename*=UTF-8''%E9%95%9C%E5%A4%B4.xlsx" in r.headers["content-disposition"]
    header, *cells = sheet_rows(r.content)
    assert header == ["编号", *ZH_HEADER, "种子"]
    assert cells[0][:2] == ["1", "=SUM(A1) a fox"]  # text, never a formula
    assert cells[1][5] == "\n".join(refs)
    back = await parse(alice, r.content, "镜头.xlsx")
    assert back.status_code == 200, back.text
    assert back.json()["rows"] == rows

    english = await alice.post("/api/v1/tables/export", json={"rows": rows})
    assert sheet_rows(english.content)[0][:3] == ["key", "prompt", "negative_prompt"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rows": [{"prompt": "a"}, {"colour": "red"}]}, "rows[1].colour"),
        ({"rows": [{"prompt": {"nested": 1}}]}, None),
        ({"rows": [], "headers": "fr"}, None),
        ({"rows": [{"prompt": "a\u0000"}]}, None),
        ({}, None),
    ],
)
async def test_export_refuses_what_is_no_table(
    api: Api, body: dict[str, Any], field: str | None
) -> None:
    _, alice = await api.add_user("alice")
    r = await alice.post("/api/v1/tables/export", json=body)
    assert r.status_code == 422, r.text
    if field:
        assert field in {p["field"] for p in r.json()["error"]["problems"]}
