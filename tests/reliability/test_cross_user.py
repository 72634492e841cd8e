"""Cross-user access on every route, generated from the live OpenAPI schema.

Alice makes one object of each kind through the API (a finished batch that is a sweep,
with an uploaded reference image, a webhook and its delivery; its tasks, images and
inputs; a preset an admin made). Then, for EVERY operation of ``app.openapi()`` (the
compat APIs switched on, so theirs are in it) and every page of the web UI (listed from
``app.routes``):

- bob (another user) calls it with alice's ids in its path, query and body: an owned
  object answers 404 ``not_found`` (never 403: that would say it exists), nothing of
  alice's (prompts, names, file names, ids, secrets) is in any answer, and no answer is
  a 5xx; afterwards everything alice sees is as it was (bob changed nothing);
- nobody (no token) and a stranger (a made-up token) get 401, each from an address of
  its own so that failed-token throttling is not what answers;
- an admin reads alice's objects (admin rules), and the per-user lists ("mine") still
  hold nothing of hers.

A path parameter this file does not know fails the test ("no fixture for path parameter
X of operation Y"): a new route is covered, or it says why it is not. On SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from pixelkiln.db.users import add_user
from pixelkiln.testing import FakeWebhookReceiver
from tests.integration.api.apikit import SMALL, Api, api_settings, png_bytes, running_api
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.anyio

MARK = "alice-7f3e9"  #: in every text of alice's: found in an answer to anyone else, a leak
BOB = "bob-51c2d"
GHOST = 9_000_001  #: an id of every kind that nobody has
#: the kinds of object a path parameter names, and whether a user owns them
OWNED = {"batch_id", "task_id", "image_id", "asset_id", "queue_id"}
#: operations nobody needs a token for
OPEN = {("GET", "/healthz"), ("POST", "/api/v1/session"), ("DELETE", "/api/v1/session")}
#: reads that are not alice's (the server's health, a blank template) or never end (events)
NOT_HERS = {"/healthz", "/metrics", "/api/v1/events", "/api/v1/batches/{batch_id}/events"}
SIGNED = re.compile(r"\?exp=[0-9]+&sig=[0-9a-f]+")


@dataclass
class Alice:
    """What alice made, by kind, and the texts of hers that nobody else may see."""

    user_id: int
    token: str
    batch_id: int
    task_ids: list[int]
    image_ids: list[int]
    asset_id: int
    preset_id: int
    secrets: list[str] = field(default_factory=list)

    def path_value(self, name: str, operation: str) -> str:
        """The value of path parameter ``name`` that aims ``operation`` at alice's objects."""
        values: dict[str, object] = {
            "batch_id": self.batch_id,
            "queue_id": self.batch_id,  # the img2img service's name for a batch
            "task_id": self.task_ids[0],
            "image_id": self.image_ids[0],
            "asset_id": self.asset_id,
            "preset_id": self.preset_id,  # presets are shared; writing them is for admins
            "user_id": self.user_id,  # admin routes
            "kind": "csv",  # export.{kind}
            "n": 0,  # an image's first input
            "backend": "placeholder",  # the caller's own provider keys
            "name": "placeholder",  # a backend's concurrency (admin)
        }
        if name not in values:
            raise AssertionError(f"no fixture for path parameter {name} of operation {operation}")
        return str(values[name])

    def body_ids(self) -> dict[str, Any]:
        """Fields of request bodies and queries that name objects: filled with alice's."""
        return {
            "batch_id": self.batch_id,
            "batch_ids": [self.batch_id],
            "task_ids": self.task_ids[:1],
            "image_id": self.image_ids[0],
            "owner_id": self.user_id,
            "q": MARK,  # a search for her text finds nothing of hers
            "all_users": True,  # everybody's queue: an admin's, not bob's
        }


# -- the schema, read ---------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    op: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def path_params(self) -> list[str]:
        return [p["name"] for p in self.op.get("parameters", []) if p["in"] == "path"]

    @property
    def owned(self) -> bool:
        return bool(OWNED & set(self.path_params))


