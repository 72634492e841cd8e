"""Batches through the API (no auth): create, wait, read, list, control, delete, import."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import openpyxl
import pytest
from apikit import Api, png_bytes, spec
from sqlalchemy import select, update

from pixelkiln.db.tables import idempotency_keys

pytestmark = pytest.mark.anyio


async def test_create_and_wait_returns_every_task_with_results(api: Api) -> None:
    body = spec("a red fox", "a blue whale", name="animals")
    body["tasks"][1]["n"] = 2
    r = await api.client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/api/v1/batches/{r.json()['id']}"
    batch = r.json()
    assert batch["finished"] and batch["status"] == "completed"
    assert batch["counts"]["succeeded"] == 2 and batch["counts"]["images"] == 3
    assert batch["progress"] == 1.0 and batch["eta_seconds"] == 0.0
    assert batch["elapsed_seconds"] is not None
    first, second = batch["tasks"]
    assert (first["key"], first["prompt"], first["status"]) == ("k1", "a red fox", "succeeded")
    assert first["error"] is None and first["duration"] > 0
    assert len(second["images"]) == 2
    image = second["images"][0]
    assert image["url"] == f"/api/v1/images/{image['id']}/file"
    assert (image["width"], image["height"]) == (64, 64)
    png = await api.client.get(image["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


async def test_get_batch_pages_and_filters_its_tasks(api: Api) -> None:
    body = spec(*[f"prompt {i}" for i in range(5)], "REJECT this")
    batch_id = (await api.client.post("/api/v1/batches", json=body)).json()["id"]
    await api.wait_finished(batch_id)
    r = await api.client.get(f"/api/v1/batches/{batch_id}?task_limit=2&task_offset=2")
    page = r.json()
    assert [t["position"] for t in page["tasks"]] == [3, 4]
    assert page["task_total"] == 6 and page["task_offset"] == 2
    failed = (await api.client.get(f"/api/v1/batches/{batch_id}?task_status=failed")).json()
    assert failed["status"] == "partial" and failed["task_total"] == 1
    assert failed["tasks"][0]["key"] == "k6" and "REJECT" in failed["tasks"][0]["error"]
    task = (await api.client.get(f"/api/v1/tasks/{failed['tasks'][0]['id']}")).json()
    assert task["status"] == "failed" and task["images"] == []


async def test_list_filters_by_status_and_searches_name_and_prompt(api: Api) -> None:
    ids = []
    for name, prompt in [("foxes", "a red fox"), ("cats", "a black cat"), ("more", "fox again")]:
        r = await api.client.post("/api/v1/batches", json=spec(prompt, name=name))
        ids.append(r.json()["id"])
    for batch_id in ids:
        await api.wait_finished(batch_id)
    every = (await api.client.get("/api/v1/batches")).json()
    assert [b["id"] for b in every["items"]] == ids[::-1] and every["total"] == 3
    foxes = (await api.client.get("/api/v1/batches", params={"q": "fox"})).json()
    assert {b["name"] for b in foxes["items"]} == {"foxes", "more"}
    page = (await api.client.get("/api/v1/batches?limit=2")).json()
    assert len(page["items"]) == 2 and page["next_offset"] == 2
    last = (await api.client.get("/api/v1/batches?limit=2&offset=2")).json()
    assert len(last["items"]) == 1 and last["next_offset"] is None
    done = await api.client.get("/api/v1/batches", params={"status": ["completed", "failed"]})
    assert done.json()["total"] == 3
    assert (await api.client.get("/api/v1/batches?status=running")).json()["total"] == 0


async def test_cancel_pause_resume_and_the_active_count(held_api: Api) -> None:
    api = held_api  # its "slow" tasks run until cancelled
    body = spec(*[f"slow {i}" for i in range(8)], backend="slow")
    batch_id = (await api.client.post("/api/v1/batches", json=body)).json()["id"]
    assert (await api.client.get("/api/v1/batches/active")).json() == {"active": 1}
    paused = await api.client.post(f"/api/v1/batches/{batch_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    resumed = (await api.client.post(f"/api/v1/batches/{batch_id}/resume")).json()
    assert resumed["status"] in ("queued", "running")
    cancelled = await api.client.post(f"/api/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["counts"]["cancelled"] >= 6
    again = await api.client.post(f"/api/v1/batches/{batch_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    assert (await api.client.get("/api/v1/batches/active")).json() == {"active": 0}


async def test_retry_every_failed_task_or_one(api: Api) -> None:
    body = spec("fine", "REJECT one", "REJECT two")
    batch = (await api.client.post("/api/v1/batches?wait=true", json=body)).json()
    assert batch["status"] == "partial"
    nothing = await api.client.post(
        f"/api/v1/batches/{batch['id']}/retry", json={"task_ids": [batch["tasks"][0]["id"]]}
    )
    assert nothing.status_code == 409  # a succeeded task is not retried
    key = batch["tasks"][0]["key"]
    assert f"task {key} is not failed" in nothing.json()["error"]["message"]  # named
    one = await api.client.post(f"/api/v1/tasks/{batch['tasks'][1]['id']}/retry")
    assert one.status_code == 200 and one.json()["retried"] == 1
    await api.wait_finished(batch["id"])
    every = await api.client.post(f"/api/v1/batches/{batch['id']}/retry")
    assert every.json()["retried"] == 2
    final = await api.wait_finished(batch["id"])
    assert final["counts"]["failed"] == 2  # the placeholder rejects them every time


async def test_delete_refuses_a_running_batch_then_removes_rows_and_files(held_api: Api) -> None:
    api = held_api  # its "slow" batch runs for as long as the test looks
    slow = (await api.client.post("/api/v1/batches", json=spec("s", backend="slow"))).json()
    busy = await api.client.delete(f"/api/v1/batches/{slow['id']}")
    assert busy.status_code == 409 and "cancel" in busy.json()["error"]["message"]
    done = (await api.client.post("/api/v1/batches?wait=true", json=spec("x", "y"))).json()
    image_id = done["tasks"][0]["images"][0]["id"]
    await api.client.get(f"/api/v1/images/{image_id}/thumbnail")
    folder = api.ctx.storage.absolute(f"images/{done['id']}")
    assert folder.is_dir()
    assert (await api.client.delete(f"/api/v1/batches/{done['id']}")).status_code == 204
    assert (await api.client.get(f"/api/v1/batches/{done['id']}")).status_code == 404
    assert (await api.client.get(f"/api/v1/images/{image_id}")).status_code == 404
    assert not folder.exists()
    assert not api.ctx.storage.absolute(f"thumbs/{done['id']}").exists()


async def test_a_retried_create_with_the_same_key_makes_one_batch(api: Api) -> None:
    headers = {"Idempotency-Key": "order-77"}
    first = await api.client.post("/api/v1/batches", json=spec("once"), headers=headers)
    again = await api.client.post("/api/v1/batches", json=spec("once"), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    other = await api.client.post("/api/v1/batches", json=spec("different"), headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    racing = await asyncio.gather(
        *[
            api.client.post("/api/v1/batches", json=spec("race"), headers={"Idempotency-Key": "r"})
            for _ in range(8)
        ]
    )
    assert len({r.json()["id"] for r in racing}) == 1
    assert sorted(r.status_code for r in racing) == [200] * 7 + [201]
    assert (await api.client.get("/api/v1/batches")).json()["total"] == 2


async def test_an_idempotency_key_expires_and_may_then_be_reused(api: Api) -> None:
    headers = {"Idempotency-Key": "nightly-2026-11-22"}
    first = await api.client.post("/api/v1/batches", json=spec("once"), headers=headers)
    hours = api.settings.server.idempotency_hours
    # the key was stored a moment longer ago than it is remembered
    await api.ctx.write(
        lambda tx: tx.conn.execute(
            update(idempotency_keys).values(
                created_at=idempotency_keys.c.created_at - hours * 3600 - 1
            )
        )
    )
    again = await api.client.post("/api/v1/batches", json=spec("other"), headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] != first.json()["id"]
    replay = await api.client.post("/api/v1/batches", json=spec("other"), headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == again.json()["id"]
    rows = await api.ctx.read(lambda c: c.execute(select(idempotency_keys)).all())
    assert [r.batch_id for r in rows] == [again.json()["id"]]  # the expired one is gone


async def test_wait_with_a_timeout_answers_202_while_the_batch_runs(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/batches?wait=true&timeout=0.05", json=spec("slow", backend="slow")
    )
    assert r.status_code == 202 and not r.json()["finished"]
    assert r.json()["status"] in ("queued", "running")


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (
            {"name": "x", "tasks": [{"prompt": "a", "aspect_ratio": "5:7"}]},
            422,
            "invalid_request",
            "tasks[0].aspect_ratio",
        ),
        ({"name": "x", "tasks": []}, 422, "invalid_request", "tasks"),
        ({"name": "x", "tasks": [{"prompt": "a", "n": 11}]}, 422, "invalid_request", "tasks[0].n"),
        (
            {"name": "x", "tasks": [{"prompt": "a", "surprise": 1}]},
            422,
            "invalid_request",
            "tasks[0].surprise",
        ),
        (
            {"name": "x", "tasks": [{"prompt": "a", "backend": "nope"}]},
            422,
            "invalid_spec",
            "backend",
        ),
        ({"name": "x", "tasks": [{"key": "no prompt"}]}, 422, "invalid_spec", "prompt"),
        (
            {"name": "x", "tasks": [{"prompt": "a", "init_image": "/etc/hostname"}]},
            422,
            "invalid_spec",
            "init_image",
        ),
        (
            {"name": "x", "tasks": [{"prompt": "a", "reference_images": ["../kiln.db"]}]},
            422,
            "invalid_spec",
            "reference_images",
        ),
        (
            {"name": "x", "tasks": [{"prompt": "a", "init_image": "asset:999"}]},
            422,
            "invalid_spec",
            "init_image",
        ),
        (["not", "a", "mapping"], 422, "invalid_request", None),
    ],
)
async def test_bad_specs_are_422_with_the_field(
    api: Api, body: Any, status: int, code: str, field: str | None
) -> None:
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    if field:
        assert error["field"] == field
    assert (await api.client.get("/api/v1/batches")).json()["total"] == 0


async def test_garbage_requests_get_4xx_json_never_500(api: Api) -> None:
    c = api.client
    attempts = [
        c.post(
            "/api/v1/batches", content=b"{not json", headers={"content-type": "application/json"}
        ),
        c.post(
            "/api/v1/batches", content=b"\xff\xfe", headers={"content-type": "application/json"}
        ),
        c.post("/api/v1/batches", content=b"plain", headers={"content-type": "text/plain"}),
        c.post("/api/v1/batches", json={"name": "x" * 5000, "tasks": [{"prompt": "a"}]}),
        c.post("/api/v1/batches", json={"name": "x", "tasks": [{"prompt": "a", "seed": 2**80}]}),
        c.get("/api/v1/batches/abc"),
        c.get("/api/v1/batches/99999"),
        c.get("/api/v1/batches?limit=0"),
        c.get("/api/v1/batches?limit=100000"),
        c.get("/api/v1/batches?status=sleeping"),
        c.get("/api/v1/tasks/-1"),
        c.get("/api/v1/images/1/thumbnail?size=7"),
        c.get("/api/v1/images?since=yesterday"),
        c.post("/api/v1/batches/1/retry", json={"task_ids": "all"}),
        c.put("/api/v1/batches"),
        c.get("/api/v1/nothing-here"),
        c.post(
            "/api/v1/batches/upload",
            content=b"--x\r\n",
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        c.post("/api/v1/batches/import", json={}),
        c.get("/api/v1/batches/1/events", headers={"Last-Event-ID": "seven"}),
    ]
    for response in await asyncio.gather(*attempts):
        assert 400 <= response.status_code < 500, (response.request.url, response.text)
        assert response.json()["error"]["code"], response.text


async def test_request_bodies_over_the_limit_are_413(
    make_api: Callable[..., AbstractAsyncContextManager[Api]],
) -> None:
    async with make_api(server={"max_request_bytes": 2048}) as api:
        big = spec(*["x" * 100] * 40)
        declared = await api.client.post("/api/v1/batches", json=big)
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

        async def chunks() -> Any:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b" " * 1000

        streamed = await api.client.post(
            "/api/v1/batches", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await api.client.post("/api/v1/batches", json=spec("ok"))).status_code == 201


async def test_specs_have_a_smaller_limit_than_image_uploads(
    make_api: Callable[..., AbstractAsyncContextManager[Api]],
) -> None:
    """A JSON body or a batch file is parsed in memory; images spool to disk."""
    async with make_api(server={"max_spec_bytes": 4096}) as api:
        big = spec(*["x" * 100] * 60)
        r = await api.client.post("/api/v1/batches", json=big)
        assert r.status_code == 413 and "4,096 bytes" in r.json()["error"]["message"]
        table = b"prompt\n" + b"a long prompt for a big table\n" * 200
        imported = await api.client.post(
            "/api/v1/batches/import", files={"file": ("big.csv", table, "text/csv")}
        )
        assert imported.status_code == 413, imported.text
        assert imported.json()["error"]["field"] == "file"
        files = [("files", (f"{i}.png", png_bytes(64, 64 + i))) for i in range(40)]
        assert sum(len(f[1][1]) for f in files) > 4096  # past the spec limit, yet images
        uploaded = await api.client.post("/api/v1/assets", files=files)
        assert uploaded.status_code == 201, uploaded.text


async def test_import_csv_and_xlsx_files(api: Api) -> None:
    csv = (
        b"prompt,negative_prompt,width,height,n\na lighthouse,,64,64,1\na harbour,blurry,64,64,2\n"
    )
    r = await api.client.post(
        "/api/v1/batches/import?wait=true",
        files={"file": ("shots.csv", csv, "text/csv")},
        data={"name": "coast"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "coast" and r.json()["counts"]["images"] == 3
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in [["prompt", "width", "height"], ["a tower", 64, 64], ["a bridge", 64, 64]]:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    x = await api.client.post(
        "/api/v1/batches/import?wait=true", files={"file": ("plan.xlsx", out.getvalue())}
    )
    assert x.status_code == 201 and x.json()["name"] == "plan"
    assert [t["prompt"] for t in x.json()["tasks"]] == ["a tower", "a bridge"]


async def test_import_errors_name_the_file_row_and_column(api: Api) -> None:
    bad = b"prompt,aspect_ratio\nfine,1:1\nnot fine,5:7\n"
    r = await api.client.post("/api/v1/batches/import", files={"file": ("../../x.csv", bad)})
    error = r.json()["error"]
    assert r.status_code == 422 and error["code"] == "invalid_spec"
    assert error["problems"][0]["where"] == "row 3"
    assert error["problems"][0]["field"] == "aspect_ratio"
    assert "x.csv" in error["message"] and "/tmp" not in error["message"]
    paths = b"prompt,init_image\na,/etc/hostname\n"
    local = await api.client.post("/api/v1/batches/import", files={"file": ("p.csv", paths)})
    assert local.status_code == 422 and local.json()["error"]["field"] == "init_image"
    exe = await api.client.post("/api/v1/batches/import", files={"file": ("run.exe", b"MZ")})
    assert exe.status_code == 415
    junk = await api.client.post("/api/v1/batches/import", files={"file": ("b.xlsx", b"PK..")})
    assert junk.status_code == 422


async def test_zip_of_a_batch_is_streamed_and_complete(api: Api) -> None:
    import zipfile

    batch = (
        await api.client.post("/api/v1/batches?wait=true", json=spec("one", "two", "three", n=2))
    ).json()
    r = await api.client.get(f"/api/v1/batches/{batch['id']}/images.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "content-length" not in r.headers  # streamed, not built first
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    names = archive.namelist()
    assert len(names) == 6 and len(set(names)) == 6
    assert archive.testzip() is None
    assert all(archive.read(n).startswith(b"\x89PNG") for n in names)
