"""A new database is made by the recorded statements (pixelkiln.db.fresh), and what they
make is what the migrations make: on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, inspect

from pixelkiln.db import fresh
from pixelkiln.db.database import SCHEMA_REVISION, Database, _schema_revision
from pixelkiln.db.users import add_user, get_user
from tests.conftest import _SCRATCH


@pytest.fixture
def another(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database on the server of ``database_url``."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'another.db'}"
        return
    kind = "postgres" if database_url.startswith("postgresql") else "mysql"
    url, drop = _SCRATCH[kind].create()
    try:
        yield url
    finally:
        drop()


def test_the_recorded_statements_are_what_the_migrations_write_today(database_url: str) -> None:
    """Fails after a new migration until ``python -m tests.record_schemas`` is run."""
    kind, found = fresh.record(database_url)
    recorded = json.loads((fresh.FOLDER / f"{kind}.json").read_text(encoding="utf-8"))
    assert recorded["revision"] == SCHEMA_REVISION
    # the same statements; alembic makes a rebuilt table's indexes, and writes its
    # constraints, in no set order
    assert sorted(map(_normal, recorded["statements"])) == sorted(map(_normal, found))


def test_a_new_database_is_made_by_them_and_is_the_migrated_one(
    database_url: str, another: str
) -> None:
    made = Database.open(database_url)  # empty: the recorded statements
    migrated = Database(another)
    migrated.migrate(fresh=False)  # alembic, every migration
    try:
        with made.read_engine.connect() as conn:
            assert fresh.statements(conn, SCHEMA_REVISION) is not None  # so open used them
            assert _schema_revision(conn) == SCHEMA_REVISION
            ours = describe(conn)
        with migrated.write_engine.connect() as conn:
            theirs = describe(conn)
    finally:
        made.close()
        migrated.close()
    assert ours == theirs
    assert len(ours["tables"]) > 15


def test_a_file_of_another_revision_or_server_is_not_used(database_url: str) -> None:
    db = Database.open(database_url)
    try:
        with db.read_engine.connect() as conn:
            assert fresh.statements(conn, "0001") is None  # the migrations run instead
    finally:
        db.close()


def test_an_opened_database_opens_again_without_replaying(database_url: str) -> None:
    db = Database.open(database_url)
    user, _ = db.write(add_user, "alice")
    db.close()
    again = Database.open(database_url)
    try:
        assert again.read(get_user, user.id).name == "alice"
    finally:
        again.close()


def describe(conn: Connection) -> dict[str, Any]:
    """Everything a schema is made of, as reflection and each server's catalogue see it,
    without the names of the database or schema it lives in."""
    look = inspect(conn)
    tables: dict[str, Any] = {}
    for table in sorted(look.get_table_names()):
        tables[table] = {
            "columns": [_plain(c) for c in look.get_columns(table)],
            "pk": _plain(look.get_pk_constraint(table)),
            "fks": sorted(map(repr, map(_plain, look.get_foreign_keys(table)))),
            "indexes": sorted(map(repr, map(_plain, look.get_indexes(table)))),
            "uniques": sorted(map(repr, map(_plain, look.get_unique_constraints(table)))),
            "checks": sorted(map(repr, map(_plain, look.get_check_constraints(table)))),
        }
    rows: Callable[[str], list[tuple[Any, ...]]] = lambda sql: [  # noqa: E731
        tuple(r) for r in conn.exec_driver_sql(sql).all()
    ]
    name = conn.dialect.name
    if name == "sqlite":
        extra = [
            (kind, name, table, _normal(sql or ""))
            for kind, name, table, sql in rows(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            )
        ]
        extra += rows("SELECT name, seq FROM sqlite_sequence ORDER BY name")
    elif name == "postgresql":
        extra = rows(
            "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t"
            " JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = current_schema()::regnamespace"
            " AND NOT t.tgisinternal ORDER BY 1"
        )
        extra += rows(
            "SELECT proname, prosrc FROM pg_proc"
            " WHERE pronamespace = current_schema()::regnamespace ORDER BY 1"
        )
        extra += rows(
            "SELECT sequencename, start_value, increment_by FROM pg_sequences"
            " WHERE schemaname = current_schema() ORDER BY 1"
        )
    else:
        extra = rows(
            "SELECT trigger_name, event_object_table, action_statement FROM"
            " information_schema.triggers WHERE trigger_schema = DATABASE() ORDER BY 1"
        )
        extra += rows(
            "SELECT table_name, column_name, collation_name, column_type FROM"
            " information_schema.columns WHERE table_schema = DATABASE() ORDER BY 1, 2"
        )
    extra += rows("SELECT version_num FROM alembic_version")
    return {"tables": tables, "extra": [tuple(map(str, row)) for row in extra]}


def _normal(sql: str) -> str:
    """``sql`` with its lines in order, trailing commas aside: a table SQLite's migrations
    rebuilt lists its constraints in no set order."""
    return "\n".join(sorted(line.strip().rstrip(",").strip() for line in sql.splitlines()))


def _plain(value: Any) -> Any:
    """Reflection's dicts with their types as text (SQLAlchemy types compare by identity)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items()) if k != "referred_schema"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)
