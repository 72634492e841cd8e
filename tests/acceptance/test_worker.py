"""`kiln submit` and `kiln worker` as processes: sharing, SIGKILL, SIGTERM, bad input.

Workers are real `kiln worker` processes on one database (SQLite file or a
PostgreSQL schema) and one data folder; the generator is a fake WebUI in
this process, which records every request. What each test asserts is read
back from the database and the folder once the processes are done: every
task succeeded once, one image row and one file each, attempts spent only by
requests that went out.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from pixelkiln.testing import FakeSDWebUI
from tests.processes import KILN, env, free_port, rows, running, stop

TXT2IMG = "/sdapi/v1/txt2img"
#: seconds a test waits for what processes do (generous: 2 shared cores)
PATIENCE = 120.0


@dataclass(frozen=True)
class SharedStorage:
    """Where every process of a test keeps its images: lines of ``[storage]``, and a count
    of the image files there (``local`` now; ``s3`` joins once S3 storage lands)."""

    name: str
    toml: str  #: extra lines of [storage]
    files: Callable[[], int]  #: image files stored so far


def local_storage(data_dir: Path) -> SharedStorage:
    return SharedStorage("local", "", lambda: len(list(data_dir.glob("images/*/*.png"))))


def write_config(
    folder: Path,
    database_url: str,
    webui_url: str,
    *,
    storage: SharedStorage | None = None,
    name: str = "kiln.toml",
    per_url: int = 4,
    concurrency: int = 2,
    shutdown_seconds: float = 30.0,
) -> Path:
    """A kiln.toml every process of the test shares: one database, one data folder."""
    data_dir = folder / "kiln-data"
    path = folder / name
    path.write_text(
        f"""
[storage]
data_dir = "{data_dir}"
database_url = "{database_url}"
{storage.toml if storage else ""}

[scheduler]
concurrency = {concurrency}
poll_interval = 0.05
retry_base_delay = 0.05
lease_seconds = 6
shutdown_seconds = {shutdown_seconds}

[[backends]]
name = "sd"
type = "sdwebui"
urls = ["{webui_url}"]
concurrency = {per_url}
timeout = 120
"""
    )
    return path


def write_spec(folder: Path, tasks: int, name: str = "night") -> Path:
    spec = folder / f"{name}.json"
    items = [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(tasks)]
    spec.write_text(
        json.dumps({"name": name, "defaults": {"width": 64, "height": 64}, "tasks": items})
    )
    return spec


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=PATIENCE
    )


def submit(cwd: Path, spec: Path, *args: str) -> int:
    """`kiln submit --json`: the batch's id."""
    done = kiln(cwd, "submit", str(spec), "--json", *args)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["id"])


def until(condition: Callable[[], object], what: str, timeout: float = PATIENCE) -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def statuses(database_url: str, batch_id: int) -> Counter[str]:
    found = rows(database_url, "SELECT status FROM tasks WHERE batch_id = :b", b=batch_id)
    return Counter(str(status) for (status,) in found)


def finished(database_url: str, batch_id: int, tasks: int) -> Callable[[], bool]:
    return lambda: statuses(database_url, batch_id)["succeeded"] == tasks


def assert_each_task_once(
    database_url: str, batch_id: int, tasks: int, storage: SharedStorage
) -> None:
    """Every task succeeded, with one image row and one file each: nothing lost or doubled."""
    found = rows(database_url, "SELECT status FROM tasks WHERE batch_id = :b", b=batch_id)
    assert Counter(s for (s,) in found) == {"succeeded": tasks}
    images = rows(database_url, "SELECT task_id, path FROM images WHERE batch_id = :b", b=batch_id)
    assert len(images) == tasks and len({t for t, _ in images}) == tasks
    assert len({p for _, p in images}) == tasks and storage.files() == tasks


def generated_by_workers(folder: Path) -> int:
    """Tries that brought images back, summed over the workers' logs (their last line)."""
    total = 0
    for log in (folder / "kiln-data" / "logs").glob("worker_*.log"):
        found = re.search(r"stopped: (\d+) generated", log.read_text())
        assert found, f"{log.name} has no last line:\n{log.read_text()}"
        total += int(found.group(1))
    return total


