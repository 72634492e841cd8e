"""A write chosen as a deadlock's victim runs again (db.database.DEADLOCK_TRIES).

Two transactions lock two rows in opposite orders: the writer's (row 2, then row 1) and
another connection's (row 1, then row 2). PostgreSQL breaks the cycle by rolling back the
one that waited first, the writer's (the other session's ``deadlock_timeout`` is long);
the other commits, and the writer's write, run again, succeeds: its caller never hears
of the deadlock. The failure this mends: `kiln serve` answered 503 to a cancel of a
batch whose tasks four workers were recording.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from pixelkiln.db.database import Database, Tx, _deadlocked

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    opened = Database.open(postgres_url)
    with opened.write_engine.begin() as conn:
        conn.execute(text("CREATE TABLE pair (id integer PRIMARY KEY, v integer NOT NULL)"))
        conn.execute(text("INSERT INTO pair VALUES (1, 0), (2, 0)"))
    yield opened
    opened.close()


#: deadlocks in a row that the write is the victim of (the group commit alone ran a failed
#: write twice: once in its group, once on its own; the scale-out test saw two in a row)
CYCLES = 2


def test_the_victim_of_a_deadlock_is_written_again(db: Database, postgres_url: str) -> None:
    other_holds_row_1 = [threading.Event() for _ in range(CYCLES + 1)]
    writer_holds_row_2 = [threading.Event() for _ in range(CYCLES + 1)]
    tries: list[int] = []
    failures: list[BaseException] = []

    def write(tx: Tx) -> int:
        n = len(tries)
        tries.append(n)
        tx.conn.execute(text("UPDATE pair SET v = v + 10 WHERE id = 2"))
        if n < CYCLES:  # the other transaction of this cycle holds row 1: wait for it
            writer_holds_row_2[n].set()
            other_holds_row_1[n].wait(10)
        tx.conn.execute(text("UPDATE pair SET v = v + 10 WHERE id = 1"))
        return len(tries)

    def other() -> None:
        engine = create_engine(postgres_url)
        try:
            for n in range(CYCLES):
                with engine.begin() as conn:
                    conn.execute(text("SET LOCAL deadlock_timeout = '30s'"))  # not the victim
                    conn.execute(text("UPDATE pair SET v = v + 1 WHERE id = 1"))
                    other_holds_row_1[n].set()
                    writer_holds_row_2[n].wait(10)
                    conn.execute(text("UPDATE pair SET v = v + 1 WHERE id = 2"))  # a cycle
        except BaseException as exc:  # pragma: no cover - seen in the assertion below
            failures.append(exc)
        finally:
            engine.dispose()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        tried = db.write(write)
    finally:
        thread.join(60)
    assert failures == []
    assert tried == CYCLES + 1  # the victim of each cycle, then committed
    with db.write_engine.connect() as conn:
        values = {int(i): int(v) for i, v in conn.execute(text("SELECT id, v FROM pair"))}
    assert values == {1: CYCLES + 10, 2: CYCLES + 10}  # every commit's updates, each once


def test_a_deadlock_is_told_from_other_database_errors() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__("x")
            self.sqlstate = sqlstate

    def wrapped(orig: BaseException) -> OperationalError:
        return OperationalError("UPDATE …", {}, orig)

    assert _deadlocked(wrapped(PgError("40P01")))  # deadlock_detected
    assert _deadlocked(wrapped(PgError("40001")))  # serialization_failure
    assert not _deadlocked(wrapped(PgError("57P01")))  # admin_shutdown: not to be tried again
    assert _deadlocked(wrapped(Exception(1213, "Deadlock found when trying to get lock")))
    assert not _deadlocked(wrapped(Exception(1205, "Lock wait timeout exceeded")))
    assert not _deadlocked(wrapped(Exception("database is locked")))
