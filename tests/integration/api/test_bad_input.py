"""Bad input through the API is answered whole: one 422 with every problem, valid keys listed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from apikit import Api, api_settings, running_api, spec

from pixelkiln.specs import BATCH_KEYS, TASK_KEYS

pytestmark = pytest.mark.anyio


async def test_an_unknown_task_field_lists_the_valid_ones(api: Api) -> None:
    body = spec("a cat")
    body["tasks"][0]["colour"] = "red"
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "tasks[0].colour")
    [problem] = error["problems"]
    assert problem == {
        "where": "task 1",
        "field": "tasks[0].colour",
        "message": f"unknown key 'colour'; known keys are: {', '.join(TASK_KEYS)}",
    }


async def test_an_unknown_top_level_field_lists_the_top_level_keys(api: Api) -> None:
    r = await api.client.post("/api/v1/batches", json={**spec("a cat"), "prio": 3})
    error = r.json()["error"]
    assert r.status_code == 422 and error["field"] == "prio"
    assert error["message"].endswith("known keys are: " + ", ".join(BATCH_KEYS))


async def test_unknown_upload_and_bad_values_come_in_one_answer(api: Api) -> None:
    body = spec("a cat", "a dog", "a bird")
    body["tasks"][0]["init_image"] = "asset:999"
    body["tasks"][1]["n"] = 11
    body["tasks"][2]["backend"] = "nope"
    body["tasks"][2]["reference_images"] = ["/etc/hostname"]
    r = await api.client.post("/api/v1/batches", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == "tasks[1].n"
    messages = {(p["where"], p["field"]): p["message"] for p in error["problems"]}
    assert next(iter(messages)) == ("task 2", "tasks[1].n")  # what does not fit the schema first
    assert sorted(messages) == [
        ("task 1", "init_image"),
        ("task 2", "tasks[1].n"),
        ("task 3", "backend"),
        ("task 3", "reference_images"),
    ]
    assert messages["task 1", "init_image"] == "asset:999: no uploaded image 999"
    assert "'/etc/hostname' is not an uploaded image" in messages["task 3", "reference_images"]
    assert (await api.client.get("/api/v1/batches")).json()["total"] == 0


async def test_an_imported_table_names_rows_in_one_answer(api: Api) -> None:
    table = b"prompt,n,init_image\na,0,\nb,1,asset:999\n"
    files = {"file": ("rows.csv", io.BytesIO(table), "text/csv")}
    r = await api.client.post("/api/v1/batches/import", files=files)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_spec"
    assert [(p["where"], p["field"]) for p in error["problems"]] == [
        ("row 2", "n"),
        ("row 3", "init_image"),
    ]
    assert error["message"].startswith("rows.csv, row 2, field 'n'")


async def test_other_request_bodies_list_their_valid_fields(api: Api) -> None:
    made = await api.client.post("/api/v1/batches?wait=true", json=spec("a cat"))
    batch_id = made.json()["id"]
    r = await api.client.post(f"/api/v1/batches/{batch_id}/retry", json={"task_idz": [1]})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "task_idz")
    assert error["message"] == (
        "task_idz: unknown field 'task_idz'; known fields are: task_ids, include_cancelled"
    )


async def test_an_imported_table_over_the_task_limit_is_refused_before_its_rows(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    settings = api_settings(
        data, storage={"data_dir": str(data)}, limits={"max_tasks_per_batch": 3}
    )
    table = b"prompt\n" + b"".join(b"row %d\n" % i for i in range(5))
    async with running_api(settings, run_scheduler=False) as running:
        for path in ("/api/v1/batches/import", "/api/v1/tables/parse"):
            files = {"file": ("rows.csv", io.BytesIO(table), "text/csv")}
            r = await running.client.post(path, files=files)
            assert r.status_code == 422, (path, r.text)
            assert "max_tasks_per_batch" in r.text and "5" in r.text, r.text
