"""schemathesis against the live OpenAPI schema of a real `kiln serve`, auth on, on SQLite
and PostgreSQL: every check (5xx, status codes, content types, response schemas and
headers, negative data rejected, positive data accepted, 405s and ``Allow``, auth not
ignored, ...) in every phase (examples, coverage, fuzzing, stateful) → 0 failures.

The server runs with both drop-in APIs on, and two other users own data in it (a
finished batch with images, an upload) while the run goes as an admin: every route is
reached, and an admin route may change any user but the one the run goes as (the hooks
below; a fuzzer that revokes its own token tests nothing after that).

Left out, and why:

- ``GET /api/v1/events`` and ``GET /api/v1/batches/{id}/events``: Server-Sent Events,
  which stream until the client leaves (a heartbeat every ``heartbeat_seconds``), so a
  request never ends on its own; tests/integration/api covers them.

Operations whose body is checked beyond what a JSON Schema can say take ``422`` as a
valid answer to schema-valid data (positive data acceptance), each listed in
:data:`CHECKED_BEYOND_SCHEMA` with the rule the schema cannot hold.

Quick mode: 6 examples per operation; every phase on SQLite, the random ones (fuzzing,
stateful) on PostgreSQL: the coverage phase's 4,000 boundary cases are the same on both
databases and take two minutes here. ``KILN_SOAK=full``: every phase on both, 200
examples per operation in the fuzzing phase (some 18,000 random cases over the 89
operations, besides the coverage phase's): a long run. The seed is fixed
(``KILN_SCHEMATHESIS_SEED`` changes it) and printed, with the command to replay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import KILN, env, serving
from tests.reliability.conftest import MODE, Soak, Tally

SEED = int(os.environ.get("KILN_SCHEMATHESIS_SEED", "20261130"))
#: streams that never end on their own (see the module's docstring)
EXCLUDED = r"/events$"
#: operation → the rule of its body that the schema cannot hold (so 422 answers valid data)
CHECKED_BEYOND_SCHEMA = {
    "POST /api/v1/batches": "a batch needs a task; prompts, backends, presets must exist",
    "POST /api/v1/batches/upload": "images must be images; the preset must exist",
    "POST /api/v1/batches/import": "the file must be a batch file (its name and content)",
    "POST /api/v1/batches/{batch_id}/regenerate": "keys or task_ids, not both",
    "POST /api/v1/tables/parse": "the file must be a batch table (its name and content)",
    "POST /api/v1/tables/export": "each cell must be a batch table's column",
    "POST /api/v1/images/{image_id}/edit": "the backend and model must exist",
    "POST /api/batch/create": "images must be images; a prompt or a preset",
    "POST /api/slide/batch/generate": "the style and backend must exist",
    "PUT /api/v1/me/provider-keys/{backend}": "the backend must take a user's key",
    "POST /api/v1/presets": "params must suit the backend they name",
    "PATCH /api/v1/presets/{preset_id}": "params must suit the backend they name",
}
KILN_TOML = """\
[storage]
database_url = "{database}"

[auth]
enabled = true

[compat]
slides = true
img2img_service = true

[server]
max_wait_seconds = 2
heartbeat_seconds = 0.5

[[backends]]
name = "placeholder"
type = "placeholder"
"""
#: the hooks module that the schemathesis run loads (SCHEMATHESIS_HOOKS)
HOOKS = """\
import os

import schemathesis

OWN_ID = int(os.environ["KILN_FUZZ_OWN_ID"])
VICTIM_ID = int(os.environ["KILN_FUZZ_VICTIM_ID"])


@schemathesis.hook
def before_call(context, case, kwargs):
    # an admin route may change any user but the one the run goes as (every phase)
    path = case.path_parameters
    if path and str(path.get("user_id")) == str(OWN_ID):
        path["user_id"] = VICTIM_ID
"""


def _config(soak: Soak) -> str:
    lines = [
        f"seed = {SEED}",
        "[generation]",
        f"max-examples = {soak.pick(6, 200)}",
        "[checks]",
        "enabled = true",
    ]
    for operation in CHECKED_BEYOND_SCHEMA:
        method, path = operation.split(" ", 1)
        lines += [
            "[[operations]]",
            f'include-path = "{path}"',
            f'include-method = "{method}"',
            "checks.positive_data_acceptance.expected-statuses = "
            '["2xx", "401", "402", "403", "404", "409", "415", "422"]',
        ]
    return "\n".join(lines) + "\n"


def _add_user(folder: Path, name: str, *extra: str) -> tuple[int, str]:
    """``kiln users add``: the new user's id and token."""
    done = subprocess.run(
        [*KILN, "users", "add", name, *extra],
        cwd=folder,
        env=env(folder),
        capture_output=True,
        text=True,
        check=True,
    )
    said = done.stderr.split()  # "Added admin 'fuzzer' (id 1) with ..."; the token on stdout
    return int(said[said.index("(id") + 1].rstrip(")")), done.stdout.split()[-1]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield "SQLite", f"sqlite:///{tmp_path / 'kiln.db'}"
    else:
        yield "PostgreSQL", request.getfixturevalue("postgres_url")


