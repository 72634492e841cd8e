"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from pixelkiln.config import Settings, load_settings
from pixelkiln.db.database import Database

POSTGRES_ADMIN_URL = os.environ.get(
    "KILN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KILN_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("KILN_") and name != "KILN_TEST_POSTGRES":
            monkeypatch.delenv(name)


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
    schema = f"kiln_test_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # pragma: no cover - only without the server
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    try:
        yield f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on an SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kiln.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on :func:`database_url`, closed after the test."""
    opened = Database.open(database_url)
    yield opened
    opened.close()


# -- S3-compatible storage: a moto server on loopback (tests/s3server.py) -------------------
from tests.s3server import s3_bucket, s3_env, s3_server, strict_s3_server  # noqa: E402, F401
