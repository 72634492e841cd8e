"""``kiln webhooks`` and what ``kiln run`` / ``status`` / ``report`` say of a batch's webhook:
subprocesses on a real data folder, a real receiver on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.testing import FakeWebhookReceiver
from pixelkiln.wire.signing import verify
from tests.acceptance.test_cli import kiln

RETRIED = "retried by the next `kiln serve`/`kiln run`/`kiln webhooks deliver`"


def _setup(folder: Path, hook_url: str, **webhooks: float) -> Path:
    settings = "\n".join(f"{k} = {v}" for k, v in webhooks.items())
    (folder / "kiln.toml").write_text(
        f'[webhooks]\n{settings}\n\n[[backends]]\nname = "placeholder"\ntype = "placeholder"\n'
    )
    return _batch(folder, "hooked", hook_url)


def _batch(folder: Path, name: str, hook_url: str | None) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": "a fox", "key": "s1"}],
    }
    if hook_url:
        spec["webhook"] = hook_url
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _json(folder: Path, *args: str) -> Any:
    done = kiln(folder, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_a_failed_delivery_is_reported_listed_and_delivered_later(tmp_path: Path) -> None:
    with FakeWebhookReceiver() as receiver:
        receiver.faults.error_rates = {500: 1.0}
        batch = _setup(tmp_path, receiver.hook_url, backoff=1, backoff_max=1, max_attempts=50)
        ran = kiln(tmp_path, "run", str(batch), "-q")
        assert ran.returncode == 0, ran.stderr  # the exit code is about tasks
        assert f"webhook not delivered yet: HTTP 500; {RETRIED}" in ran.stdout

        [row] = _json(tmp_path, "webhooks", "list", "hooked", "--json")
        assert (row["status"], row["response_code"], row["last_error"]) == (
            "pending",
            500,
            "HTTP 500",
        )
        assert row["url"] == receiver.hook_url and row["next_attempt_at"] is not None
        status = _json(tmp_path, "status", "1", "--json")
        report = _json(tmp_path, "report", "1", "--format", "json")
        assert (
            status["webhook"]
            == report["webhook"]
            == {"url": receiver.hook_url, "deliveries": [row]}
        )

        receiver.faults.clear()
        for _ in range(30):  # due again a second after the last failed try
            delivered = kiln(tmp_path, "webhooks", "deliver", "--within", "30")
            if delivered.returncode == 0 and "1 delivered" in delivered.stdout:
                break
        assert "1 delivered, 0 failed; 0 pending" in delivered.stdout, delivered.stdout
        secret = kiln(tmp_path, "webhooks", "secret").stdout.strip()
        rotated = kiln(tmp_path, "webhooks", "secret", "--rotate").stdout.strip()
        shown = kiln(tmp_path, "webhooks", "secret").stdout.strip()
        text = kiln(tmp_path, "status", "1")
        table = kiln(tmp_path, "webhooks", "list", "1")
    [row] = _json(tmp_path, "webhooks", "list", "1", "--json")
    assert (row["status"], row["response_code"], row["last_error"]) == ("delivered", 200, None)
    assert "webhook delivered (200)" in text.stdout
    assert "delivered" in table.stdout and "200" in table.stdout
    ok = [r for r in receiver.received("/hook") if r.outcome == "ok"]
    assert len(ok) == 1 and verify(secret, ok[0].body, ok[0].headers)
    assert secret.startswith("whsec_") and rotated != secret and shown == rotated


def test_kiln_run_says_a_delivery_was_given_up_or_delivered(tmp_path: Path) -> None:
    with FakeWebhookReceiver() as receiver:
        receiver.fail_first(1, 503)
        batch = _setup(tmp_path, receiver.hook_url, max_attempts=1)
        gave_up = kiln(tmp_path, "run", str(batch), "-q")
        fine = kiln(tmp_path, "run", str(_batch(tmp_path, "fine", receiver.hook_url)), "-q")
        plain = kiln(tmp_path, "run", str(_batch(tmp_path, "plain", None)), "-q")
        nothing_due = kiln(tmp_path, "webhooks", "deliver")
    assert gave_up.returncode == fine.returncode == plain.returncode == 0
    assert (
        "webhook not delivered: HTTP 503; gave up after 1 try (see `kiln webhooks list 1`)"
        in gave_up.stdout
    )
    assert "webhook delivered (200)" in fine.stdout
    assert "webhook" not in plain.stdout
    assert nothing_due.returncode == 0
    assert "Nothing was due; 0 pending" in nothing_due.stdout
    assert "no webhook deliveries" in kiln(tmp_path, "webhooks", "list", "plain").stdout
    missing = kiln(tmp_path, "webhooks", "list", "99")
    assert missing.returncode == 2 and "no batch 99" in missing.stderr
