"""Running `kiln` as a subprocess in tests: the command, a clean environment, a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

KILN = [sys.executable, "-m", "pixelkiln.cli"]  # the `kiln` command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env() -> dict[str, str]:
    """This environment without KILN_* variables (a test's config file decides)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until `kiln serve` at ``url`` answers /healthz (30 s at most; its log if not)."""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"kiln serve did not come up:\n{log.read_text()}")


@contextmanager
def serving(cwd: Path, *args: str, log_level: str = "warning", drain: float = 1.0) -> Iterator[str]:
    """`kiln serve` on a free port in ``cwd``; yields its URL once /healthz answers; SIGINT
    at the end, which must exit 0 (its log, ``cwd/serve.log``, says why if not). Running
    tasks get ``drain`` seconds to finish at the end (``[scheduler] shutdown_seconds``)."""
    port, log = free_port(), cwd / "serve.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            [*KILN, "serve", "--port", str(port), "--log-level", log_level, *args],
            cwd=cwd,
            env={**env(), "KILN_SCHEDULER__SHUTDOWN_SECONDS": str(drain)},
            stdout=out,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, log)
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                assert process.wait(timeout=20) == 0, log.read_text()
            finally:
                if process.poll() is None:
                    process.kill()


@contextmanager
def running(cwd: Path, *args: str, log: str) -> Iterator[subprocess.Popen[bytes]]:
    """`kiln ARGS` in ``cwd`` in the background, its output in ``cwd/LOG``; killed at the end
    if the test left it running (a test that cares stops it with :func:`stop`)."""
    with (
        (cwd / log).open("w") as out,
        subprocess.Popen(
            [*KILN, *args], cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT
        ) as process,
    ):
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Send ``sig`` and wait for the exit code (``timeout`` s at most)."""
    process.send_signal(sig)
    return process.wait(timeout=timeout)
