"""Statements run through the database driver itself: the few on every task's path.

Running a statement through SQLAlchemy Core costs about twice the CPU of the
statement itself: an ``UPDATE … RETURNING`` of two tasks on PostgreSQL takes
~100 µs of CPU through ``Connection.execute`` against ~45 µs through a psycopg
cursor (the compiled-cache lookup, the parameter processing, the result
wrapping). Every task runs a handful of such statements (its start mark, its
outcome), so those are written once as the driver's own SQL text
(:mod:`.transition_sql`) and run here, in the caller's transaction. On
PostgreSQL they take arrays (``= ANY(%b)``, ``unnest``; binary), so a statement has one
text whatever the number of tasks, and psycopg prepares it after a few runs.

What comes back is what SQLAlchemy would have made of it: a driver error is
raised as SQLAlchemy's (``OperationalError``, ``DataError``…, which the writer
turns into our own), and a lost connection is invalidated, so the next
transaction reconnects.

>>> rows(tx, "SELECT id FROM tasks WHERE id = ANY(%b)", ([1, 2],))   # doctest: +SKIP
[(1,), (2,)]
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from pixelkiln.db.database import Tx


def rows(
    tx: Tx, statement: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` (the driver's placeholders) in ``tx``; every row it returns."""
    return _run(tx.conn, statement, params)


def core_rows(
    conn: Connection, statement: Executable, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run a SQLAlchemy Core ``statement`` with ``params``; every row it returns, as tuples.

    On PostgreSQL through the driver: the statement is compiled once, and each run
    costs what :func:`rows` costs. Only for statements whose columns need no
    SQLAlchemy type processing (numbers, text) and whose parameters all have one
    placeholder each (no ``IN`` list: an array and ``= ANY`` instead). Elsewhere,
    through SQLAlchemy as usual.
    """
    if conn.dialect.name != "postgresql":
        return [tuple(row) for row in conn.execute(statement, params)]
    text, own = _compiled(statement, conn.dialect, tuple(sorted(params)))
    return _run(conn, text, {**own, **params})


@functools.lru_cache(maxsize=256)
def _compiled(
    statement: Executable, dialect: Dialect, names: tuple[str, ...]
) -> tuple[str, dict[str, Any]]:
    """The driver's text of ``statement`` and the values it binds by itself (literal ``IN``
    lists expanded); ``names``: the parameters each run passes, none of them a list."""
    compiled = cast(ClauseElement, statement).compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    if any(p.key in names for p in compiled.post_compile_params):
        raise ValueError(f"driver.core_rows: an expanding parameter is passed ({names})")
    expanded = compiled.construct_expanded_state(dict.fromkeys(names))
    own = {k: v for k, v in expanded.parameters.items() if k not in names}
    return expanded.statement, own


def copy_rows(tx: Tx, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL: ``rows`` into ``table``'s ``columns`` by ``COPY … FROM STDIN``, in the
    caller's transaction. A JSON column takes its value's JSON text, as an ``INSERT``
    with a cast does; ``None`` is ``NULL``. One stream for any number of rows: storing a
    batch of 800 tasks took 44-48 ms with an ``executemany`` (a statement a row,
    pipelined), 27-28 ms with ``COPY``."""
    conn = tx.conn
    driver: Any = conn.connection.driver_connection
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    cursor = driver.cursor()
    try:
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi_error as exc:
        raise _translated(conn, statement, (), exc, driver, cursor) from exc
    finally:
        cursor.close()


def _run(
    conn: Connection, statement: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    driver: Any = conn.connection.driver_connection
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    cursor = driver.cursor()
    try:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if _returns_rows(cursor) else []
    except dbapi_error as exc:
        raise _translated(conn, statement, params, exc, driver, cursor) from exc
    finally:
        cursor.close()


def _returns_rows(cursor: Any) -> bool:
    """Whether the statement just run returns rows; on psycopg without ``description``,
    which builds a Column object per field at each look (a tenth of a claim's CPU)."""
    result = getattr(cursor, "pgresult", None)
    if result is not None:
        return bool(result.nfields)
    return cursor.description is not None


def _translated(
    conn: Connection,
    statement: str,
    params: Sequence[Any] | Mapping[str, Any],
    exc: Exception,
    driver: Any,
    cursor: Any,
) -> BaseException:
    """SQLAlchemy's exception for a driver error, the connection invalidated when lost."""
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, driver, cursor)  # type: ignore[arg-type]
    if lost:
        conn.invalidate(exc)
    return DBAPIError.instance(
        statement,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
