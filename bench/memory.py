"""Memory: a real `kiln serve`'s peak RSS for large specs and a large image, against its baseline.

    python -m bench.memory [--tasks 100000] [--over 200000] [--side 4096]

Starts `kiln serve --no-worker` in a scratch folder (SQLite), posts a small spec (the
baseline: the server warmed up), then the largest spec ``[limits] max_tasks_per_batch``
accepts (``--tasks``) and one over it (``--over``, refused 422), reading the server's
VmHWM (peak) and VmRSS from /proc/PID/status after each. Then a server that runs tasks
draws one ``--side``² placeholder image and one over ``[limits] max_pixels`` (refused), and
its RSS after the image is compared with its baseline. Figures in MB. The bounds that
tests/reliability/test_memory.py asserts: peak < 400 MB for the largest accepted spec,
an over-limit spec refused with a peak far below the accepted one's, and RSS back near
the baseline after a 4096² image. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
KILN = [sys.executable, "-m", "pixelkiln.cli"]
CONFIG = """\
[storage]
data_dir = "data"

[[backends]]
name = "placeholder"
type = "placeholder"

[scheduler]
poll_interval = 0.05
"""
MB = 1024 * 1024


@dataclass(frozen=True)
class Memory:
    """A process's resident memory, in bytes: its peak so far and now."""

    peak: int  #: VmHWM
    now: int  #: VmRSS

    @classmethod
    def of(cls, pid: int) -> Memory:
        found = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) * 1024  # kB
        return cls(found["VmHWM"], found["VmRSS"])


@dataclass
class Server:
    """A `kiln serve` subprocess: its URL and process id."""

    url: str
    pid: int

    def memory(self) -> Memory:
        return Memory.of(self.pid)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(folder: Path, *, worker: bool, env: dict[str, str] | None = None) -> Iterator[Server]:
    """`kiln serve` in ``folder`` (its kiln.toml written here unless there is one)."""
    if not (folder / "kiln.toml").exists():
        (folder / "kiln.toml").write_text(CONFIG)
    port = _free_port()
    args = [*KILN, "serve", "--port", str(port), "--log-level", "warning"]
    args += [] if worker else ["--no-worker"]
    log = folder / "serve.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            args, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT
        ) as process,
    ):
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kiln serve did not come up:\n{log.read_text()}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield Server(url, process.pid)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def spec_body(tasks: int, prompt_chars: int = 200, **defaults: Any) -> bytes:
    """A JSON spec of ``tasks`` tasks, about ``prompt_chars`` + 30 bytes each (the
    issue's 46 MB for 200,000 tasks)."""
    filler = "x" * max(0, prompt_chars - 30)
    head = json.dumps({"name": "big", "defaults": {"width": 64, "height": 64, **defaults}})
    parts = [head[:-1], ', "tasks": [']
    parts.append(
        ",".join(
            json.dumps({"prompt": f"a red fox, number {i} {filler}", "key": f"k{i}"})
            for i in range(tasks)
        )
    )
    parts.append("]}")
    return "".join(parts).encode()


def post_spec(server: Server, body: bytes, timeout: float = 600) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/batches",
        content=body,
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def wait_finished(server: Server, batch_id: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = httpx.get(f"{server.url}/api/v1/batches/{batch_id}").json()
        if batch.get("finished"):
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} did not finish in {timeout} s")


@dataclass(frozen=True)
class SpecRun:
    """What posting one spec did: its answer, size and the server's memory after it."""

    label: str
    tasks: int
    size: int  #: bytes of JSON
    status: int
    memory: Memory


def spec_runs(
    folder: Path, accepted: int, over: int, env: dict[str, str] | None = None
) -> tuple[Memory, list[SpecRun]]:
    """The baseline (after a 10-task spec) and each run: over the limit first (its peak is
    then its own), then the largest accepted."""
    runs = []
    with serve(folder, worker=False, env=env) as server:
        assert post_spec(server, spec_body(10)).status_code == 201
        baseline = server.memory()
        for label, tasks in (("over the limit", over), ("largest accepted", accepted)):
            body = spec_body(tasks)
            answer = post_spec(server, body)
            runs.append(SpecRun(label, tasks, len(body), answer.status_code, server.memory()))
            del body
    return baseline, runs


@dataclass(frozen=True)
class ImageRun:
    """A placeholder image of ``side``² made (or refused) and the server's memory after."""

    side: int
    status: str  #: the batch's status, or the HTTP status when refused
    memory: Memory


def image_runs(
    folder: Path, sides: list[int], env: dict[str, str] | None = None
) -> tuple[Memory, list[ImageRun]]:
    """The baseline (after a 64² task ran) and one single-image batch per side."""
    runs = []
    with serve(folder, worker=True, env=env) as server:
        first = post_spec(server, spec_body(1))
        wait_finished(server, first.json()["id"])
        baseline = server.memory()
        for side in sides:
            body = spec_body(1, width=side, height=side)
            answer = post_spec(server, body)
            status = str(answer.status_code)
            if answer.status_code == 201:
                status = wait_finished(server, answer.json()["id"])["status"]
            runs.append(ImageRun(side, status, server.memory()))
    return baseline, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000, help="largest accepted spec")
    parser.add_argument("--over", type=int, default=200_000, help="a spec over the limit")
    parser.add_argument("--side", type=int, default=4096, help="the large image's side")
    args = parser.parse_args(argv)
    with TemporaryDirectory() as scratch:
        specs, images = Path(scratch) / "specs", Path(scratch) / "images"
        specs.mkdir()
        images.mkdir()
        baseline, runs = spec_runs(specs, args.tasks, args.over)
        print(
            f"kiln serve --no-worker, baseline after a 10-task spec: "
            f"{baseline.peak / MB:.0f} MB peak, {baseline.now / MB:.0f} MB now"
        )
        for run in runs:
            print(
                f"  {run.label:17} {run.tasks:>8,} tasks {run.size / MB:6.1f} MB JSON -> "
                f"{run.status}  peak {run.memory.peak / MB:5.0f} MB "
                f"(+{(run.memory.peak - baseline.peak) / MB:.0f}), now {run.memory.now / MB:.0f} MB"
            )
        baseline, shots = image_runs(images, [args.side, args.side * 2])
        print(f"kiln serve, baseline after a 64² image: {baseline.now / MB:.0f} MB now")
        for shot in shots:
            print(
                f"  {shot.side}² placeholder -> {shot.status:9}  peak {shot.memory.peak / MB:5.0f}"
                f" MB, now {shot.memory.now / MB:.0f} MB "
                f"(+{(shot.memory.now - baseline.now) / MB:.0f} over the baseline)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