def operations(app: FastAPI) -> list[Operation]:
    schema = app.openapi()
    return [
        Operation(method.upper(), path, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
    ]


def pages(app: FastAPI) -> list[str]:
    """The paths of the GET routes left out of the schema: the web UI's pages."""
    found: list[str] = []
    for route in app.routes:
        included = getattr(route, "original_router", None)
        prefix = getattr(getattr(route, "include_context", None), "prefix", "")
        for inner in included.routes if included is not None else [route]:
            if isinstance(inner, APIRoute) and not inner.include_in_schema:
                if "GET" in (inner.methods or ()) and inner.path != "/openapi.json":
                    found.append(prefix + inner.path)
    return found


class Example:
    """A small valid instance of a JSON schema, with alice's ids in fields that name ids."""

    def __init__(self, schema: dict[str, Any], ids: dict[str, Any]) -> None:
        self.components = schema["components"]["schemas"]
        self.ids = ids

    def of(self, node: dict[str, Any], name: str = "") -> Any:
        if "$ref" in node:
            return self.of(self.components[node["$ref"].rsplit("/", 1)[-1]], name)
        if name in self.ids:
            return self.ids[name]
        if "anyOf" in node:
            chosen = [n for n in node["anyOf"] if n.get("type") != "null"] or node["anyOf"]
            return self.of(chosen[0], name)
        if "default" in node and node["default"] is not None:
            return node["default"]
        if "enum" in node:
            return node["enum"][0]
        kind = node.get("type", "object")
        if kind == "object":
            props: dict[str, Any] = node.get("properties", {})
            wanted = set(node.get("required", [])) | (set(props) & set(self.ids))
            return {k: self.of(v, k) for k, v in props.items() if k in wanted}
        if kind == "array":
            return [self.of(node.get("items", {}), name)] * max(1, node.get("minItems", 1))
        if kind == "integer":
            return max(1, int(node.get("minimum", 1)))
        if kind == "number":
            return 0.5 if node.get("exclusiveMinimum", -1) >= 0 else node.get("minimum", 0.5)
        if kind == "boolean":
            return False
        return "x" * max(1, node.get("minLength", 1))


def request_of(operation: Operation, alice: Alice, example: Example) -> tuple[str, dict[str, Any]]:
    """The URL and httpx arguments that aim ``operation`` at alice's objects."""
    path = operation.path
    for name in operation.path_params:
        path = path.replace("{" + name + "}", alice.path_value(name, str(operation)))
    params = {
        p["name"]: example.ids[p["name"]]
        for p in operation.op.get("parameters", [])
        if p["in"] == "query" and p["name"] in example.ids
    }
    kwargs: dict[str, Any] = {"params": params}
    content = operation.op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        kwargs["json"] = example.of(content["application/json"]["schema"])
    elif "multipart/form-data" in content:
        form = example.of(content["multipart/form-data"]["schema"])
        binary = _binary_fields(example, content["multipart/form-data"]["schema"])
        kwargs["files"] = [(k, ("a.png", png_bytes(), "image/png")) for k in binary] or None
        kwargs["data"] = {k: str(v) for k, v in form.items() if k not in binary}
    return path, kwargs


def _binary_fields(example: Example, schema: dict[str, Any]) -> list[str]:
    """The form's file fields (a file, or a list of files)."""
    if "$ref" in schema:
        schema = example.components[schema["$ref"].rsplit("/", 1)[-1]]
    props: dict[str, Any] = schema.get("properties", {})
    return [k for k, v in props.items() if '"binary"' in json.dumps(v)]


# -- answers, read --------------------------------------------------------------------------


def texts_of(response: httpx.Response) -> str:
    """Everything a client can read in an answer: headers, body, and a ZIP's entries."""
    parts = [f"{k}: {v}" for k, v in response.headers.items()]
    body = response.content
    parts.append(body.decode("utf-8", "replace"))
    if body[:2] == b"PK":
        with contextlib.suppress(zipfile.BadZipFile):
            archive = zipfile.ZipFile(io.BytesIO(body))
            parts += archive.namelist()
            parts += [archive.read(n).decode("utf-8", "replace") for n in archive.namelist()]
    return "\n".join(parts)


def ids_named(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(key, value) of every field of a JSON answer, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from ids_named(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from ids_named(v, key)
    else:
        yield key, value


def leaks(response: httpx.Response, alice: Alice) -> list[str]:
    """What of alice's an answer to someone else shows."""
    text = texts_of(response)
    found = [s for s in [MARK, *alice.secrets] if s in text]
    found += re.findall(rf"asset:{alice.asset_id}\b", text)
    if "json" in response.headers.get("content-type", ""):
        owned = {
            "batch_id": {alice.batch_id},
            "queueId": {alice.batch_id},
            "task_id": set(alice.task_ids),
            "image_id": set(alice.image_ids),
            "asset_id": {alice.asset_id},
        }
        found += [f"{k}={v}" for k, v in ids_named(response.json()) if v in owned.get(k, set())]
    return found


# -- the installation -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def installation(database_url: str, data: Path) -> AsyncIterator[Api]:
    settings = api_settings(
        data,
        storage={"data_dir": str(data), "database_url": database_url},
        auth={"enabled": True},
        credits={"enabled": True, "per_image": 1},
        webhooks={"allow_private": True},
        compat={"img2img_service": True, "slides": True},
    )
    async with running_api(settings) as api:
        yield api


async def make_alice(api: Api, receiver: FakeWebhookReceiver) -> Alice:
    """One object of each kind, through the API, as alice (and a preset, as an admin)."""
    user, token = await api.ctx.write(add_user, "alice", credits=1000)
    alice = api.with_token(token)
    _, admin = await api.add_user("root", admin=True)
    upload = await alice.post(
        "/api/v1/assets", files={"files": (f"{MARK}.png", png_bytes(), "image/png")}
    )
    assert upload.status_code == 201, upload.text
    [asset] = upload.json()
    spec = {
        "name": f"{MARK} batch",
        "webhook": f"{receiver.hook_url}?{MARK}",
        "defaults": {**SMALL, "init_image": asset["ref"]},
        "tasks": [{"key": f"{MARK}-key", "prompt": f"{MARK} a lighthouse"}],
        "sweep": {"x": {"steps": [10, 20]}},
    }
    made = await alice.post("/api/v1/batches?wait=true", json=spec)
    assert made.status_code == 201, made.text
    batch = made.json()
    assert batch["status"] == "completed", batch
    preset = await admin.post(
        "/api/v1/presets", json={"title": f"{BOB}-shared", "content": "a shared preset"}
    )
    assert preset.status_code == 201, preset.text
    secret = (await alice.get("/api/v1/me/webhook-secret")).json()["secret"]
    return Alice(
        user_id=user.id,
        token=token,
        batch_id=batch["id"],
        task_ids=[t["id"] for t in batch["tasks"]],
        image_ids=[i["id"] for t in batch["tasks"] for i in t["images"]],
        asset_id=asset["id"],
        preset_id=preset.json()["id"],
        secrets=[token, secret],
    )


async def snapshot(
    api: Api, client: httpx.AsyncClient, ops: list[Operation], alice: Alice
) -> dict[str, Any]:
    """Every JSON read of alice's own (her objects, her lists), as she sees it."""
    example = Example(api.app.openapi(), alice.body_ids())
    seen: dict[str, Any] = {}
    for operation in ops:
        if operation.method != "GET" or operation.path in NOT_HERS:
            continue
        url, kwargs = request_of(operation, alice, example)
        r = await client.get(url, **kwargs)
        if "json" in r.headers.get("content-type", ""):
            # a signed link is signed anew on each read
            seen[str(operation)] = (r.status_code, SIGNED.sub("", r.text))
        elif operation.owned:
            seen[str(operation)] = (r.status_code, len(r.content))
    return seen


@dataclass
class Count:
    requests: int = 0
    server_errors: int = 0
    problems: list[str] = field(default_factory=list)

    def saw(self, where: str, response: httpx.Response) -> None:
        self.requests += 1
        if response.status_code >= 500:
            self.server_errors += 1
            self.problems.append(f"{where}: {response.status_code} {response.text[:200]}")


def addresses() -> Iterator[str]:
    """A client address per unauthenticated call (throttling is per address)."""
    for a, b in itertools.product(range(1, 255), repeat=2):
        yield f"10.77.{a}.{b}"


# -- the test -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(the row's name, the URL): SQLite in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return "SQLite", f"sqlite:///{tmp_path / 'kiln.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return "PostgreSQL", url


async def test_every_route_keeps_alices_objects_hers(
    database: tuple[str, str], tmp_path: Path, tally: Tally
) -> None:
    label, url = database
    count = Count()
    with FakeWebhookReceiver() as receiver:
        async with installation(url, tmp_path / "data") as api:
            alice = await make_alice(api, receiver)
            await _wait_delivered(api, alice)
            ops = operations(api.app)
            assert len(ops) > 60 and any(o.path.startswith("/api/slide/") for o in ops)
            mine = api.with_token(alice.token)
            before = await snapshot(api, mine, ops, alice)
            await _as_bob(api, ops, alice, count)
            await _without_a_token(api, ops, alice, count)
            await _as_admin(api, ops, alice, count)
            await _pages(api, ops, alice, count)
            after = await snapshot(api, mine, ops, alice)
    tally.add(f"cross-user ({label})", inputs=count.requests, server_errors=count.server_errors)
    assert not count.problems, "\n".join(count.problems)
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, f"what alice sees changed after the others' calls: {changed}"


async def _wait_delivered(api: Api, alice: Alice) -> None:
    client = api.with_token(alice.token)
    with anyio.fail_after(20):
        while True:
            rows = (await client.get(f"/api/v1/batches/{alice.batch_id}/webhooks")).json()
            if rows and rows[0]["status"] == "delivered":
                return
            await anyio.sleep(0.05)


async def _as_bob(api: Api, ops: list[Operation], alice: Alice, count: Count) -> None:
    """Bob, with his own batch and image, aims every operation at alice's objects."""
    _, bob = await api.add_user("bob", credits=100)
    own = await bob.post(
        "/api/v1/batches?wait=true",
        json={"name": f"{BOB} batch", "defaults": SMALL, "tasks": [{"prompt": f"{BOB} a fox"}]},
    )
    assert own.status_code == 201, own.text
    example = Example(api.app.openapi(), alice.body_ids())
    # ids nobody has: alice's objects must answer exactly as these do
    ghost = replace(alice, batch_id=GHOST, task_ids=[GHOST], image_ids=[GHOST], asset_id=GHOST)
    nowhere = Example(api.app.openapi(), ghost.body_ids())
    for operation in ops:
        url, kwargs = request_of(operation, alice, example)
        if "events" in operation.path and not operation.owned:
            continue  # bob's own stream never ends (his events only: test_auth.py)
        r = await bob.request(operation.method, url, **kwargs)
        count.saw(f"bob {operation}", r)
        found = leaks(r, alice)
        if found:
            count.problems.append(f"bob {operation} -> {r.status_code} shows {found}")
        if operation.owned and r.status_code != 404:
            count.problems.append(f"bob {operation} on alice's -> {r.status_code}: {r.text[:200]}")
        if operation.owned:
            url, kwargs = request_of(operation, ghost, nowhere)
            none = await bob.request(operation.method, url, **kwargs)
            count.saw(f"bob {operation} on nothing", none)
            if (none.status_code, _numberless(none)) != (r.status_code, _numberless(r)):
                count.problems.append(
                    f"bob {operation}: alice's answers {r.status_code} {r.text[:150]}, "
                    f"nothing's {none.status_code} {none.text[:150]}"
                )
    await _bobs_own_lists_have_his_rows(bob, alice, count)
    await _bobs_own_events(api, bob, alice, count)
    await _smuggled(api, bob, alice, own.json(), count)


def _numberless(response: httpx.Response) -> str:
    """An answer with its numbers out ("no batch 1" and "no batch 9000001" alike)."""
    return re.sub(r"[0-9]+", "N", response.text)


async def _bobs_own_lists_have_his_rows(bob: httpx.AsyncClient, alice: Alice, count: Count) -> None:
    """The lists answer (bob's rows are in them), and none of alice's is."""
    for path in ("/api/v1/batches", "/api/v1/images", "/api/v1/queue", "/api/batch/queues"):
        r = await bob.get(path)
        count.saw(f"bob GET {path}", r)
        if path in ("/api/v1/batches", "/api/v1/images") and BOB not in r.text:
            count.problems.append(f"bob GET {path}: his own rows are missing: {r.text[:200]}")
        if leaks(r, alice):
            count.problems.append(f"bob GET {path} shows {leaks(r, alice)}")


async def _bobs_own_events(api: Api, bob: httpx.AsyncClient, alice: Alice, count: Count) -> None:
    """Bob's event stream from the first event on: his batch's events, none of hers."""
    token = str(bob.headers["authorization"]).removeprefix("Bearer ")
    _, hers = await listen(api.app, "/api/v1/events?after=0", alice.token, seconds=0.6)
    assert MARK.encode() in hers, "her own stream replays her events: bob's would show them"
    for path, his in (
        ("/api/v1/events?after=0", True),
        (f"/api/v1/batches/{alice.batch_id}/events?after=0", False),
    ):
        status, body = await listen(api.app, path, token, seconds=0.6)
        count.requests += 1
        count.server_errors += status >= 500
        text = body.decode("utf-8", "replace")
        if MARK in text or any(s in text for s in alice.secrets):
            count.problems.append(f"bob's stream {path} carries alice's events: {text[:300]}")
        if his and BOB not in text:
            count.problems.append(f"bob's own stream lacks his batch's events: {text[:300]}")
        if not his and status != 404:
            count.problems.append(f"bob's stream of alice's batch -> {status}")


async def listen(app: FastAPI, path: str, token: str, seconds: float) -> tuple[int, bytes]:
    """An event stream as a client hears it for ``seconds``, then hangs up (straight to
    the ASGI app: httpx's ASGI transport waits for a response's end, a stream has none)."""
    raw, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw,
        "raw_path": raw.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 40001),
        "server": ("localhost", 80),
        "app": app,
    }
    sent: list[dict[str, Any]] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep(seconds)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.move_on_after(seconds + 5):
        await app(scope, receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), 0)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def _smuggled(
    api: Api, bob: httpx.AsyncClient, alice: Alice, own: dict[str, Any], count: Count
) -> None:
    """Alice's ids inside bob's own requests: a batch on her upload, her tasks retried
    through his batch, his signed link moved onto her image."""
    ref = f"asset:{alice.asset_id}"
    for where, value in (("init_image", ref), ("reference_images", [ref])):
        body = {"name": "x", "defaults": {**SMALL, where: value}, "tasks": [{"prompt": "p"}]}
        r = await bob.post("/api/v1/batches", json=body)
        count.saw(f"bob's batch with alice's upload as {where}", r)
        # the answer names the ref bob sent, as for one that does not exist
        if not 400 <= r.status_code < 500 or MARK in r.text:
            count.problems.append(f"bob's batch on alice's upload -> {r.status_code}: {r.text}")
    for path, body in (
        ("/api/v1/assets/from-image", {"image_id": alice.image_ids[0]}),
        ("/api/slide/batch/status", {"batch_id": alice.batch_id}),
    ):
        r = await bob.post(path, json=body)
        count.saw(f"bob POST {path} with alice's id", r)
        if r.status_code != 404 or leaks(r, alice):
            count.problems.append(f"bob POST {path} with alice's id -> {r.status_code}: {r.text}")
    r = await bob.put("/api/v1/queue", json={"batch_ids": [alice.batch_id]})
    count.saw("bob PUT /api/v1/queue with alice's batch", r)
    if r.status_code < 400 or leaks(r, alice):
        count.problems.append(f"bob reordered alice's batch -> {r.status_code}: {r.text}")
    for action, body in [
        ("retry", {"task_ids": alice.task_ids[:1]}),
        ("regenerate", {"task_ids": alice.task_ids[:1]}),
    ]:
        r = await bob.post(f"/api/v1/batches/{own['id']}/{action}", json=body)
        count.saw(f"bob {action} of alice's task through his batch", r)
        if r.status_code < 400 or leaks(r, alice):
            count.problems.append(f"bob {action} alice's task in his batch -> {r.status_code}")
    signed = (await bob.get(f"/api/batch/queue/{own['id']}")).text  # the service signs links
    link = re.search(r"/api/v1/images/[0-9]+/file(\?exp=[0-9]+&sig=[0-9a-f]+)", signed)
    assert link, f"bob's image has no signed link to move: {signed}"
    assert (await api.client.get(link[0])).status_code == 200  # it opens his own
    r = await api.client.get(f"/api/v1/images/{alice.image_ids[0]}/file{link[1]}")
    count.saw("bob's signed link on alice's image", r)
    if r.status_code not in (401, 403, 404):
        count.problems.append(f"bob's signed link opened alice's image: {r.status_code}")


