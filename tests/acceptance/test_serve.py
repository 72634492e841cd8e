"""`kiln serve` and `kiln users` as subprocesses, used through the Python client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from pixelkiln import ApiError, Client
from pixelkiln.models import BatchStatus
from tests.processes import KILN, database_of, env, free_port, serving

CONFIG = """
[[backends]]
name = "placeholder"
type = "placeholder"
concurrency = 4
options = { reject_if_prompt_contains = "REJECT" }

[scheduler]
poll_interval = 0.05
retry_base_delay = 0.01
"""
AUTH = """
[auth]
enabled = true

[credits]
enabled = true
per_image = 1
"""


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=60
    )


def test_serve_runs_batches_for_the_python_client(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    with serving(tmp_path) as url, Client(url) as client:
        batch = client.create_batch(
            {
                "name": "night run",
                "defaults": {"width": 64, "height": 64},
                "tasks": [{"prompt": "a moth", "key": "m"}, {"prompt": "REJECT", "key": "r"}],
            }
        )
        events = list(client.stream(batch.id))
        assert events[0].type == "batch_update" and events[-1].type == "done"
        image_event = next(e for e in events if e.type == "image_generated")
        png = client.download(image_event.data["image"]["url"])
        assert png.startswith(b"\x89PNG")
        done = client.get_batch(batch.id)
        assert done.status == BatchStatus.PARTIAL and done.tasks[1].error
        metrics = httpx.get(f"{url}/metrics").text
        assert 'kiln_tasks{state="succeeded"} 1' in metrics
    # the embedded default, where the suite does not run on PostgreSQL/MySQL
    embedded = database_of(tmp_path).startswith("sqlite")
    assert (tmp_path / "kiln-data" / "kiln.db").is_file() is embedded


def test_serve_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    result = kiln(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2
    assert "Refusing" in result.stderr and "[auth] enabled" in result.stderr


def test_serve_refuses_a_backend_setting_its_backend_refuses(tmp_path: Path) -> None:
    # checked by the backend itself when built: once a lifespan traceback and exit 3
    (tmp_path / "kiln.toml").write_text(
        '[[backends]]\nname = "w"\ntype = "sdwebui"\nurls = ["http://127.0.0.1:9"]\n'
        'api_key = "no-colon"\n'
    )
    result = kiln(tmp_path, "serve", "--port", str(free_port()))
    assert result.returncode == 2, result.stderr
    assert "api_key for the WebUI must be 'user:password'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_users_with_tokens_and_credits(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG + AUTH)
    added = kiln(tmp_path, "users", "add", "alice", "--credits", "2")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("pk_") and "alice" in added.stderr
    assert kiln(tmp_path, "users", "add", "alice").returncode == 2  # name taken
    assert kiln(tmp_path, "users", "add", "root", "--admin").returncode == 0
    granted = kiln(tmp_path, "users", "grant", "alice", "3")
    assert granted.returncode == 0 and "5" in granted.stdout
    listed = kiln(tmp_path, "users", "list")
    assert "alice" in listed.stdout and "admin" in listed.stdout
    assert kiln(tmp_path, "users", "grant", "nobody", "1").returncode == 2
    second = kiln(tmp_path, "users", "token", "alice").stdout.strip()
    assert second.startswith("pk_") and second != token
    revoked = kiln(tmp_path, "users", "revoke", "alice")
    assert revoked.returncode == 0 and "Revoked 2 token(s)" in revoked.stdout
    second = kiln(tmp_path, "users", "token", "alice").stdout.strip()
    with serving(tmp_path, "--host", "0.0.0.0") as url:  # allowed: auth is on
        assert httpx.get(f"{url}/api/v1/batches").status_code == 401
        old = httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert old.status_code == 401  # revoked
        body = {
            "name": "paid",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"p{i}"} for i in range(5)],
        }
        with Client(url, token=second) as client:
            assert client.create_batch(body, wait=True).status == BatchStatus.COMPLETED
            assert client.credits().balance == 0
            with pytest.raises(ApiError) as refused:
                client.create_batch(body)
            assert refused.value.status == 402
