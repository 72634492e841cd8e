"""Shared parts of the crash and fault tests: a `kiln serve` that can be SIGKILLed and
started again, a paying user, a batch, a poller that counts 5xx, and the audit of what a
batch left behind (tasks, image rows, files, temp files, events, the credit ledger).

Every figure :func:`audit` returns is read back from the database and the data folder
once the batch has ended; the tests record them in the suite's tally and assert the
must-be-zero ones themselves.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from pixelkiln.testing.faults import Faults, Outcome
from tests.processes import KILN, env, free_port, rows

#: seconds a test waits for what processes do (generous: 2 shared cores, ~7 users)
PATIENCE = 240.0

SCHEDULER = """
[scheduler]
concurrency = {concurrency}
poll_interval = 0.05
retry_base_delay = 0.05
retry_max_delay = 1
lease_seconds = {lease_seconds}
max_attempts = {max_attempts}
"""

PAYING = """
[auth]
enabled = true

[credits]
enabled = true
per_image = 1
"""


def write_config(
    folder: Path,
    database_url: str,
    *,
    data_dir: Path | None = None,
    backends: str,
    concurrency: int = 4,
    lease_seconds: float = 5,
    max_attempts: int = 3,
    paying: bool = True,
) -> Path:
    """``folder/kiln.toml``: one database, one data folder, quick retries, ``backends``
    (TOML ``[[backends]]`` tables), auth and credits on unless ``paying`` is false."""
    data = data_dir or folder / "kiln-data"
    path = folder / "kiln.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{data}"\ndatabase_url = "{database_url}"\n'
        + SCHEDULER.format(
            concurrency=concurrency, lease_seconds=lease_seconds, max_attempts=max_attempts
        )
        + (PAYING if paying else "")
        + backends
    )
    return path


def placeholder(latency: float = 0.02) -> str:
    return f"""
[[backends]]
name = "placeholder"
type = "placeholder"
concurrency = 4
latency = {latency}
"""


def sdwebui(url: str, *, timeout: float = 3.0, per_url: int = 4) -> str:
    return f"""
[[backends]]
name = "sd"
type = "sdwebui"
urls = ["{url}"]
concurrency = {per_url}
timeout = {timeout}
"""


def named(database_url: str, application_name: str) -> str:
    """``database_url`` whose PostgreSQL connections carry ``application_name``, so that a
    test can find (and terminate) exactly the backends of its own processes."""
    url = make_url(database_url)
    return url.update_query_dict({"application_name": application_name}).render_as_string(False)


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=PATIENCE
    )


def add_user(cwd: Path, name: str, credits: int) -> str:
    """`kiln users add NAME --credits N`: the new user's token."""
    added = kiln(cwd, "users", "add", name, "--credits", str(credits))
    assert added.returncode == 0, added.stderr
    return added.stdout.strip()


