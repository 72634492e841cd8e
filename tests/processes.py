"""Running `kiln` as a subprocess in tests: the command, a clean environment, a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Connection, Executable, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

KILN = [sys.executable, "-m", "pixelkiln.cli"]  # the `kiln` command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: the KILN_* variables a subprocess keeps: the suite's database (KILN_TEST_DATABASE)
KEPT = ("KILN_STORAGE__DATABASE_URL",)
#: data folders that a test gave a database of their own (conftest's ``own_database``)
FOLDER_DATABASES: dict[Path, str] = {}


def env(cwd: Path | None = None) -> dict[str, str]:
    """This environment without KILN_* variables (a test's config file decides), except
    the database that ``KILN_TEST_DATABASE`` chose for the test (tests/conftest.py): the
    one of its own that ``cwd`` was given, none where ``cwd/kiln.toml`` names one."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("KILN_") or k in KEPT}
    if cwd is None:
        return kept
    own = FOLDER_DATABASES.get(cwd.resolve())
    if own is not None:
        kept["KILN_STORAGE__DATABASE_URL"] = own
    elif _names_a_database(cwd / "kiln.toml"):
        kept.pop("KILN_STORAGE__DATABASE_URL", None)
    return kept


def _names_a_database(config: Path) -> bool:
    """Whether ``config`` sets ``[storage] database_url`` (the test chose its database)."""
    try:
        storage = tomllib.loads(config.read_text()).get("storage")
    except (OSError, tomllib.TOMLDecodeError):
        return False  # none yet, or a test of a bad file
    return isinstance(storage, dict) and "database_url" in storage


def database_of(folder: Path, data_dir: Path | None = None) -> str:
    """The database ``kiln`` uses when run in ``folder`` with no database in its config:
    the folder's own, the suite's (``KILN_TEST_DATABASE``) or the embedded SQLite file in
    its data folder (``data_dir``; ``folder/kiln-data`` by default)."""
    own = FOLDER_DATABASES.get(folder.resolve())
    suite = own or os.environ.get("KILN_STORAGE__DATABASE_URL")
    return suite or f"sqlite:///{(data_dir or folder / 'kiln-data') / 'kiln.db'}"


def query(
    folder: Path,
    sql: str | Executable,
    params: Mapping[str, Any] | None = None,
    *,
    data_dir: Path | None = None,
) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on :func:`database_of` ``folder``, on whichever database that is
    (a statement built from ``pixelkiln.db.tables`` decodes JSON columns on each).

    SQLite's file is opened read-only, so that a query never creates it. Raises
    :class:`sqlalchemy.exc.DBAPIError` while the database or its tables do not exist yet.
    """
    with connected(folder, read_only=True, data_dir=data_dir) as conn:
        found = conn.execute(_statement(sql), dict(params or {}))
        return [tuple(row) for row in found]


def rows(database_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the database at ``database_url`` (a connection of its own)."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def execute(
    folder: Path,
    sql: str | Executable,
    params: Mapping[str, Any] | None = None,
    *,
    data_dir: Path | None = None,
) -> None:
    """Run ``sql`` (a write) on :func:`database_of` ``folder`` and commit it."""
    with connected(folder, data_dir=data_dir) as conn:
        conn.execute(_statement(sql), dict(params or {}))
        conn.commit()


def _statement(sql: str | Executable) -> Executable:
    return text(sql) if isinstance(sql, str) else sql


@contextmanager
def connected(
    folder: Path, *, read_only: bool = False, data_dir: Path | None = None
) -> Iterator[Connection]:
    """One connection to :func:`database_of` ``folder`` (another process's database),
    closed after: no pool outlives the test, so nothing holds the database when the test's
    teardown drops it."""
    url = make_url(database_of(folder, data_dir))
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        connect_args["timeout"] = 30  # wait for the other process's writer
        if read_only:
            url = url.set(database=f"file:{url.database}?mode=ro", query={"uri": "true"})
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def count(folder: Path, table: str) -> int:
    """The rows of ``table`` in :func:`database_of` ``folder``; 0 while it does not exist."""
    try:
        return int(query(folder, f"SELECT COUNT(*) FROM {table}")[0][0])
    except DBAPIError:
        return 0


def wait_for(folder: Path, sql: str, at_least: int, timeout: float = 120) -> None:
    """Until the first value of ``sql`` on ``folder``'s database is ``at_least``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = query(folder, sql)
            if rows and rows[0][0] is not None and rows[0][0] >= at_least:
                return
        except DBAPIError:
            pass  # the database or its tables not created yet
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {sql} >= {at_least}")


#: how long a `kiln` subprocess may take to start: a bound on a hang, not a speed check (the
#: suite's workers and its two passes share the cores, and each start imports pixelkiln)
START_SECONDS = 120


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until `kiln serve` at ``url`` answers /healthz (:data:`START_SECONDS` at most; its
    log if not)."""
    deadline = time.monotonic() + START_SECONDS
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
            env={**env(cwd), "KILN_SCHEDULER__SHUTDOWN_SECONDS": str(drain)},
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


#: the output of each `kiln` that :func:`running` started, by process id (for :func:`stop`)
_OUTPUT: dict[int, Path] = {}
#: what `kiln worker` prints once a stop signal stops it gracefully (before that, while the
#: interpreter starts, SIGTERM's default action ends it, as any program's)
WORKER_UP = "SIGTERM or Ctrl-C stops it"


@contextmanager
def running(cwd: Path, *args: str, log: str) -> Iterator[subprocess.Popen[bytes]]:
    """`kiln ARGS` in ``cwd`` in the background, its output in ``cwd/LOG``; killed at the end
    if the test left it running (a test that cares stops it with :func:`stop`)."""
    with (
        (cwd / log).open("w") as out,
        subprocess.Popen(
            [*KILN, *args], cwd=cwd, env=env(cwd), stdout=out, stderr=subprocess.STDOUT
        ) as process,
    ):
        _OUTPUT[process.pid] = cwd / log
        try:
            yield process
        finally:
            del _OUTPUT[process.pid]
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Send ``sig`` and wait for the exit code (``timeout`` s at most). A `kiln worker` that
    :func:`running` started gets it once it says it is up (:data:`WORKER_UP`): on a loaded
    box a batch can end before a second worker has finished starting."""
    output = _OUTPUT.get(process.pid)
    if output is not None and "worker" in process.args:  # type: ignore[operator]
        deadline = time.monotonic() + START_SECONDS
        while WORKER_UP not in output.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                break  # ended (or hung) before it was up: its exit code says so
            time.sleep(0.05)
    process.send_signal(sig)
    return process.wait(timeout=timeout)


def loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``statement`` (import checks)."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded
