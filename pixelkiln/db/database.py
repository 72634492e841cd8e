"""Connections, the schema, and the one writer.

SQLite allows one writer at a time, so every write of this process funnels
through a single thread holding a single connection (datasette's pattern).
The thread takes whatever writes are waiting and commits them together
("group commit"): under load, hundreds of task results cost one fsync. If
one write of a group fails, the group is rolled back and each write re-run in
its own transaction, so a bad write never takes good ones down with it. A write
that a deadlock chose as its victim (two transactions locking rows in opposite
orders, on PostgreSQL or MySQL) is run again, :data:`DEADLOCK_TRIES` times at most.
Reads use their own pooled connections and never wait for the writer (WAL).

Write functions take a :class:`Tx` first; events they append are handed to
``on_commit`` once their transaction is durable, which is how the in-process
event bus learns of them.

Three databases: SQLite (embedded), PostgreSQL and MySQL/MariaDB (scale-out).
``Tx.dialect`` names the family (``sqlite``, ``postgresql``, ``mysql``; MariaDB is
``mysql``); statements that differ say why where they are built. On MySQL every
connection speaks utf8mb4 (prompts hold emoji and CJK) in READ COMMITTED: the isolation
PostgreSQL gives by default and every move here was written against (a locking read
sees the rows others committed; REPEATABLE READ's gap locks would make concurrent
``SKIP LOCKED`` claims deadlock each other on the index ranges they scan).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Executable,
    Row,
    create_engine,
    event,
    inspect,
    make_url,
    text,
)
from sqlalchemy.exc import DataError, OperationalError

from pixelkiln.db.fresh import recording, replay
from pixelkiln.db.fresh import statements as fresh_statements
from pixelkiln.exceptions import DatabaseError, NotFoundError, UnstorableValueError
from pixelkiln.models import Event

#: the newest migration; the schema is upgraded when the database is older
SCHEMA_REVISION = "0009"
MIGRATIONS = Path(__file__).parent / "migrations"
MAX_GROUP = 512  # writes committed together at most
#: tries of a write chosen as a deadlock's victim (or failing to serialize) before its
#: caller hears of it: the other transaction has gone on by then, so a try again succeeds
DEADLOCK_TRIES = 4
#: what PostgreSQL (SQLSTATE) and MySQL/MariaDB (error number) answer such a victim
_DEADLOCK_STATES = frozenset({"40P01", "40001"})
_DEADLOCK_ERRNOS = frozenset({1213})
SQLITE_BUSY_MS = 30_000
#: the names SQLAlchemy gives MySQL's dialects (``mysql+…://``, ``mariadb+…://``)
MYSQL = ("mysql", "mariadb")
#: MySQL: the named lock one migrator holds at a time (GET_LOCK), and how long another waits
MYSQL_MIGRATION_LOCK = "pixelkiln-migrate"
MYSQL_LOCK_WAIT_S = 600
#: MySQL: strict (a value that does not fit is refused, not truncated), on any server default
MYSQL_SQL_MODE = (
    "STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Tx:
    """One write: the connection, a clock read once, and the events appended."""

    conn: Connection
    now: float
    dialect: str
    events: list[Event] = field(default_factory=list)


@dataclass
class _Write:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: concurrent.futures.Future[Any]


class Database:
    """The database of one pixelkiln installation. Use :meth:`open`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        self.is_sqlite = self.dialect == "sqlite"
        self.read_engine, self.write_engine = _engines(url)
        self.on_commit: Callable[[list[Event]], None] | None = None
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, url: str) -> Database:
        """Connect, bring the schema up to date, and start the writer thread."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        db = cls(url)
        try:
            db.migrate()
        except OperationalError as exc:
            raise DatabaseError(f"cannot open the database: {exc.orig}") from exc
        db._thread = threading.Thread(target=db._writer_loop, name="kiln-db-writer", daemon=True)
        db._thread.start()
        return db

    # -- writes -------------------------------------------------------------------------------

    def write(self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(tx, ...)`` in the writer thread and wait for its committed result."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Queue ``fn(tx, ...)`` for the writer thread; the future settles once committed.

        For callers that hand the result on from a callback instead of awaiting it
        (``engine.starts``: no task and no extra turn of the event loop per write).
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Write(fn, args, kwargs, future))
        return future

    async def awrite(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """:meth:`write` for async code: the event loop keeps running meanwhile."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def _writer_loop(self) -> None:
        with self.write_engine.connect() as conn:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                group = [item]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                self._commit_group(conn, group)
                if stop:
                    return

    def _commit_group(self, conn: Connection, group: list[_Write]) -> None:
        try:
            txs, results = [], []
            with conn.begin():
                for item in group:
                    tx = Tx(conn, time.time(), self.dialect)
                    results.append(item.fn(tx, *item.args, **item.kwargs))
                    txs.append(tx)
        except BaseException:
            if len(group) == 1:
                self._commit_one(conn, group[0])
                return
            for item in group:  # find the bad one; the others commit on their own
                self._commit_one(conn, item)
            return
        self._published([e for tx in txs for e in tx.events])
        for item, result in zip(group, results, strict=True):
            _settle(item.future, result=result)

    def _commit_one(self, conn: Connection, item: _Write) -> None:
        for attempt in range(1, DEADLOCK_TRIES + 1):
            try:
                with conn.begin():
                    tx = Tx(conn, time.time(), self.dialect)
                    result = item.fn(tx, *item.args, **item.kwargs)
            except OperationalError as exc:
                if attempt < DEADLOCK_TRIES and _deadlocked(exc):
                    # the victim of two transactions locking rows in different orders (a
                    # batch cancelled while workers record its tasks): the other one has
                    # been let through; after a short, growing pause this one runs again
                    time.sleep(0.01 * attempt)
                    continue
                _settle(item.future, error=DatabaseError(f"database error: {exc.orig}"))
                return
            except DataError as exc:
                _settle(item.future, error=_unstorable(exc))
                return
            except BaseException as exc:
                _settle(item.future, error=exc)
                return
            self._published(tx.events)
            _settle(item.future, result=result)
            return

    def _published(self, events: list[Event]) -> None:
        if events and self.on_commit is not None:
            self.on_commit(events)

    # -- reads --------------------------------------------------------------------------------

    def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(conn, ...)`` on a read connection (a consistent snapshot).

        A pooled connection the server closed (restarted, or an admin's
        ``pg_terminate_backend``) fails its first statement; the pool then drops every
        connection as old as that one, and the read runs once more on a new one. A read
        writes nothing, so running it again is safe; it costs a round trip only when a
        connection died, where a ping on every checkout would cost one each time.
        """
        for attempt in (1, 2):
            try:
                with self.read_engine.connect() as conn, conn.begin():
                    return fn(conn, *args, **kwargs)
            except OperationalError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise DatabaseError(f"database error: {exc.orig}") from exc
            except DataError as exc:
                raise _unstorable(exc) from exc
        raise AssertionError("unreachable")  # the second try returns or raises

    async def aread(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """:meth:`read` in a worker thread."""
        return await asyncio.to_thread(functools.partial(self.read, fn, *args, **kwargs))

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish queued writes, stop the writer, release connections."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.read_engine.dispose()
        self.write_engine.dispose()

    def migrate(self, *, fresh: bool = True, recorded: list[str] | None = None) -> None:
        """Bring the schema up to date: an empty database by the recorded statements of
        :mod:`pixelkiln.db.fresh` (``fresh``, where recorded for its server), else by the
        migrations; their write statements are appended to ``recorded`` when given."""
        if self.dialect == "mysql":
            self._migrate_mysql(fresh, recorded)
            return
        with self.write_engine.connect() as conn:
            # A migration may rebuild a table others reference (SQLite alters tables by
            # copying them); with foreign keys on, dropping the old copy would cascade-delete
            # every child row. SQLite ignores this pragma inside a transaction: set it before.
            self._sqlite_pragma(conn, "PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    self._upgrade(conn, fresh, recorded)
            finally:
                self._sqlite_pragma(conn, "PRAGMA foreign_keys=ON")

    def _migrate_mysql(self, fresh: bool, recorded: list[str] | None) -> None:
        """One migrator at a time across processes: MySQL has no transaction-scoped
        advisory lock, so a named session lock (GET_LOCK) is taken around the upgrade
        and released whatever happens. MySQL commits each DDL statement on its own: a
        migration cut short is not rolled back (the next open resumes at the revision
        recorded)."""
        with self.write_engine.connect() as conn:
            name = {"name": MYSQL_MIGRATION_LOCK, "wait": MYSQL_LOCK_WAIT_S}
            got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"), name).scalar()
            conn.commit()
            if got != 1:
                raise DatabaseError("another process is migrating the database; try again")
            try:
                with conn.begin():
                    self._upgrade(conn, fresh, recorded)
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), name)
                conn.commit()

    def _upgrade(self, conn: Connection, fresh: bool, recorded: list[str] | None) -> None:
        if self.dialect == "postgresql":
            # one migrator at a time across processes
            conn.execute(text("SELECT pg_advisory_xact_lock(7477001)"))
        revision = _schema_revision(conn)
        if revision == SCHEMA_REVISION:
            return
        if revision is None and self.dialect == "mysql":
            # tables take the database's defaults: every text utf8mb4 (emoji, CJK) and
            # compared byte for byte, as on PostgreSQL and SQLite (a "_ci" collation
            # would make "Bob" and "bob" one user, "a" and "a " one idempotency key)
            conn.exec_driver_sql("ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        found = fresh_statements(conn, SCHEMA_REVISION) if revision is None and fresh else None
        if found is not None:
            replay(conn, found)
        else:
            self._alembic(conn, recorded)
        if self.is_sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
            raise DatabaseError("migration left rows whose foreign keys point nowhere")

    def _alembic(self, conn: Connection, recorded: list[str] | None) -> None:
        from alembic import command  # only when migrating: alembic is slow to import
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        if recorded is None:
            command.upgrade(config, "head")
            return
        with recording(conn) as sent:
            command.upgrade(config, "head")
        recorded.extend(sent)

    def _sqlite_pragma(self, conn: Connection, pragma: str) -> None:
        """Run ``pragma`` outside any transaction (the driver's own autocommit)."""
        if self.is_sqlite:
            driver = conn.connection.driver_connection
            assert driver is not None  # an open connection
            driver.execute(pragma)


def _deadlocked(exc: OperationalError) -> bool:
    """Whether the database rolled ``exc``'s transaction back to end a deadlock (or a
    serialization failure): nothing was wrong with the write itself."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)  # psycopg
    if state is not None:
        return state in _DEADLOCK_STATES
    args: tuple[Any, ...] = getattr(orig, "args", ())  # PyMySQL: (errno, message)
    return bool(args) and args[0] in _DEADLOCK_ERRNOS


def _unstorable(exc: DataError) -> UnstorableValueError:
    """A value the database refused (PostgreSQL: text with NUL, a number out of range)."""
    why = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "refused"
    return UnstorableValueError(f"a value cannot be stored: {why}")


def one_row(conn: Connection, query: Executable, missing: str) -> Row[Any]:
    """The first row of ``query``; ``NotFoundError(missing)`` when there is none."""
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(missing)
    return row


def _settle(
    future: concurrent.futures.Future[Any],
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> None:
    """Hand a write's outcome back; the caller may have given up on it (its coroutine was
    cancelled), which must not kill the writer thread. The write itself stands."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _schema_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return str(row[0]) if row else None


