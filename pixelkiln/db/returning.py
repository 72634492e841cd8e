"""Writes that return rows (``… RETURNING``) on every database.

PostgreSQL and SQLite return rows from an INSERT, UPDATE or DELETE. MySQL returns
none; MariaDB (10.5+) from INSERT and DELETE only. :func:`execute` runs a write built
with ``.returning(...)`` as it is where the database can, and otherwise in steps
inside the caller's transaction:

- UPDATE: the ids of the rows it would touch are read under a row lock (``SELECT …
  FOR UPDATE`` with the write's own condition), the write runs on those ids, and the
  returned columns are read back by id. No other transaction can change a locked row
  in between, so the rows are the ones RETURNING would have given, values after the
  write;
- DELETE: the returned columns are read under a row lock first (with the row's id, one
  column more than RETURNING gives), then those rows go;
- INSERT: row by row, each row's new id read from the driver (MySQL's
  ``LAST_INSERT_ID``), then the returned columns by id, in the order of the rows given.

The answer is a :class:`~sqlalchemy.engine.Result` either way (``.scalars()``,
``.all()``, ``.first()`` work as on the write's own).

A write whose condition reads its own table through a subquery cannot be emulated so
(MySQL refuses such an UPDATE); those are built differently per database where they
are (the claim: ``transition_sql.CLAIM_PICK``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Delete, Insert, Result, Update, bindparam, select

#: the bound list of ids the steps pass along
_IDS = "returning_ids"

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def execute(conn: Connection, statement: Any, params: Params = None) -> Result[Any]:
    """Run ``statement`` (an INSERT, UPDATE or DELETE with ``.returning``) and return its
    rows, on any database."""
    dialect = conn.dialect
    if isinstance(statement, Insert):
        if dialect.insert_returning:
            return conn.execute(statement, params)
        return _insert(conn, statement, params)
    if isinstance(statement, Update):
        if dialect.update_returning:
            return conn.execute(statement, params)
        return _update(conn, statement, _one(params))
    if isinstance(statement, Delete):
        if dialect.delete_returning:
            return conn.execute(statement, params)
        return _delete(conn, statement, _one(params))
    raise TypeError(f"not a write with RETURNING: {statement!r}")


def _one(params: Params) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise TypeError("an UPDATE or DELETE with RETURNING takes one set of parameters")
    return dict(params)


def _parts(statement: Any) -> tuple[Any, Any, tuple[Any, ...]]:
    """(table, its single-column primary key, the returned columns) of a write."""
    table = statement.table
    (key,) = table.primary_key.columns
    returned: tuple[Any, ...] = tuple(statement._returning)
    return table, key, returned


def _without_returning(statement: Any) -> Any:
    """``statement`` as it is, returning nothing."""
    plain = statement._generate()
    plain._returning = ()
    return plain


def _update(conn: Connection, statement: Update, params: dict[str, Any]) -> Result[Any]:
    _table, key, returned = _parts(statement)
    locked = select(key).where(statement.whereclause).with_for_update()  # type: ignore[arg-type]
    ids = list(conn.execute(locked, params).scalars())
    if ids:
        by_id = key.in_(bindparam(_IDS, expanding=True))
        conn.execute(_without_returning(statement).where(by_id), {**params, _IDS: ids})
    return _read_back(conn, returned, key, ids)


def _delete(conn: Connection, statement: Delete, params: dict[str, Any]) -> Result[Any]:
    """The returned columns read (and locked) first, each row's id after them: the
    rows carry that one column more than the write's own RETURNING would."""
    table, key, returned = _parts(statement)
    read = select(*returned, key.label(_IDS)).where(statement.whereclause)  # type: ignore[arg-type]
    gone = conn.execute(read.with_for_update(), params).freeze()
    ids = [row[-1] for row in gone.data]
    if ids:
        conn.execute(table.delete().where(key.in_(bindparam(_IDS, expanding=True))), {_IDS: ids})
    return gone()


def _insert(conn: Connection, statement: Insert, params: Params) -> Result[Any]:
    _table, key, returned = _parts(statement)
    plain = _without_returning(statement)
    rows = [params] if params is None or isinstance(params, Mapping) else list(params)
    ids = []
    for row in rows:
        inserted = conn.execute(plain, row).inserted_primary_key
        assert inserted is not None  # an INSERT of one row
        ids.append(inserted[0])
    return _read_back(conn, returned, key, ids)


def _read_back(
    conn: Connection, returned: tuple[Any, ...], key: Any, ids: list[Any]
) -> Result[Any]:
    """The returned columns of the rows ``ids``, in that order (ascending ids: the order
    in which an UPDATE's locked rows were read, an INSERT's rows were given)."""
    query = select(*returned).where(key.in_(bindparam(_IDS, expanding=True))).order_by(key)
    return conn.execute(query, {_IDS: ids})


__all__ = ["execute"]
