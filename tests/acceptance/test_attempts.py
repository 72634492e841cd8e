"""Attempts are spent by requests that went out, not by claims: three SIGKILLs of `kiln`.

A scheduler claims work ahead of its free slots; tasks waiting in that queue
when the process is killed were never sent, and must not lose an attempt.
The fake WebUI runs in this process and records every request it receives,
so each task's attempts can be compared with what its generator really saw.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from pixelkiln.testing import FakeSDWebUI
from tests.acceptance.test_cli import kiln, query, start

TXT2IMG = "/sdapi/v1/txt2img"


def _config(folder: Path, url: str) -> None:
    (folder / "kiln.toml").write_text(
        f"""
[scheduler]
concurrency = 2
max_attempts = 3
retry_base_delay = 0.05
poll_interval = 0.05

[[backends]]
name = "sd"
type = "sdwebui"
urls = ["{url}"]
concurrency = 2
"""
    )


def _sent(webui: FakeSDWebUI) -> Counter[str]:
    return Counter(json.loads(r.body)["prompt"] for r in webui.received(TXT2IMG))


def _wait_sent(webui: FakeSDWebUI, total: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(_sent(webui).values()) < total:
        assert time.monotonic() < deadline, f"timed out waiting for {total} requests"
        time.sleep(0.05)


def _attempts(folder: Path) -> dict[str, int]:
    return dict(query(folder, "SELECT prompt, attempts FROM tasks"))  # type: ignore[arg-type]


@pytest.mark.slow
def test_three_kills_fail_no_task_that_was_never_sent(tmp_path: Path) -> None:
    spec = tmp_path / "six.json"
    tasks = [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(6)]
    spec.write_text(
        json.dumps({"name": "six", "defaults": {"width": 64, "height": 64}, "tasks": tasks})
    )
    with FakeSDWebUI(latency=120) as webui:  # nothing finishes while we kill
        _config(tmp_path, webui.url)
        runner = start(tmp_path, "run", str(spec), "--quiet")
        for kill in range(1, 4):
            _wait_sent(webui, 2 * kill)  # both slots' requests are out
            runner.send_signal(signal.SIGKILL)
            runner.communicate(timeout=10)
            # two were sent; two more wait claimed in the ready queue, never sent
            ahead = query(
                tmp_path,
                "SELECT attempts FROM tasks WHERE status = 'running' AND started_at IS NULL",
            )
            assert ahead and all(attempts == 0 for (attempts,) in ahead), ahead
            assert _attempts(tmp_path) == {t["prompt"]: _sent(webui)[t["prompt"]] for t in tasks}
            if kill < 3:
                runner = start(tmp_path, "resume", "--quiet")

        webui.faults.latency = 0.01
        resumed = kiln(tmp_path, "resume", "--quiet")
        assert resumed.returncode == 1, resumed.stderr  # the two tasks sent three times fail
        sent = _sent(webui)
    rows = query(tmp_path, "SELECT prompt, status, attempts, last_error FROM tasks")
    failed = [
        (prompt, attempts, error) for prompt, status, attempts, error in rows if status == "failed"
    ]
    assert len(failed) == 2
    for prompt, attempts, error in failed:  # each really reached its generator three times
        assert attempts == 3 and sent[prompt] == 3 and "last attempt" in str(error)
    succeeded = [prompt for prompt, status, _, _ in rows if status == "succeeded"]
    assert len(succeeded) == 4 and all(sent[p] >= 1 for p in succeeded)
    assert _attempts(tmp_path) == {t["prompt"]: sent[t["prompt"]] for t in tasks}
