"""A new database's schema in one step: the statements the migrations write, recorded.

An empty database could be brought to :data:`~pixelkiln.db.database.SCHEMA_REVISION`
by running every migration (alembic), as an old one is. On SQLite that rebuilds each
altered table by copying it, and reflects every table on the way: about 185 ms of CPU,
plus alembic's import, for each new data folder — the first ``kiln run`` of a new user,
and every test of the suite. So the statements those migrations send to an empty
database are recorded once per database family, in ``db/schemas/<flavour>.json``, and a
new database gets them replayed (a few milliseconds); a database with any revision
recorded is migrated by alembic, as before. The schema that results is the same: the
statements are the migrations' own (Rails keeps its ``schema.rb`` for the same reason).

Only writes are kept (CREATE, ALTER, DROP, INSERT, UPDATE, DELETE): the reads alembic
makes on the way (reflection, ``PRAGMA``, ``DESCRIBE``) answer the same on every empty
database, and no kept statement has parameters. SQLite's file holds the schema the
migrations leave instead (:func:`sqlite_schema`): its table copies took 27 ms to replay.
A flavour with no file (MySQL proper, where only MariaDB's was recorded) or a file of
another revision is migrated by alembic.

``python -m tests.record_schemas`` records the files again (after a new migration; a
test fails until it is run), on SQLite and the test PostgreSQL and MariaDB servers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event

FOLDER = Path(__file__).parent / "schemas"
#: the statements replayed: what an empty database must be written to become the schema
WRITES = frozenset({"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"})


def flavour(conn: Connection) -> str:
    """The name of the statement file for ``conn``'s server: ``sqlite``, ``postgresql``,
    ``mariadb`` or ``mysql`` (whose DDL differs from MariaDB's in places)."""
    dialect = conn.dialect
    if dialect.name == "mysql" and getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return str(dialect.name)


def statements(conn: Connection, revision: str) -> list[str] | None:
    """The recorded statements that make an empty database of ``conn``'s flavour into the
    schema at ``revision``; None where none were recorded for it."""
    path = FOLDER / f"{flavour(conn)}.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if recorded.get("revision") != revision:
        return None
    found: list[str] = recorded["statements"]
    return found


def replay(conn: Connection, found: list[str]) -> None:
    """Send ``found`` on ``conn`` as they were recorded (the caller's transaction)."""
    for statement in found:
        conn.exec_driver_sql(statement)


@contextmanager
def recording(conn: Connection) -> Iterator[list[str]]:
    """The write statements sent on ``conn`` while the block runs (see :data:`WRITES`)."""
    sent: list[str] = []

    def heard(
        _conn: Connection, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool
    ) -> None:
        if statement.split(None, 1)[0].upper() not in WRITES:
            return
        if many or params:
            raise ValueError(f"a migration wrote with parameters: {statement[:80]}")
        sent.append(statement)

    event.listen(conn, "before_cursor_execute", heard)
    try:
        yield sent
    finally:
        event.remove(conn, "before_cursor_execute", heard)


def record(url: str) -> tuple[str, list[str]]:
    """(flavour, statements) of migrating the empty database at ``url`` with alembic."""
    from pixelkiln.db.database import Database

    found: list[str] = []
    db = Database(url)
    try:
        db.migrate(fresh=False, recorded=found)
        with db.write_engine.connect() as conn:
            kind = flavour(conn)
            if kind == "sqlite":
                found = sqlite_schema(conn)
    finally:
        db.close()
    return kind, found


def sqlite_schema(conn: Connection) -> list[str]:
    """The statements that make an empty SQLite database into ``conn``'s: each table, index
    and trigger as SQLite keeps it (``sqlite_master``, in the order made), then the rows of
    ``alembic_version`` and ``sqlite_sequence``. SQLite's migrations rebuild tables by
    copying them (134 statements); the tables they leave behind are made by 40."""
    rows = conn.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
    ).all()
    virtual = [name for _, name, sql in rows if sql.upper().startswith("CREATE VIRTUAL TABLE")]
    made = [
        sql
        for kind, name, sql in rows
        if name != "sqlite_sequence"  # SQLite makes it with the first AUTOINCREMENT table
        and not (kind == "table" and any(name.startswith(f"{v}_") for v in virtual))
    ]  # a virtual table makes its own shadow tables (tasks_search_data, ...)
    for (version,) in conn.exec_driver_sql("SELECT version_num FROM alembic_version"):
        made.append(f"INSERT INTO alembic_version (version_num) VALUES ('{version}')")
    for name, seq in conn.exec_driver_sql("SELECT name, seq FROM sqlite_sequence ORDER BY rowid"):
        made.append(f"INSERT INTO sqlite_sequence (name, seq) VALUES ('{name}', {int(seq)})")
    return made


def write(kind: str, found: list[str]) -> Path:
    """Keep ``found`` as the statements of ``kind`` at today's revision."""
    from pixelkiln.db.database import SCHEMA_REVISION

    FOLDER.mkdir(exist_ok=True)
    path = FOLDER / f"{kind}.json"
    body = {"revision": SCHEMA_REVISION, "statements": found}
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