def dialect_of(url: str) -> str:
    """The database family of ``url``: ``sqlite``, ``postgresql`` or ``mysql`` (MariaDB too).

    >>> dialect_of("mariadb+pymysql://kiln@db/kiln"), dialect_of("sqlite:///kiln.db")
    ('mysql', 'sqlite')
    """
    name = make_url(url).get_backend_name()
    return "mysql" if name in MYSQL else name


def _engines(url: str) -> tuple[Engine, Engine]:
    """(read engine, write engine); the same pooled engine on PostgreSQL and MySQL."""
    dialect = dialect_of(url)
    if dialect == "mysql":
        engine = _mysql_engine(make_url(url))
        return engine, engine
    if dialect != "sqlite":
        # no ping on checkout (a round trip before every read): a read on a connection
        # the server closed is run again instead (Database.read); the writer's own
        # connection reconnects by itself after a failed write
        engine = create_engine(url)
        return engine, engine
    args = {"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}
    read = create_engine(url, connect_args=args)
    write = create_engine(url, connect_args=args, pool_size=1, max_overflow=0)
    _sqlite_setup(read, begin="BEGIN")
    _sqlite_setup(
        write, begin="BEGIN IMMEDIATE"
    )  # take the write lock up front: no upgrade deadlocks
    return read, write


def _mysql_engine(url: URL) -> Engine:
    """utf8mb4 on the wire unless the URL chose otherwise (MySQL's "utf8" holds no emoji),
    READ COMMITTED (see the module's docstring), strict SQL mode; connections the server
    closed while idle (``wait_timeout``) are replaced, not handed out."""
    if "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_recycle=3600,
        isolation_level="READ COMMITTED",
        connect_args={"init_command": f"SET SESSION sql_mode = '{MYSQL_SQL_MODE}'"},
    )


def _sqlite_setup(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


__all__ = ["MYSQL", "SCHEMA_REVISION", "Database", "Tx", "dialect_of"]