def worker_log(folder: Path, name: str) -> str:
    return (folder / name).read_text()


# -- (a) submit, then two workers -------------------------------------------------------------


def test_submitted_batch_runs_once_on_two_workers(tmp_path: Path, database_url: str) -> None:
    storage = local_storage(tmp_path / "kiln-data")
    with FakeSDWebUI(latency=0.1) as webui:
        write_config(tmp_path, database_url, webui.url, storage=storage)
        batch_id = submit(tmp_path, write_spec(tmp_path, 16))
        assert statuses(database_url, batch_id) == {"pending": 16}  # stored, not run
        with ExitStack() as stack:
            workers = [
                stack.enter_context(running(tmp_path, "worker", log=f"w{i}.out")) for i in (1, 2)
            ]
            until(finished(database_url, batch_id, 16), "16 tasks to succeed")
            for i, process in enumerate(workers, 1):
                assert stop(process) == 0, worker_log(tmp_path, f"w{i}.out")
        sent = Counter(json.loads(r.body)["prompt"] for r in webui.received(TXT2IMG))
    assert_each_task_once(database_url, batch_id, 16, storage)
    assert sent == {f"scene {i}": 1 for i in range(16)}  # each request sent once
    assert generated_by_workers(tmp_path) == 16
    attempts = rows(database_url, "SELECT attempts FROM tasks WHERE batch_id = :b", b=batch_id)
    assert {a for (a,) in attempts} == {1}


# -- (b) SIGKILL of one of three workers ------------------------------------------------------


def _holder_pids(database_url: str) -> Counter[int]:
    """Process ids of the workers holding running tasks (lease owner ``host:pid:nonce``)."""
    owners = rows(database_url, "SELECT lease_owner FROM tasks WHERE status = 'running'")
    return Counter(int(str(o).split(":")[1]) for (o,) in owners if o)


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkill_of_a_worker_loses_nothing_and_doubles_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    storage = local_storage(tmp_path / "kiln-data")
    with FakeSDWebUI(latency=0.3) as webui:
        write_config(tmp_path, postgres_url, webui.url, storage=storage, per_url=6)
        batch_id = submit(tmp_path, write_spec(tmp_path, 30))
        with ExitStack() as stack:
            workers = {
                p.pid: p
                for p in (
                    stack.enter_context(running(tmp_path, "worker", log=f"w{i}.out"))
                    for i in range(3)
                )
            }

            def victim_busy() -> bool:
                done = statuses(postgres_url, batch_id)["succeeded"]
                return done >= 3 and any(pid in workers for pid in _holder_pids(postgres_url))

            until(victim_busy, "a worker to hold tasks after the first successes")
            victim = next(pid for pid, _ in _holder_pids(postgres_url).most_common())
            held = _holder_pids(postgres_url)[victim]
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(timeout=30)
            until(finished(postgres_url, batch_id, 30), "the survivors to finish every task")
            for pid, process in workers.items():
                if pid != victim:
                    assert stop(process) == 0
        sent = len(webui.received(TXT2IMG))
    assert_each_task_once(postgres_url, batch_id, 30, storage)
    # sent again: at most what the victim held (those claimed ahead had not gone out)
    assert held > 0 and 30 <= sent <= 30 + held


# -- (c) SIGTERM: drain within the bound, give back untried -----------------------------------


