"""`kiln serve` stopped with a second Ctrl-C while an event stream is open.

The first Ctrl-C makes uvicorn wait for open connections (an SSE follower never ends
its own); a second one then makes uvicorn skip the app's shutdown entirely (its
``force_exit``), where the scheduler is drained and the installation closed. What the
process held must still go back to the queue before it exits, untried: a real `kiln
serve` subprocess, a real SSE stream held open by this test, and a fake WebUI that
holds the generations until the test lets them go.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx

from pixelkiln.testing import FakeSDWebUI
from tests.acceptance.test_worker import (
    PATIENCE,
    local_storage,
    rows,
    running,
    statuses,
    submit,
    until,
    write_config,
    write_spec,
)
from tests.processes import free_port


def _follow(url: str, opened: threading.Event, stop: threading.Event) -> None:
    """Hold an SSE stream open until the server goes away (or ``stop``)."""
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(PATIENCE, connect=10)) as answer:
            opened.set()
            for _ in answer.iter_lines():
                if stop.is_set():
                    return
    except httpx.HTTPError:
        pass  # the server went away: what this test wants


def test_a_second_ctrl_c_with_a_stream_open_still_gives_everything_back(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'kiln.db'}"
    storage = local_storage(tmp_path / "kiln-data")
    with FakeSDWebUI(latency=0.01) as webui:
        write_config(tmp_path, database_url, webui.url, storage=storage, shutdown_seconds=600)
        batch_id = submit(tmp_path, write_spec(tmp_path, 6))
        webui.hold()
        port = free_port()
        opened, stop = threading.Event(), threading.Event()
        with running(tmp_path, "serve", "--port", str(port), log="serve.out") as process:
            until(lambda: webui.held == 2, "two generations held ([scheduler] concurrency 2)")
            url = f"http://127.0.0.1:{port}/api/v1/batches/{batch_id}/events"
            follower = threading.Thread(target=_follow, args=(url, opened, stop), daemon=True)
            follower.start()
            assert opened.wait(30), "the event stream did not open"
            process.send_signal(signal.SIGINT)
            until(
                lambda: "Waiting for connections to close" in (tmp_path / "serve.out").read_text(),
                "uvicorn waiting for the open stream",
            )
            process.send_signal(signal.SIGINT)  # uvicorn's force_exit: no app shutdown
            code = process.wait(timeout=60)
            stop.set()
        webui.release()
        follower.join(30)
    out = (tmp_path / "serve.out").read_text()
    assert code == 0, out
    assert "Traceback" not in out, out
    assert statuses(database_url, batch_id) == {"pending": 6}, out
    found = rows(
        database_url, "SELECT attempts, lease_owner FROM tasks WHERE batch_id = :b", b=batch_id
    )
    assert {(a, o) for a, o in found} == {(0, None)}  # given back untried, no lease left
