"""docs/recipes/pipeline-stage.md, run as written: its Django views, served over real HTTP
on loopback, in front of a real pixelkiln server.

The recipe's ``# stage/...`` code blocks are executed as the modules they name, so the
page cannot drift from code that works. The stage's page is played by httpx reading the
relayed event stream; pixelkiln's webhook calls the stage's ``done`` view.
"""

from __future__ import annotations

import json
import re
import socketserver
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from apikit import SMALL, Live

from pixelkiln import AsyncClient, Client
from pixelkiln.specs import BatchSpec
from pixelkiln.testing import wait_until

django = pytest.importorskip("django")
from django.conf import settings as django_settings  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.urls import clear_url_caches  # noqa: E402

pytestmark = pytest.mark.anyio

RECIPE = Path(__file__).resolve().parents[3] / "docs" / "recipes" / "pipeline-stage.md"
#: a ```python block whose first line names the stage module it is: "# stage/kiln.py"
BLOCK = re.compile(r"```python\n(# stage/(\w+)\.py\n.*?)```", re.S)


def _load_recipe() -> types.ModuleType:
    """The recipe's modules as the package ``stage`` (Django configured first)."""
    if not django_settings.configured:
        django_settings.configure(
            DEBUG=False,
            SECRET_KEY="recipe-test",
            ROOT_URLCONF="stage.urls",
            ALLOWED_HOSTS=["127.0.0.1"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
        )
        django.setup()
    package = types.ModuleType("stage")
    package.__path__ = []
    sys.modules["stage"] = package
    for code, name in BLOCK.findall(RECIPE.read_text(encoding="utf-8")):
        module = types.ModuleType(f"stage.{name}")
        sys.modules[module.__name__] = module
        setattr(package, name, module)
        exec(compile(code, f"{RECIPE.name}: stage/{name}.py", "exec"), module.__dict__)
    return package


class _Threaded(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a relay still streaming must not hold the test's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def stage(live: Live) -> Iterator[tuple[str, types.ModuleType]]:
    """The stage app on a loopback port, pointed at the live pixelkiln server."""
    package = _load_recipe()
    clear_url_caches()  # Django keeps the resolver of the first test's ``stage.urls``
    server = make_server("127.0.0.1", 0, WSGIHandler(), _Threaded, _Quiet)
    url = f"http://127.0.0.1:{server.server_port}"
    django_settings.PIXELKILN_URL = live.url
    django_settings.PIXELKILN_TOKEN = None
    django_settings.PIXELKILN_WEBHOOK = f"{url}/kiln/done"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, package
    finally:
        server.shutdown()
        server.server_close()
        for name in [n for n in sys.modules if n == "stage" or n.startswith("stage.")]:
            del sys.modules[name]


async def _page(url: str, batch_id: int, last: int | None = None) -> list[tuple[str, Any]]:
    """What the stage's page receives: (event name, data) until the relay ends."""
    headers = {"Last-Event-ID": str(last)} if last else {}
    frames: list[tuple[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream("GET", f"{url}/stage/{batch_id}/events", headers=headers) as answer,
    ):
        assert answer.headers["content-type"].startswith("text/event-stream")
        name, ident = "", 0
        async for line in answer.aiter_lines():
            if line.startswith("id: "):
                assert int(line[4:]) > ident  # in order, none repeated
                ident = int(line[4:])
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                frames.append((name, json.loads(line[6:])))
    return frames


async def _secret(live: Live) -> str:
    async with AsyncClient(live.url) as kiln:
        return await kiln.webhook_secret()


async def test_the_relay_renames_events_and_the_webhook_reaches_the_stage(
    live: Live, stage: tuple[str, types.ModuleType]
) -> None:
    url, package = stage
    django_settings.PIXELKILN_WEBHOOK_SECRET = await _secret(live)
    spec = {
        "name": "storyboard 1",
        "defaults": SMALL,
        "webhook": django_settings.PIXELKILN_WEBHOOK,
        "tasks": [{"key": "s1", "prompt": "a lighthouse"}, {"key": "s2", "prompt": "REJECT"}],
    }
    async with AsyncClient(live.url) as kiln:
        batch = await kiln.create_batch(spec)
        frames = await _page(url, batch.id)
        names = [name for name, _ in frames]
        assert names[0] == "stage_update" and "batch_update" not in names
        assert names[-1] == "done" and frames[-1][1]["summary"]["status"] == "partial"
        generated = [data for name, data in frames if name == "image_generated"]
        assert [g["item_key"] for g in generated] == ["s1"]
        assert generated[0]["image"]["url"].startswith("/api/v1/images/")
        assert sorted(d["item_key"] for n, d in frames if n == "progress") == ["s1", "s2"]
        assert [d["item_key"] for n, d in frames if n == "error"] == ["s2"]
        assert names.index("image_generated") < names.index("done")
        await wait_until(lambda: batch.id in package.kiln.FINISHED)
        assert package.kiln.FINISHED[batch.id]["status"] == "partial"

        # the stage saw the webhook before the sender wrote down its answer: wait for that
        async def delivered() -> bool:
            return [d.status for d in await kiln.webhooks(batch.id)] == ["delivered"]

        await wait_until(delivered)
        [delivery] = await kiln.webhooks(batch.id)
    assert (delivery.status, delivery.response_code) == ("delivered", 204)


async def test_a_badly_signed_webhook_is_refused_by_the_stage(
    live: Live, stage: tuple[str, types.ModuleType]
) -> None:
    url, package = stage
    django_settings.PIXELKILN_WEBHOOK_SECRET = "whsec_not-the-one"
    async with AsyncClient(live.url) as kiln:
        batch = await kiln.create_batch(
            {
                "name": "b",
                "defaults": SMALL,
                "webhook": f"{url}/kiln/done",
                "tasks": [{"prompt": "a fox"}],
            },
            wait=True,
        )

        async def tried() -> bool:
            rows = await kiln.webhooks(batch.id)
            return bool(rows) and rows[0].response_code == 400

        await wait_until(tried)
    assert batch.id not in package.kiln.FINISHED


ITEMS_READY = "items" in BatchSpec.model_fields and hasattr(Client, "regenerate")


@pytest.mark.skipif(not ITEMS_READY, reason="needs batch items and Client.regenerate (issue #9)")
async def test_a_storyboard_starts_with_the_projects_backend_and_regenerates_an_item(
    live: Live, stage: tuple[str, types.ModuleType]
) -> None:
    url, package = stage
    django_settings.PIXELKILN_WEBHOOK_SECRET = await _secret(live)
    board = {
        "id": 12,
        "items": [
            {"id": f"s{i}", "title": f"shot {i}", "visual_desc": "a harbour", **SMALL}
            for i in range(1, 4)
        ],
    }
    async with httpx.AsyncClient(timeout=60) as http:
        started = await http.post(
            f"{url}/stage/start", json={"board": board, "project": {"style": "ink wash"}}
        )
        by_project = await http.post(
            f"{url}/stage/start",
            json={"board": board, "project": {"style": "ink", "image_backend": "slow"}},
        )
    assert started.status_code == 201, started.text
    batch_id = started.json()["batch_id"]
    frames = await _page(url, batch_id)
    assert frames[-1] == ("done", frames[-1][1]) and frames[-1][1]["summary"]["succeeded"] == 3
    async with AsyncClient(live.url) as kiln:
        batch = await kiln.get_batch(batch_id)
        assert batch.tasks[0].prompt == "ink wash. shot 1: a harbour"
        assert {t.backend for t in batch.tasks} == {"placeholder"}  # the server's default
        chosen = await kiln.get_batch(by_project.json()["batch_id"])
        assert {t.backend for t in chosen.tasks} == {"slow"}  # the project's setting wins
        await kiln.cancel_batch(chosen.id)
        async with httpx.AsyncClient(timeout=60) as http:
            again = await http.post(f"{url}/stage/{batch_id}/regenerate", json={"keys": ["s2"]})
        assert again.status_code == 200, again.text
        last = frames[-1]
        rerun = await _page(url, batch_id)
        assert rerun[-1][0] == "done" and last[1] != rerun[-1][1]

        async def ended_twice() -> bool:
            rows = await kiln.webhooks(batch_id)
            return len(rows) == 2 and all(r.status == "delivered" for r in rows)

        await wait_until(ended_twice)
    assert package.kiln.FINISHED[batch_id]["succeeded"] == 3


async def test_pixelkiln_refusals_reach_the_page_as_json_with_their_status(
    live: Live, stage: tuple[str, types.ModuleType]
) -> None:
    """Every view that calls pixelkiln answers its refusal with pixelkiln's status and
    error, not a 500: an unknown key to regenerate, an unknown batch's events, a bad spec."""
    url, _ = stage
    async with AsyncClient(live.url) as kiln:
        batch = await kiln.create_batch(
            {"name": "b", "defaults": SMALL, "tasks": [{"key": "s1", "prompt": "a fox"}]},
            wait=True,
        )
    board = {"id": 1, "items": [{"id": "s1", "title": "t", "visual_desc": "d"}]}
    async with httpx.AsyncClient(timeout=60) as http:
        unknown_key = await http.post(f"{url}/stage/{batch.id}/regenerate", json={"keys": ["s9"]})
        unknown_batch = await http.get(f"{url}/stage/999999/events")
        bad_backend = await http.post(
            f"{url}/stage/start", json={"board": board, "project": {"image_backend": "nope"}}
        )
    assert unknown_key.status_code == 404
    assert unknown_key.json()["error"]["code"] == "not_found"
    assert "s9" in unknown_key.json()["error"]["message"]
    assert unknown_batch.status_code == 404
    assert unknown_batch.headers["content-type"] == "application/json"
    assert bad_backend.status_code == 422
    assert "nope" in bad_backend.json()["error"]["message"]