@pytest.mark.postgres
def test_sigterm_finishes_or_gives_back_within_the_bound(tmp_path: Path, postgres_url: str) -> None:
    shutdown = 4.0
    storage = local_storage(tmp_path / "kiln-data")
    with FakeSDWebUI(latency=0.01) as webui:
        write_config(
            tmp_path, postgres_url, webui.url, storage=storage, per_url=3, shutdown_seconds=shutdown
        )
        batch_id = submit(tmp_path, write_spec(tmp_path, 10))
        webui.hold()
        with running(tmp_path, "worker", "--concurrency", "3", log="w.out") as process:
            until(lambda: webui.held == 3, "three generations held")
            process.send_signal(signal.SIGTERM)
            until(lambda: "claiming nothing more" in worker_log(tmp_path, "w.out"), "the drain")
            webui.release(1)  # one finishes inside the window; two are still running at the end
            started = time.monotonic()
            assert process.wait(timeout=shutdown + 60) == 0, worker_log(tmp_path, "w.out")
            took = time.monotonic() - started
        after_drain = statuses(postgres_url, batch_id)
        attempts = dict(
            rows(postgres_url, "SELECT key, attempts FROM tasks WHERE status = 'pending'")
        )
        webui.release()
        with running(tmp_path, "worker", log="w2.out") as second:
            until(finished(postgres_url, batch_id, 10), "a second worker to finish the batch")
            assert stop(second) == 0
        sent = len(webui.received(TXT2IMG))
    assert took < shutdown + 60  # the bound held (a loose margin: the machine is shared)
    assert after_drain == {"succeeded": 1, "pending": 9}
    assert set(attempts.values()) == {0}  # given back untried: no attempt spent
    assert_each_task_once(postgres_url, batch_id, 10, storage)
    # the two given back were sent twice, yet each task spent one attempt in all
    spent = rows(postgres_url, "SELECT attempts FROM tasks WHERE batch_id = :b", b=batch_id)
    assert sent == 12 and {a for (a,) in spent} == {1}


@pytest.mark.postgres
def test_kiln_serve_drains_on_sigterm_like_a_worker(tmp_path: Path, postgres_url: str) -> None:
    shutdown = 4.0
    storage = local_storage(tmp_path / "kiln-data")
    with FakeSDWebUI(latency=0.01) as webui:
        write_config(
            tmp_path, postgres_url, webui.url, storage=storage, per_url=3, shutdown_seconds=shutdown
        )
        batch_id = submit(tmp_path, write_spec(tmp_path, 6))
        webui.hold()
        port = free_port()
        with running(tmp_path, "serve", "--port", str(port), log="serve.out") as process:
            until(lambda: webui.held == 2, "two generations held ([scheduler] concurrency 2)")
            process.send_signal(signal.SIGTERM)
            until(lambda: "claiming nothing more" in _logs(tmp_path), "the drain")
            webui.release(1)  # one finishes inside the window; one still runs at its end
            assert process.wait(timeout=shutdown + 60) in (0, -signal.SIGTERM)
        webui.release()
    assert statuses(postgres_url, batch_id) == {"succeeded": 1, "pending": 5}
    pending = rows(postgres_url, "SELECT attempts FROM tasks WHERE status = 'pending'")
    assert {a for (a,) in pending} == {0}  # given back untried: no attempt spent


def _logs(folder: Path) -> str:
    return "".join(p.read_text() for p in (folder / "kiln-data" / "logs").glob("serve*.log"))


# -- bad input --------------------------------------------------------------------------------


def test_submit_and_worker_refuse_bad_input_like_run(tmp_path: Path, suite_database: str) -> None:
    write_config(tmp_path, suite_database, "http://127.0.0.1:9")
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"name": "bad", "tasks": [{"prompt": "x", "steps": -3}]}))
    submitted, ran = kiln(tmp_path, "submit", str(spec)), kiln(tmp_path, "run", str(spec))
    assert submitted.returncode == ran.returncode == 2
    assert "Invalid input" in submitted.stderr and "steps" in submitted.stderr
    assert submitted.stderr == ran.stderr
    plain = kiln(tmp_path, "submit", str(write_spec(tmp_path, 2)))
    assert plain.returncode == 0 and plain.stdout.strip().isdecimal()  # the id alone
    assert "2 task(s) queued" in plain.stderr

    unknown = kiln(tmp_path, "worker", "--backends", "sd,nope")
    assert unknown.returncode == 2 and "unknown backend(s) 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