class Serve:
    """`kiln serve` in ``cwd`` on one port across restarts; :meth:`kill` is SIGKILL."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.cwd / f"serve-{self.starts}.log"
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [*KILN, "serve", "--port", str(self.port), "--log-level", "warning"],
                cwd=self.cwd,
                env={**env(self.cwd), "KILN_SCHEDULER__SHUTDOWN_SECONDS": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503):
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"kiln serve did not come up:\n{log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.logs()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGINT, which must exit 0 (its log says why if not)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            assert self.process.wait(timeout=30) == 0, self.logs()
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.cwd.glob("serve-*.log")))


@contextmanager
def serve(cwd: Path) -> Iterator[Serve]:
    server = Serve(cwd)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def create_batch(
    url: str, token: str | None, tasks: int, *, n: int = 1, name: str = "b", size: int = 64
) -> int:
    """A batch of ``tasks`` tasks of ``n`` images of ``size``² pixels, created by the API."""
    body = {
        "name": name,
        "defaults": {"width": size, "height": size, "n": n},
        "tasks": [{"prompt": f"{name} scene {i}", "key": f"s{i}"} for i in range(tasks)],
    }
    created = httpx.post(f"{url}/api/v1/batches", json=body, headers=auth(token), timeout=60)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def batch(url: str, token: str | None, batch_id: int) -> dict[str, Any] | None:
    """The batch as the API shows it; None while the server is down."""
    try:
        answer = httpx.get(f"{url}/api/v1/batches/{batch_id}", headers=auth(token), timeout=10)
    except httpx.TransportError:
        return None
    if answer.status_code != 200:
        return None
    found: dict[str, Any] = answer.json()
    return found


def until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reached(database_url: str, batch_id: int, point: int) -> Callable[[], bool]:
    """A condition for :func:`until`: ``point`` tasks of the batch succeeded. Raises at once
    where the batch ended short of it (its tasks' errors say why)."""

    def condition() -> bool:
        found = rows(
            database_url, "SELECT n_succeeded, status FROM batches WHERE id = :b", b=batch_id
        )
        done, status = (int(found[0][0]), str(found[0][1])) if found else (0, "queued")
        if done < point and status in ("completed", "partial", "failed", "cancelled"):
            errors = rows(
                database_url,
                "SELECT DISTINCT last_error FROM tasks WHERE batch_id = :b AND status = 'failed'",
                b=batch_id,
            )
            raise AssertionError(f"batch {batch_id} ended {status} at {done}: {errors[:5]}")
        return done >= point

    return condition


def wait_finished(url: str, token: str | None, batch_id: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        nonlocal found
        found = batch(url, token, batch_id) or {}
        return bool(found.get("finished"))

    until(done, f"batch {batch_id} to finish")
    return found


@dataclass
class Poller:
    """A thread that asks the API about a batch (and /healthz) until stopped, counting the
    answers by status: a 5xx other than a 503 with a message is a server error."""

    url: str
    token: str | None
    paths: list[str]
    answers: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  #: the bodies of 500s (and bare 503s)
    refused: int = 0  #: connections refused or reset (the server down)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(headers=auth(self.token), timeout=15) as client:
            while not self._stop.is_set():
                for path in self.paths:
                    self._ask(client, path)
                self._stop.wait(0.1)

    def _ask(self, client: httpx.Client, path: str) -> None:
        try:
            answer = client.get(f"{self.url}{path}")
        except httpx.TransportError:
            self.refused += 1
            return
        self.answers[answer.status_code] += 1
        if answer.status_code >= 500 and not self._acceptable(path, answer):
            self.errors.append(f"{path} {answer.status_code}: {answer.text[:300]}")

    @staticmethod
    def _acceptable(path: str, answer: httpx.Response) -> bool:
        """/healthz says 503 while unhealthy (its body says why); elsewhere a 503 during an
        outage is acceptable only with a message (``{"error": {"code", "message"}}``)."""
        if answer.status_code != 503:
            return False
        if path == "/healthz":
            return True
        return clear_503(answer)

    @property
    def server_errors(self) -> int:
        return len(self.errors)

    @property
    def asked(self) -> int:
        return sum(self.answers.values()) + self.refused


def clear_503(answer: httpx.Response) -> bool:
    """A 503 that says what is wrong (the API's error body), not a bare failure."""
    try:
        body = answer.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and error.get("code") == "unavailable"
        and bool(error.get("message"))
    )


# -- the audit ------------------------------------------------------------------------------


@dataclass
class Audit:
    """What one batch left behind, read back after it ended."""

    tasks: int  #: tasks the batch should have
    statuses: Counter[str]
    lost: int  #: tasks not succeeded
    duplicated: int  #: images beyond tasks × n, tasks with >1 success, stray files
    drift: int  #: credit ledger minus (grant - charges + refunds), per the tasks' costs
    image_rows: int
    files: int
    temp_files: list[str]
    problems: list[str]  #: each thing wrong, in words (empty: all well)


def temp_files(data_dir: Path) -> list[str]:
    """Files a write left half-done: ``*.tmp`` anywhere under the data folder."""
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*.tmp"))


def audit(
    database_url: str,
    data_dir: Path,
    batch_id: int,
    *,
    tasks: int,
    n: int = 1,
    user: str | None = None,
    grant: int = 0,
) -> Audit:
    """Every task of ``batch_id`` succeeded once, with ``n`` image rows and files each, no
    temp file anywhere, and (with ``user``) the ledger equal to ``grant`` less what the
    batch's succeeded tasks cost (a refund is due only for what failed or was cancelled)."""
    problems: list[str] = []
    found = rows(database_url, "SELECT id, status FROM tasks WHERE batch_id = :b", b=batch_id)
    statuses = Counter(str(s) for _, s in found)
    lost = tasks - statuses["succeeded"]
    if len(found) != tasks:
        problems.append(f"{len(found)} tasks stored, {tasks} submitted")
    images = rows(
        database_url,
        "SELECT task_id, path FROM images WHERE batch_id = :b AND superseded = :f",
        b=batch_id,
        f=False,
    )
    per_task = Counter(t for t, _ in images)
    files = sorted((data_dir / "images" / str(batch_id)).glob("*.png"))
    stored = {str(p.relative_to(data_dir)) for p in files}
    paths = [p for _, p in images]
    duplicated = max(0, len(images) - tasks * n) + sum(1 for c in per_task.values() if c > n)
    duplicated += len(stored - set(paths))  # a file no row names: a second, lost write
    if len(set(paths)) != len(paths):
        problems.append("two image rows name one file")
    missing = set(paths) - stored
    if missing:
        problems.append(f"{len(missing)} image rows without their file")
    successes = Counter(
        t
        for (t,) in rows(
            database_url,
            "SELECT task_id FROM events WHERE batch_id = :b AND type = 'progress'",
            b=batch_id,
        )
    )
    duplicated += sum(1 for c in successes.values() if c > 1)
    leftovers = temp_files(data_dir)
    if leftovers:
        problems.append(f"temp files left: {leftovers[:5]}")
    drift = ledger_drift(database_url, user, grant) if user else 0
    return Audit(
        tasks, statuses, lost, duplicated, drift, len(images), len(files), leftovers, problems
    )


def ledger_drift(database_url: str, user: str, grant: int) -> int:
    """The user's ledger balance minus (``grant`` - charges + refunds), where the charges
    are what their tasks cost and the refunds what their failed or cancelled tasks cost."""
    [(user_id,)] = rows(database_url, "SELECT id FROM users WHERE name = :u", u=user)
    [(balance,)] = rows(
        database_url,
        "SELECT COALESCE(SUM(delta), 0) FROM credit_ledger WHERE user_id = :u",
        u=user_id,
    )
    costs = rows(
        database_url,
        "SELECT t.status, COALESCE(SUM(t.cost), 0) FROM tasks t "
        "JOIN batches b ON b.id = t.batch_id WHERE b.owner_id = :u GROUP BY t.status",
        u=user_id,
    )
    charged = sum(int(c) for _, c in costs)
    refunded = sum(int(c) for s, c in costs if s in ("failed", "cancelled"))
    return int(balance) - (grant - charged + refunded)


def sqlite_integrity(database: Path) -> str:
    """``PRAGMA integrity_check`` of the SQLite file: ``"ok"`` when sound."""
    found = rows(f"sqlite:///{database}", "PRAGMA integrity_check")
    return "; ".join(str(r[0]) for r in found)


@dataclass
class CountingFaults(Faults):
    """:class:`Faults` that count what they played other than ``"ok"``."""

    played: Counter[str] = field(default_factory=Counter)

    def next_outcome(self) -> Outcome:
        outcome = super().next_outcome()
        if outcome != "ok":
            self.played[str(outcome)] += 1
        return outcome
