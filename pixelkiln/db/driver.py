"""Statements run through the database driver itself: the few on every task's path.

Running a statement through SQLAlchemy Core costs about twice the CPU of the
statement itself: an ``UPDATE … RETURNING`` of two tasks on PostgreSQL takes
~100 µs of CPU through ``Connection.execute`` against ~45 µs through a psycopg
cursor (the compiled-cache lookup, the parameter processing, the result
wrapping). Every task runs a handful of such statements (its start mark, its
outcome), so those are written once as the driver's own SQL text
(:mod:`.transition_sql`) and run here, in the caller's transaction. On
PostgreSQL they take arrays (``= ANY(%s)``, ``unnest``), so a statement has one
text whatever the number of tasks, and psycopg prepares it after a few runs.

What comes back is what SQLAlchemy would have made of it: a driver error is
raised as SQLAlchemy's (``OperationalError``, ``DataError``…, which the writer
turns into our own), and a lost connection is invalidated, so the next
transaction reconnects.

>>> rows(tx, "SELECT id FROM tasks WHERE id = ANY(%s)", ([1, 2],))   # doctest: +SKIP
[(1,), (2,)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError

from pixelkiln.db.database import Tx


def rows(
    tx: Tx, statement: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` (the driver's placeholders) in ``tx``; every row it returns."""
    driver: Any = tx.conn.connection.driver_connection
    dbapi_error: type[Exception] = tx.conn.dialect.loaded_dbapi.Error
    cursor = driver.cursor()
    try:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description is not None else []
    except dbapi_error as exc:
        raise _translated(tx, statement, params, exc, driver, cursor) from exc
    finally:
        cursor.close()


def _translated(
    tx: Tx,
    statement: str,
    params: Sequence[Any] | Mapping[str, Any],
    exc: Exception,
    driver: Any,
    cursor: Any,
) -> BaseException:
    """SQLAlchemy's exception for a driver error, the connection invalidated when lost."""
    dialect = tx.conn.dialect
    lost = dialect.is_disconnect(exc, driver, cursor)  # type: ignore[arg-type]
    if lost:
        tx.conn.invalidate(exc)
    return DBAPIError.instance(
        statement,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
