"""Fixtures shared by every test layer.

The database of a test: ``database_url`` (and ``db``) run a test on SQLite, PostgreSQL
and MySQL/MariaDB, each a fresh one (a schema, a database) dropped afterwards.
``KILN_TEST_DATABASE=postgres|mysql`` puts the rest of the suite on that database too:
``settings``/``make_settings`` and every ``kiln`` subprocess (through
``KILN_STORAGE__DATABASE_URL``) get a fresh one instead of SQLite in their data folder.
In that mode ``database_url`` is that database only (the default pass already ran each
parametrized test on all three), and ``postgres_url``/``mysql_url`` of that kind are the
same database as the variable's, so what a test opens itself and what its settings and
subprocesses open agree. A test of how configuration is read asks for
``no_suite_database``.

``python -m pytest -n auto`` (the README's test command, and .ci/run's) spreads the suite
over pytest-xdist workers (``--dist loadgroup``, given by the hooks at the end of this
file); without ``-n`` it runs in one process. Every fixture here is safe to run in several
at once (random schema and database names, free ports, ``tmp_path``), and a test that
bounds a time bounds a hang under the workers' load, not a speed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from pixelkiln.config import Settings, load_settings
from pixelkiln.db.database import Database
from tests.processes import FOLDER_DATABASES
from tests.reliability.tally import TALLY

POSTGRES_ADMIN_URL = os.environ.get(
    "KILN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_ADMIN_URL = os.environ.get("KILN_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
#: the database the suite runs on where a test does not choose: sqlite, postgres or mysql
TEST_DATABASE = os.environ.get("KILN_TEST_DATABASE", "sqlite")
if TEST_DATABASE not in ("sqlite", "postgres", "mysql"):
    raise pytest.UsageError(f"KILN_TEST_DATABASE={TEST_DATABASE!r}: sqlite, postgres or mysql")
#: the variables of the test setup itself, kept by clean_environ
_TEST_VARIABLES = ("KILN_TEST_POSTGRES", "KILN_TEST_MYSQL", "KILN_TEST_DATABASE")


class Scratch:
    """Fresh databases on one server for tests: a PostgreSQL schema or a MySQL database
    each, made in milliseconds (empty; migrating is the test's ``Database.open``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        admin_url = POSTGRES_ADMIN_URL if kind == "postgres" else MYSQL_ADMIN_URL
        self.admin_url = admin_url
        self._admin: Engine | None = None
        self._names: dict[str, str] = {}  # URL -> name of each database not yet dropped
        self._late: list[str] = []  # names that were locked when their test ended

    def _engine(self) -> Engine:
        if self._admin is None:
            self._admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        return self._admin

    def create(self) -> tuple[str, Callable[[], None]]:
        """A new empty database's URL, and what drops it (:meth:`drop`)."""
        name = f"kiln_test_{secrets.token_hex(4)}"
        make, _, url = self._statements(name)
        try:
            with self._engine().connect() as conn:
                conn.execute(text(make))
        except Exception as exc:  # pragma: no cover - only without the server
            pytest.skip(f"{self.kind} not reachable: {exc}")
        self._names[url] = name
        return url, lambda: self.drop(url)

    def drop(self, url: str) -> None:
        """Drop ``url``'s database now; one still locked (a connection the test left in
        a transaction, a subprocess still exiting) is dropped at the end of the session,
        so that a test's leftovers never hang the next one."""
        name = self._names.pop(url)
        try:
            self._drop(name, lock_seconds=3)
        except OperationalError:
            self._late.append(name)

    def drop_late(self) -> None:
        """Drop what :meth:`drop` could not, waiting for its locks this time."""
        for name in self._late:
            self._drop(name, lock_seconds=None)
        self._late.clear()

    def _drop(self, name: str, lock_seconds: int | None) -> None:
        postgres = self.kind == "postgres"
        if lock_seconds is None:  # the server's default: wait as long as it takes
            limit = "SET lock_timeout = 0" if postgres else "SET lock_wait_timeout = DEFAULT"
        elif postgres:
            limit = f"SET lock_timeout = '{lock_seconds}s'"
        else:
            limit = f"SET lock_wait_timeout = {lock_seconds}"
        with self._engine().connect() as conn:
            conn.execute(text(limit))
            conn.execute(text(self._statements(name)[1]))

    def _statements(self, name: str) -> tuple[str, str, str]:
        if self.kind == "postgres":
            url = f"{self.admin_url}?options=-csearch_path%3D{name}"
            return f'CREATE SCHEMA "{name}"', f'DROP SCHEMA IF EXISTS "{name}" CASCADE', url
        # created with the server's defaults: Database.open makes it utf8mb4 itself
        url = str(make_url(self.admin_url).set(database=name).render_as_string(False))
        return f"CREATE DATABASE `{name}`", f"DROP DATABASE IF EXISTS `{name}`", url

    def dispose(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None


_SCRATCH = {kind: Scratch(kind) for kind in ("postgres", "mysql")}


@pytest.fixture(scope="session", autouse=True)
def _drop_late_databases() -> Iterator[None]:
    yield
    for scratch in _SCRATCH.values():
        scratch.drop_late()
        scratch.dispose()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """No KILN_* variable from the developer's shell leaks into a test; with
    ``KILN_TEST_DATABASE``, every ``kiln`` the test starts uses a fresh database of it
    (its URL is this fixture's value; None on SQLite, each test's own file)."""
    for name in list(os.environ):
        if name.startswith("KILN_") and name not in _TEST_VARIABLES:
            monkeypatch.delenv(name)
    if TEST_DATABASE == "sqlite":
        yield None
        return
    scratch = _SCRATCH[TEST_DATABASE]
    url, drop = scratch.create()
    monkeypatch.setenv("KILN_STORAGE__DATABASE_URL", url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def suite_database(clean_environ: str | None, tmp_path: Path) -> str:
    """The URL for a test that names its database itself (in a ``kiln.toml``, to
    ``Database.open``): the suite's (``KILN_TEST_DATABASE``), else SQLite in ``tmp_path``."""
    return clean_environ or f"sqlite:///{tmp_path / 'kiln.db'}"


@contextmanager
def folder_database(folder: Path) -> Iterator[None]:
    """While the block runs, `kiln` in ``folder`` (through ``tests.processes``) uses a fresh
    database of ``KILN_TEST_DATABASE`` of its own, whatever test is running: for a server
    that outlives one test (a module's), or a folder that must not share the test's
    database. SQLite: nothing to do, each data folder has its file."""
    if TEST_DATABASE == "sqlite":
        yield
        return
    folder = folder.resolve()
    FOLDER_DATABASES[folder], drop = _SCRATCH[TEST_DATABASE].create()
    try:
        yield
    finally:
        del FOLDER_DATABASES[folder]
        drop()


@pytest.fixture
def own_database(clean_environ: str | None) -> Iterator[Callable[[Path], None]]:
    """For a test that runs `kiln` in several data folders that must not share a database:
    ``own_database(folder)`` gives ``folder`` one of its own (:func:`folder_database`)
    until the test ends."""
    with ExitStack() as stack:
        yield lambda folder: stack.enter_context(folder_database(folder))


@pytest.fixture
def no_suite_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test of how settings are read: ``KILN_TEST_DATABASE``'s variable is unset."""
    monkeypatch.delenv("KILN_STORAGE__DATABASE_URL", raising=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own data folder, quick retries and polling. A
    ``database_url`` the test names wins over ``KILN_TEST_DATABASE``'s variable (which,
    as any environment variable, wins over what is passed in): a test that puts its
    database behind a proxy gets the proxy."""
    scheduler = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "poll_interval": 0.05}
    scheduler.update(overrides.pop("scheduler", {}))
    storage = {"data_dir": str(data_dir), **overrides.pop("storage", {})}
    settings = load_settings(None, storage=storage, scheduler=scheduler, **overrides)
    named = storage.get("database_url")
    if named is None or settings.storage.database_url == named:
        return settings
    chosen = settings.storage.model_copy(update={"database_url": named})
    return settings.model_copy(update={"storage": chosen})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


def _fresh(kind: str, suite_url: str | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database of ``kind``: the suite's own when it runs on that kind. A test that
    names a database other than the suite's chose it: the suite's variable goes, so that
    what its settings and subprocesses open is what it named (or SQLite, as by default)."""
    if TEST_DATABASE == kind and suite_url is not None:
        yield suite_url  # clean_environ drops it
        return
    monkeypatch.delenv("KILN_STORAGE__DATABASE_URL", raising=False)
    url, drop = _SCRATCH[kind].create()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def postgres_url(clean_environ: str | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh schema in the test PostgreSQL database, dropped afterwards."""
    yield from _fresh("postgres", clean_environ, monkeypatch)


@pytest.fixture
def mysql_url(clean_environ: str | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database on the test MariaDB/MySQL server, dropped afterwards."""
    yield from _fresh("mysql", clean_environ, monkeypatch)


def database_params() -> list[Any]:
    """Every database in the default pass; only the suite's own in a postgres/mysql pass."""
    marks = {"postgres": pytest.mark.postgres, "mysql": pytest.mark.mysql}
    if TEST_DATABASE in marks:
        return [pytest.param(TEST_DATABASE, marks=marks[TEST_DATABASE])]
    return ["sqlite", *(pytest.param(kind, marks=mark) for kind, mark in marks.items())]


@pytest.fixture(params=database_params())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on an SQLite file, on PostgreSQL and on MySQL/MariaDB."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kiln.db'}"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on :func:`database_url`, closed after the test."""
    opened = Database.open(database_url)
    yield opened
    opened.close()


# -- pytest-xdist: how many workers, which tests share one, the reliability table -----------
#: one worker more than the cores: most tests wait (on a `kiln` subprocess, a server, a
#: sleep); two more, with both passes at once, made tests time out on a 2-core box
EXTRA_WORKERS = 1


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n N`` (or ``-n auto``) alone: ``--dist loadgroup``; no ``-n``: one process. Not in
    a worker, which runs its share itself."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # a worker parsed the command line, which lacks the --dist given below: it marks
        # its tests' groups (xdist's loadgroup) as the controller schedules them
        config.option.loadgroup = config.option.loadgroup or workerinput.get("kiln_loadgroup")
        return
    if not hasattr(config.option, "numprocesses"):
        return  # xdist not loaded (-p no:xdist, or not installed)
    if config.option.numprocesses is None:
        return  # no -n: one process
    if config.option.dist == "no" and not config.option.distload:
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each worker whether the tests are scheduled by group (see pytest_cmdline_main)."""
    node.workerinput["kiln_loadgroup"] = node.config.option.dist == "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: the cores this process may use plus :data:`EXTRA_WORKERS`; none with
    ``-s`` (a worker's output is not shown); ``PYTEST_XDIST_AUTO_NUM_WORKERS`` wins."""
    if config.getoption("capture") == "no":
        return 0
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return len(os.sched_getaffinity(0)) + EXTRA_WORKERS


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the marks into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a module-scoped fixture (a `kiln serve`, a browser) runs on the
    same worker as the rest of its module (``--dist loadgroup``), so that the fixture
    starts once, not once per worker.

    Tests marked ``slow`` (15 s and more under the suite's load) go first, the longest
    (``slow(seconds=...)``, else 15) first among them, the rest after them in their own
    order: xdist hands work out in collection order, and the schemathesis run (over 2
    minutes) handed out last kept one worker busy for two minutes after the others had
    finished."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
        if "module" in scopes:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=_slow_first)  # stable: each kind keeps its order


def _slow_first(item: pytest.Item) -> float:
    slow = item.get_closest_marker("slow")
    return 0.0 if slow is None else -float(slow.kwargs.get("seconds", 15))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker hands its reliability rows to the controller (:func:`pytest_testnodedown`)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["kiln_tally"] = TALLY.as_json()["rows"]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller merges each worker's reliability rows as the worker ends."""
    TALLY.merge(getattr(node, "workeroutput", {}).get("kiln_tally", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The reliability table, once: by the controller, or the one process without xdist."""
    if not hasattr(terminalreporter.config, "workerinput"):
        TALLY.report(terminalreporter)


# -- S3-compatible storage: a moto server on loopback (tests/s3server.py) -------------------
from tests.s3server import s3_bucket, s3_env, s3_server, strict_s3_server  # noqa: E402, F401