async def _without_a_token(api: Api, ops: list[Operation], alice: Alice, count: Count) -> None:
    """No token and a made-up one: 401 on every operation but the open ones."""
    example = Example(api.app.openapi(), alice.body_ids())
    where = addresses()
    for operation in ops:
        if (operation.method, operation.path) in OPEN:
            continue
        url, kwargs = request_of(operation, alice, example)
        for token in (None, "pk_made-up-token"):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            transport = httpx.ASGITransport(app=api.app, client=(next(where), 40000))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost", headers=headers
            ) as client:
                r = await client.request(operation.method, url, **kwargs)
            who = "a stranger" if token else "nobody"
            count.saw(f"{who} {operation}", r)
            if r.status_code != 401 or leaks(r, alice):
                count.problems.append(f"{who} {operation} -> {r.status_code}: {r.text[:200]}")


async def _as_admin(api: Api, ops: list[Operation], alice: Alice, count: Count) -> None:
    """An admin reads alice's objects (no write: an admin's delete would delete them);
    the lists of "mine" are the admin's own."""
    _, admin = await api.add_user("root2", admin=True)
    example = Example(api.app.openapi(), alice.body_ids())
    for operation in ops:
        if operation.method != "GET" or "events" in operation.path:
            continue
        url, kwargs = request_of(operation, alice, example)
        r = await admin.get(url, **kwargs)
        count.saw(f"admin {operation}", r)
        if operation.owned and operation.path.startswith("/api/v1/") and r.status_code != 200:
            count.problems.append(f"admin {operation} on alice's -> {r.status_code}: {r.text}")
    for path in ("/api/v1/batches", "/api/v1/images", "/api/v1/assets", "/api/v1/me/credits"):
        r = await admin.get(path)
        count.saw(f"admin GET {path}", r)
        if leaks(r, alice):
            count.problems.append(f"admin's own list {path} shows {leaks(r, alice)}")
    r = await admin.get("/api/v1/admin/batches")
    count.saw("admin GET /api/v1/admin/batches", r)
    if MARK not in r.text:
        count.problems.append("the admin's list of every batch lacks alice's")


