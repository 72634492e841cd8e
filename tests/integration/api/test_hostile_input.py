"""Hostile and odd input: every bad request is a 4xx with the error body, never a 500.

Numbers past 64 bits, Unicode digits, dates outside what a timestamp can say,
files deleted under a request, presets that would break every batch using them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api, png_bytes, spec
from fastapi import FastAPI
from typer.testing import CliRunner

from pixelkiln.api.errors import install_error_handlers
from pixelkiln.cli import app as cli_app
from pixelkiln.config import load_settings
from pixelkiln.db.credits import MAX_BALANCE
from pixelkiln.db.database import Database
from pixelkiln.db.records import get_asset, get_image
from pixelkiln.db.users import add_user

pytestmark = pytest.mark.anyio

BIG = 10**20  # past SQLite's (and PostgreSQL's bigint) 64-bit integers


def assert_4xx(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.request.url, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] and error["message"], response.text
    return error


def with_asset(ref: str) -> dict[str, Any]:
    return {"name": "x", "tasks": [{"prompt": "p", "init_image": ref, "width": 64, "height": 64}]}


async def test_numbers_past_64_bits_are_4xx_wherever_they_go(auth_api: Api) -> None:
    user_id, admin = await auth_api.add_user("root", admin=True, credits=100)
    made = await admin.post("/api/v1/batches", json=spec("a cat"))
    batch = made.json()["id"]
    image = png_bytes()
    attempts = [
        admin.get(f"/api/v1/batches/{BIG}"),
        admin.get(f"/api/v1/tasks/{BIG}"),
        admin.get(f"/api/v1/images/{BIG}"),
        admin.get(f"/api/v1/images/{BIG}/file"),
        admin.get(f"/api/v1/assets/{BIG}/file"),
        admin.get(f"/api/v1/presets/{BIG}"),
        admin.get(f"/api/v1/images?before={BIG}"),
        admin.get(f"/api/v1/images?batch_id={BIG}"),
        admin.get(f"/api/v1/batches?offset={BIG}"),
        admin.get(f"/api/v1/batches/{batch}?task_offset={BIG}"),
        admin.get(f"/api/v1/batches/{batch}/log?after={BIG}"),
        admin.get(f"/api/v1/batches/{batch}/events?after={BIG}"),
        admin.get(f"/api/v1/batches/{batch}/events", headers={"Last-Event-ID": str(BIG)}),
        admin.get("/api/v1/events", headers={"Last-Event-ID": str(BIG)}),
        admin.post(f"/api/v1/batches/{batch}/retry", json={"task_ids": [BIG]}),
        admin.post(
            "/api/v1/batches/upload",
            data={"prompt": "p", "preset_id": str(BIG)},
            files=[("files", ("a.png", image, "image/png"))],
        ),
        admin.post("/api/v1/batches", json=with_asset(f"asset:{BIG * 1000}")),
        admin.post("/api/v1/presets", json={"title": "t", "content": "c", "position": BIG}),
        admin.post("/api/v1/presets/reorder", json={"ids": [BIG]}),
        admin.patch(f"/api/v1/admin/users/{BIG}", json={"active": False}),
        admin.post(f"/api/v1/admin/users/{BIG}/credits", json={"amount": 1}),
        admin.post(f"/api/v1/admin/users/{user_id}/credits", json={"amount": BIG}),
        admin.post("/api/v1/admin/users", json={"name": "rich", "credits": BIG}),
    ]
    for response in await asyncio.gather(*attempts):
        assert_4xx(response)
    assert (await admin.get("/api/v1/me/credits")).json()["balance"] == 99


async def test_an_overflow_that_slips_through_is_404_in_the_path_else_422() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        in_path = await client.get(f"/things/{BIG}")
        elsewhere = await client.get("/things/7")
    assert assert_4xx(in_path, 404)["code"] == "not_found"
    assert assert_4xx(elsewhere, 422)["code"] == "invalid_request"


async def test_credit_grants_and_balances_are_bounded(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    rich_id, rich = await auth_api.add_user("rich", credits=MAX_BALANCE)
    poor_id, _ = await auth_api.add_user("poor", credits=7)
    for amount in (2**62, -(2**62)):
        r = await admin.post(f"/api/v1/admin/users/{poor_id}/credits", json={"amount": amount})
        assert assert_4xx(r, 422)["field"] == "amount"
    over = await admin.post(f"/api/v1/admin/users/{rich_id}/credits", json={"amount": 1})
    error = assert_4xx(over, 422)
    assert error["code"] == "balance_limit" and "may not exceed" in error["message"]
    assert (await rich.get("/api/v1/me/credits")).json()["balance"] == MAX_BALANCE
    back = await admin.post(f"/api/v1/admin/users/{poor_id}/credits", json={"amount": -8})
    assert assert_4xx(back, 402)["message"] == "cannot take 8 credit(s): the balance is 7"
    new = await admin.post("/api/v1/admin/users", json={"name": "x", "credits": 10**13})
    assert assert_4xx(new, 422)["field"] == "credits"


def test_kiln_users_grant_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n')
    runner = CliRunner()

    def kiln(command: str, *args: str) -> tuple[int, str]:
        result = runner.invoke(cli_app, ["users", command, "--config", str(config), *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception
        )
        return result.exit_code, " ".join(result.stderr.split())  # rich wraps lines

    assert kiln("add", "alice", "--credits", "5")[0] == 0
    assert kiln("add", "bob", "--credits", str(BIG))[0] == 2
    db = Database.open(load_settings(config).storage.resolved_database_url())
    try:
        db.write(add_user, "carol", credits=MAX_BALANCE)
    finally:
        db.close()
    code, out = kiln("grant", "alice", str(BIG))
    assert code == 2 and "1000000000000" in out
    code, out = kiln("grant", "alice", "--", "-9")
    assert code == 2 and "cannot take 9 credit(s): the balance is 5" in out
    code, out = kiln("grant", "carol", "1")
    assert code == 2 and "may not exceed" in out
    code, out = kiln("grant", str(BIG), "1")  # too big to be an id: looked up as a name
    assert code == 2 and f"no user '{BIG}'" in out
    code, out = kiln("grant", "²", "1")  # str.isdigit() says yes; int() would refuse
    assert code == 2 and "no user '²'" in out


async def test_unicode_digits_are_not_ids(api: Api) -> None:
    made = await api.client.post("/api/v1/batches", json=spec("a cat"))
    header = [(b"Last-Event-ID", "²".encode("latin-1"))]
    r = await api.client.get(f"/api/v1/batches/{made.json()['id']}/events", headers=header)
    assert assert_4xx(r, 422)["field"] == "Last-Event-ID"
    assert_4xx(await api.client.get("/api/v1/events", headers=header), 422)
    for field in ("init_image", "reference_images"):
        task: dict[str, Any] = {"prompt": "p", "width": 64, "height": 64}
        task[field] = "asset:²" if field == "init_image" else ["asset:²"]
        r = await api.client.post("/api/v1/batches", json={"name": "x", "tasks": [task]})
        error = assert_4xx(r, 422)
        assert error["code"] == "invalid_spec" and error["field"] == field


async def test_dates_at_the_ends_of_the_calendar_are_answered(api: Api) -> None:
    await api.client.post("/api/v1/batches?wait=true", json=spec("a cat"))
    first, last = "0001-01-01T00:00:00", "9999-12-31T23:59:59"
    for params, total in [
        ({"since": first}, 1),
        ({"until": first}, 0),
        ({"since": last}, 0),
        ({"until": last}, 1),
        ({"since": f"{first}+14:00", "until": f"{last}-14:00"}, 1),
    ]:
        r = await api.client.get("/api/v1/images", params=params)
        assert r.status_code == 200, (params, r.text)
        assert r.json()["total"] == total, params


async def test_files_gone_from_disk_are_404_file_missing(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/batches/upload?wait=true",
        data={"prompt": "p", "width": "64", "height": "64"},
        files=[("files", ("a.png", png_bytes(72), "image/png"))],
    )
    assert r.status_code == 201, r.text
    image_id = r.json()["tasks"][0]["images"][0]["id"]
    info = await api.ctx.read(get_image, image_id)
    asset = await api.ctx.read(get_asset, 1)
    api.ctx.storage.absolute(info.image.path).unlink()
    api.ctx.storage.absolute(asset.path).unlink()
    for url in (
        f"/api/v1/images/{image_id}/file",
        f"/api/v1/images/{image_id}/thumbnail",
        f"/api/v1/images/{image_id}/inputs/0",
        "/api/v1/assets/1/file",
    ):
        error = assert_4xx(await api.client.get(url), 404)
        assert error["code"] == "file_missing", url
        assert str(api.ctx.storage.root) not in error["message"]  # no server paths


async def test_preset_params_are_checked_when_the_preset_is_saved(api: Api) -> None:
    bad = {"title": "t", "content": "c", "params": {"seed": "abc", "n": 99}}
    r = await api.client.post("/api/v1/presets", json=bad)
    error = assert_4xx(r, 422)
    assert error["field"] == "params.seed"
    assert {p["field"] for p in error["problems"]} == {"params.seed", "params.n"}
    good = await api.client.post(
        "/api/v1/presets", json={"title": "t", "content": "c", "params": {"steps": 12}}
    )
    assert good.status_code == 201 and good.json()["params"] == {"steps": 12}
    patched = await api.client.patch(
        f"/api/v1/presets/{good.json()['id']}", json={"params": {"width": BIG}}
    )
    assert assert_4xx(patched, 422)["field"] == "params.width"
    assert (await api.client.get("/api/v1/presets")).json()[0]["params"] == {"steps": 12}


async def test_reorder_refuses_repeats_and_keeps_the_rest_after_the_listed(api: Api) -> None:
    ids = []
    for title in "ABCD":
        made = await api.client.post("/api/v1/presets", json={"title": title, "content": "c"})
        ids.append(made.json()["id"])
    twice = await api.client.post("/api/v1/presets/reorder", json={"ids": [ids[0], ids[0]]})
    assert assert_4xx(twice, 422)["field"] == "ids"
    r = await api.client.post("/api/v1/presets/reorder", json={"ids": [ids[2]]})
    assert r.status_code == 200, r.text
    assert [p["title"] for p in r.json()] == ["C", "A", "B", "D"]
    assert [p["position"] for p in r.json()] == [1, 2, 3, 4]


async def test_an_unreadable_image_is_named_without_memory_addresses(api: Api) -> None:
    r = await api.client.post(
        "/api/v1/assets", files=[("files", ("a.png", b"not an image", "image/png"))]
    )
    error = assert_4xx(r, 422)
    assert "JPEG, PNG, GIF or WebP" in error["message"] and "0x" not in r.text


async def test_an_import_of_two_files_names_the_field_file(api: Api) -> None:
    table = b"prompt,width,height\nhi,64,64\n"
    r = await api.client.post(
        "/api/v1/batches/import",
        files=[("file", ("a.csv", table, "text/csv")), ("file", ("b.csv", table, "text/csv"))],
    )
    assert assert_4xx(r, 422)["field"] == "file"
