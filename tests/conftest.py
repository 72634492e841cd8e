"""Fixtures shared by every test layer.

The database of a test: ``database_url`` (and ``db``) run a test on SQLite, PostgreSQL
and MySQL/MariaDB, each a fresh one (a schema, a database) dropped afterwards.
``KILN_TEST_DATABASE=postgres|mysql`` puts the rest of the suite on that database too:
``settings``/``make_settings`` and every ``kiln`` subprocess (through
``KILN_STORAGE__DATABASE_URL``) get a fresh one instead of SQLite in their data folder.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from pixelkiln.config import Settings, load_settings
from pixelkiln.db.database import Database

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

    def _engine(self) -> Engine:
        if self._admin is None:
            self._admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        return self._admin

    def create(self) -> tuple[str, Callable[[], None]]:
        """A new empty database's URL, and what drops it."""
        name = f"kiln_test_{secrets.token_hex(4)}"
        make, drop, url = self._statements(name)
        try:
            with self._engine().connect() as conn:
                conn.execute(text(make))
        except Exception as exc:  # pragma: no cover - only without the server
            pytest.skip(f"{self.kind} not reachable: {exc}")

        def dropped() -> None:
            with self._engine().connect() as conn:
                conn.execute(text(drop))

        return url, dropped

    def _statements(self, name: str) -> tuple[str, str, str]:
        if self.kind == "postgres":
            url = f"{self.admin_url}?options=-csearch_path%3D{name}"
            return f'CREATE SCHEMA "{name}"', f'DROP SCHEMA "{name}" CASCADE', url
        # created with the server's defaults: Database.open makes it utf8mb4 itself
        url = str(make_url(self.admin_url).set(database=name).render_as_string(False))
        return f"CREATE DATABASE `{name}`", f"DROP DATABASE IF EXISTS `{name}`", url

    def dispose(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None


_SCRATCH = {kind: Scratch(kind) for kind in ("postgres", "mysql")}
#: databases made for the whole suite's switch (KILN_TEST_DATABASE): dropped at the end
_SUITE_DROPS: list[Callable[[], None]] = []


def suite_database_url() -> str | None:
    """A fresh database of ``KILN_TEST_DATABASE`` (None: SQLite, each test's own file)."""
    if TEST_DATABASE == "sqlite":
        return None
    url, drop = _SCRATCH[TEST_DATABASE].create()
    _SUITE_DROPS.append(drop)
    return url


@pytest.fixture(scope="session", autouse=True)
def _drop_suite_databases() -> Iterator[None]:
    yield
    for drop in _SUITE_DROPS:
        drop()
    for scratch in _SCRATCH.values():
        scratch.dispose()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KILN_* variable from the developer's shell leaks into a test; with
    ``KILN_TEST_DATABASE``, every ``kiln`` the test starts uses a fresh database of it."""
    for name in list(os.environ):
        if name.startswith("KILN_") and name not in _TEST_VARIABLES:
            monkeypatch.delenv(name)
    url = suite_database_url()
    if url is not None:
        monkeypatch.setenv("KILN_STORAGE__DATABASE_URL", url)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own data folder, quick retries and polling."""
    scheduler = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "poll_interval": 0.05}
    scheduler.update(overrides.pop("scheduler", {}))
    return load_settings(
        None,
        storage={"data_dir": str(data_dir), **overrides.pop("storage", {})},
        scheduler=scheduler,
        **overrides,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL database, dropped afterwards."""
    url, drop = _SCRATCH["postgres"].create()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh database on the test MariaDB/MySQL server, dropped afterwards."""
    url, drop = _SCRATCH["mysql"].create()
    try:
        yield url
    finally:
        drop()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
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


# -- S3-compatible storage: a moto server on loopback (tests/s3server.py) -------------------
from tests.s3server import s3_bucket, s3_env, s3_server, strict_s3_server  # noqa: E402, F401
