"""NUL and the other control characters in every text a request can carry → one clear 422
naming the field, on SQLite and PostgreSQL alike; never a 5xx, never a closed connection.

The cases are generated from the live OpenAPI schema, so a new route or field is covered
without editing this test: on every operation a query parameter's name; every string
path, query and header parameter, every text
field of a JSON body (nested ones too: ``tasks[0].prompt``) and its keys, every text
field and file name of a form. The rule (pixelkiln.wire.text): C0 controls but tab, line
feed and carriage return, DEL and the C1 controls are refused everywhere; tab, line feed
and carriage return are kept (a prompt has lines).

Quick mode: three characters (NUL, ESC, U+0085) per field; full: every refused one.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

from pixelkiln.db.users import add_user
from pixelkiln.problems import json_path
from pixelkiln.wire.text import CONTROL, visible
from tests.integration.api.apikit import Live, api_settings, serving
from tests.reliability.conftest import Soak, Tally

pytestmark = pytest.mark.anyio

QUICK_CHARS = ["\x00", "\x1b", "\x85"]
ALL_CHARS = [chr(c) for c in range(0xA0) if CONTROL.match(chr(c))]
#: header values travel as latin-1 bytes, and HTTP itself refuses C0 and DEL in them
HEADER_CHARS = ["\x85", "\x9b"]


@dataclass
class Case:
    """One request with one bad text, and the field its 422 must name."""

    label: str
    method: str
    path: str
    field: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, bytes] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()


def _resolve(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    """``node`` with its ``$ref`` followed and an ``anyOf`` reduced to its first
    object, array or string (the shapes that hold text)."""
    while isinstance(node, dict) and "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    if isinstance(node, dict) and "anyOf" in node:
        for kind in ("object", "array", "string"):
            for option in node["anyOf"]:
                found = _resolve(schema, option)
                if _types(found) & {kind}:
                    return found
    return node if isinstance(node, dict) else {}


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def _text_paths(
    schema: dict[str, Any], node: Any, loc: tuple[Any, ...], depth: int = 0
) -> Iterator[tuple[Any, ...]]:
    """Where a JSON body under ``node`` holds text: its fields, list items and keys."""
    node = _resolve(schema, node)
    kinds = _types(node)
    if "string" in kinds and node.get("format") in (None, "password") and "enum" not in node:
        yield loc
    elif "array" in kinds and depth < 4:
        yield from _text_paths(schema, node.get("items", {}), (*loc, 0), depth + 1)
    elif "object" in kinds and depth < 4:
        for name, prop in node.get("properties", {}).items():
            yield from _text_paths(schema, prop, (*loc, name), depth + 1)
        if node.get("additionalProperties", True) is not False:
            yield (*loc, "\x00KEY")  # a key of its own, spelled with the bad character


def _with(loc: tuple[Any, ...], bad: str) -> Any:
    """The smallest JSON that holds ``bad`` at ``loc`` (a key where loc ends in KEY)."""
    if loc and loc[-1] == "\x00KEY":
        value: Any = {f"k{bad}": "v"}
        loc = loc[:-1]
    else:
        value = f"a{bad}b"
    for part in reversed(loc):
        value = [value] if isinstance(part, int) else {part: value}
    return value


def _field_of(loc: tuple[Any, ...], bad: str) -> str:
    if loc and loc[-1] == "\x00KEY":
        loc = (*loc[:-1], f"k{bad}")
    return json_path(loc)


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _cases(schema: dict[str, Any], chars: list[str]) -> Iterator[Case]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield from _operation_cases(schema, path, method.upper(), op, chars)


def _operation_cases(
    schema: dict[str, Any], path: str, method: str, op: dict[str, Any], chars: list[str]
) -> Iterator[Case]:
    label = f"{method} {path}"
    params = op.get("parameters", [])
    ids = {p["name"]: "1" for p in params if p["in"] == "path"}
    for bad in chars:  # every operation: a query parameter's name (known to none)
        yield Case(label, method, _fill(path, ids), f"k{bad}", params={f"k{bad}": "v"})
    for p in params:
        if "string" not in _types(_resolve(schema, p.get("schema", {}))):
            continue
        name = p["name"]
        if p["in"] == "header":
            for bad in HEADER_CHARS:
                value = f"a{bad}b".encode("latin-1")
                yield Case(label, method, _fill(path, ids), name, headers={name: value})
            continue
        for bad in chars:
            if p["in"] == "path":
                where = _fill(path, {**ids, name: quote(f"a{bad}b", safe="")})
                yield Case(label, method, where, name)
            elif p["in"] == "query":
                yield Case(label, method, _fill(path, ids), name, params={name: f"a{bad}b"})
    body = op.get("requestBody", {}).get("content", {})
    if "application/json" in body:
        for loc in _text_paths(schema, body["application/json"]["schema"], ()):
            for bad in chars:
                field = _field_of(loc, bad)
                json = _with(loc, bad)
                yield Case(label, method, _fill(path, ids), field, json=json)
    if "multipart/form-data" in body:
        form = _resolve(schema, body["multipart/form-data"]["schema"])
        files = [n for n, p in form.get("properties", {}).items() if _is_file(schema, p)]
        upload = {files[0]: ("in.png", PNG, "image/png")} if files else None
        for name, prop in form.get("properties", {}).items():
            if name in files or "string" not in _types(_resolve(schema, prop)):
                continue
            for bad in chars:
                data = {name: f"a{bad}b"}
                yield Case(label, method, _fill(path, ids), name, data=data, files=upload)
        for name in files:
            for bad in chars:
                named = {name: (f"in{bad}.png", PNG, "image/png")}
                yield Case(label, method, _fill(path, ids), name, data={}, files=named)


def _is_file(schema: dict[str, Any], prop: Any) -> bool:
    node = _resolve(schema, prop)
    if "array" in _types(node):
        node = _resolve(schema, node.get("items", {}))
    return node.get("format") == "binary"


@pytest.fixture(params=["sqlite", "postgres"])
async def live(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Live]]:
    if request.param == "sqlite":
        name, url = "SQLite", f"sqlite:///{tmp_path / 'kiln.db'}"
    else:
        name, url = "PostgreSQL", request.getfixturevalue("postgres_url")
    data = tmp_path / "data"
    settings = api_settings(
        data,
        storage={"data_dir": str(data), "database_url": url},
        auth={"enabled": True},
        compat={"slides": True, "img2img_service": True},
    )
    async with serving(settings, run_scheduler=False) as running:
        yield name, running


async def test_control_characters_are_refused_on_every_field(
    live: tuple[str, Live], soak: Soak, tally: Tally
) -> None:
    name, running = live
    _, token = await running.app.state.ctx.write(add_user, "admin", is_admin=True, credits=100)
    schema = running.app.openapi()
    cases = list(_cases(schema, soak.pick(QUICK_CHARS, ALL_CHARS)))
    labels = {c.label for c in cases}
    assert len(labels) == sum(len(item) for item in schema["paths"].values()), sorted(labels)
    answers: list[tuple[Case, httpx.Response]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=running.url, headers=headers, timeout=30) as client:
        for case in cases:
            answer = await _send(client, case)
            answers.append((case, answer))
            assert answer.headers.get("connection") != "close", (case, answer.text)
        still = await client.get("/healthz")  # on the same kept-alive connections
    server_errors = sum(1 for _, answer in answers if answer.status_code >= 500)
    tally.add(f"control characters ({name})", inputs=len(answers), server_errors=server_errors)
    wrong = [
        (case.label, case.field, answer.status_code, answer.text[:200])
        for case, answer in answers
        if not _names(answer, case.field)
    ]
    assert server_errors == 0
    assert not wrong, wrong[:20]
    assert still.status_code == 200


async def _send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    if case.data is None:
        return await client.request(
            case.method, case.path, params=case.params, headers=case.headers, json=case.json
        )
    # a form written out by hand: a client library would escape a file name's controls
    body, kind = _multipart(case.data, case.files or {})
    return await client.request(
        case.method, case.path, params=case.params, content=body, headers={"content-type": kind}
    )


def _multipart(data: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = "kilnboundary7MA4YWxkTrZu0gW"
    parts: list[bytes] = []
    for name, value in data.items():
        head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value.encode())
    for name, (filename, content, kind) in files.items():
        head = (
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        )
        parts.append(head.encode() + content)
    body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _names(answer: httpx.Response, field: str) -> bool:
    """Whether ``answer`` is the rule's 422 naming ``field`` (in any API's error shape:
    ours, the img2img service's or the slide API's)."""
    if answer.status_code != 422:
        return False
    body = answer.json()
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    message = str(error.get("message") or error.get("detail") or "")
    if "control character" not in message and "NUL" not in message:
        return False
    expected = visible(field).lower()
    return expected == str(error.get("field", "")).lower() or expected in message.lower()


async def test_tab_newline_and_carriage_return_are_text(live: tuple[str, Live]) -> None:
    """Where text has lines, they are kept as sent, on either database."""
    _, running = live
    _, token = await running.app.state.ctx.write(add_user, "admin", is_admin=True)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=running.url, headers=headers) as client:
        body = {"title": "two\tcolumns", "content": "line one\r\nline two\n{prompt}"}
        made = await client.post("/api/v1/presets", json=body)
        assert made.status_code == 201, made.text
        again = await client.get(f"/api/v1/presets/{made.json()['id']}")
        assert again.json()["content"] == body["content"]
        assert again.json()["title"] == body["title"]