def _others_data(url: str, token: str) -> None:
    """Another user's finished batch (images) and upload, for the run to find or not."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        spec = {
            "name": "someone else's",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": "a fox", "key": "fox"}, {"prompt": "a hen", "key": "hen"}],
        }
        made = client.post("/api/v1/batches", params={"wait": "true"}, json=spec)
        assert made.status_code in (200, 201), made.text
        png = client.get(f"/api/v1/images/{made.json()['tasks'][0]['images'][0]['id']}/file")
        upload = client.post("/api/v1/assets", files={"files": ("in.png", png.content)})
        assert upload.status_code == 201, upload.text


def _run(folder: Path, url: str, token: str, soak: Soak, phases: str, own: int, victim: int) -> Any:
    (folder / "schemathesis.toml").write_text(_config(soak))
    (folder / "kiln_fuzz_hooks.py").write_text(HOOKS)
    report = folder / "report.ndjson"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(folder / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--exclude-path-regex",
        EXCLUDED,
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--phases",
        phases,
        # how fast hypothesis makes data is this shared machine's, not the server's
        "--suppress-health-check",
        "too_slow",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
    ]
    shown = " ".join(command[2:]).replace(token, "TOKEN")
    print(f"schemathesis seed {SEED}: {shown}")
    return subprocess.run(
        command,
        cwd=folder,
        env={
            **os.environ,
            "PYTHONPATH": str(folder),
            "SCHEMATHESIS_HOOKS": "kiln_fuzz_hooks",
            "KILN_FUZZ_OWN_ID": str(own),
            "KILN_FUZZ_VICTIM_ID": str(victim),
        },
        capture_output=True,
        text=True,
        timeout=soak.pick(600, 3600),
    )


def _statuses(report: Path) -> list[int]:
    """The status of every response the run got (its ndjson report)."""
    found: list[int] = []
    for line in report.read_text().splitlines():
        _collect(json.loads(line), found)
    return found


def _collect(node: Any, found: list[int]) -> None:
    if isinstance(node, dict):
        response = node.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            found.append(response["status_code"])
        for value in node.values():
            _collect(value, found)
    elif isinstance(node, list):
        for value in node:
            _collect(value, found)


@pytest.mark.slow(seconds=150)  # the suite's longest: handed out first
@pytest.mark.timeout(900 if MODE == "quick" else 3600)
def test_schemathesis_finds_nothing(
    database: tuple[str, str], tmp_path: Path, soak: Soak, tally: Tally
) -> None:
    name, database_url = database
    folder = tmp_path / "kiln"
    folder.mkdir()
    (folder / "kiln.toml").write_text(KILN_TOML.format(database=database_url))
    own, token = _add_user(folder, "fuzzer", "--admin", "--credits", "1000000")
    other, other_token = _add_user(folder, "someone", "--credits", "1000")
    victim, _ = _add_user(folder, "victim", "--credits", "10")
    assert len({own, other, victim}) == 3
    with serving(folder) as url:
        _others_data(url, other_token)
        every = "examples,coverage,fuzzing,stateful"
        phases = every if name == "SQLite" else soak.pick("examples,fuzzing,stateful", every)
        done = _run(folder, url, token, soak, phases, own, victim)
        still = httpx.get(f"{url}/healthz", timeout=10)
    statuses = _statuses(folder / "report.ndjson")
    server_errors = sum(1 for s in statuses if s >= 500)
    tally.add(f"schemathesis ({name})", inputs=len(statuses), server_errors=server_errors)
    (folder / "schemathesis.out").write_text(done.stdout + done.stderr)  # the whole story
    summary = done.stdout[-6000:]
    print(summary)
    assert still.status_code == 200, still.text
    assert server_errors == 0, summary
    assert done.returncode == 0, f"seed {SEED}\n{summary}\n{done.stderr[-2000:]}"
    assert len(statuses) > 100, summary  # it really ran