async def _pages(api: Api, ops: list[Operation], alice: Alice, count: Count) -> None:
    """Every page of the web UI, as bob (by his session cookie) and as nobody."""
    _, token = await api.ctx.write(add_user, "bob-web")
    browser = api.with_token(None)
    signed_in = await browser.post("/api/v1/session", json={"token": token})
    assert signed_in.status_code < 300, signed_in.text
    found = pages(api.app)
    assert "/batches/{batch_id}" in found and "/records" in found, found
    for page in found:
        path = fill(page, alice)
        for who, client in (("bob", browser), ("nobody", api.with_token(None))):
            r = await client.get(path)
            count.saw(f"{who} page {page}", r)
            if leaks(r, alice):
                count.problems.append(f"{who} page {page} shows {leaks(r, alice)}")
            if who == "nobody" and page not in ("/login", "/favicon.ico"):
                if r.status_code != 303 or not r.headers["location"].startswith("/login"):
                    count.problems.append(f"nobody page {page} -> {r.status_code}")
        none = await browser.get(fill(page, replace(alice, batch_id=GHOST)))
        mine = await browser.get(path)
        count.saw(f"bob page {page} of nothing", none)
        if (none.status_code, _numberless(none)) != (mine.status_code, _numberless(mine)):
            count.problems.append(f"bob page {page}: alice's differs from nothing's")
    example = Example(api.app.openapi(), alice.body_ids())
    for operation in ops:  # the API by the session cookie, as the pages' scripts call it
        if operation.method == "GET" and operation.owned and "events" not in operation.path:
            url, kwargs = request_of(operation, alice, example)
            r = await browser.get(url, **kwargs)
            count.saw(f"bob's cookie {operation}", r)
            if r.status_code != 404 or leaks(r, alice):
                count.problems.append(f"bob's cookie {operation} -> {r.status_code}")


def fill(page: str, alice: Alice) -> str:
    """A page's path aimed at alice's objects."""
    return re.sub(r"\{(\w+)\}", lambda m: alice.path_value(m[1], f"GET {page}"), page)


def test_a_path_parameter_without_a_fixture_fails_the_test() -> None:
    """A new route whose path names a kind of object this file does not make is not
    silently skipped."""
    alice = Alice(1, "t", 1, [1], [1], 1, 1)
    new = Operation("GET", "/api/v1/schedules/{schedule_id}", {"parameters": []})
    with pytest.raises(AssertionError, match="no fixture for path parameter schedule_id of"):
        alice.path_value("schedule_id", str(new))
