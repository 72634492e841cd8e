"""Statements run through the driver (db.driver): the PostgreSQL fast paths of a task's start
and outcome record what SQLAlchemy's statements did, and fail as they did."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Connection, bindparam, select, text

from pixelkiln.db import driver
from pixelkiln.db.batches import NewBatch, create_batch
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.events import events_after
from pixelkiln.db.leases import ClaimedTask, claim_tasks, start_tasks
from pixelkiln.db.notify import libpq_url
from pixelkiln.db.tables import tasks
from pixelkiln.db.tasks import TaskResult, complete_tasks, get_task, list_images
from pixelkiln.exceptions import UnstorableValueError
from pixelkiln.models import EventType
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    opened = Database.open(postgres_url)
    yield opened
    opened.close()


def _claimed(db: Database, n: int) -> list[ClaimedTask]:
    spec = parse_batch({"name": "b", "tasks": [{"prompt": f"p{i}", "n": 2} for i in range(n)]})
    tasks = resolve_tasks(spec, default_backend="placeholder")
    db.write(create_batch, NewBatch(name="b", source="cli", max_attempts=3, tasks=tasks))
    return db.write(claim_tasks, "w1", {"placeholder": n}, 30.0, None)


def _result(task: ClaimedTask, model: str = "m") -> TaskResult:
    images = [
        (
            StoredImage(
                f"images/{task.batch_id}/t{task.id}_{i}.png",
                64 + i,
                64,
                10 + task.id,
                f"{task.id}{i}".ljust(64, "0"),
                backend="placeholder",
                server="http://gpu:7860",
                model=model,
                params={"steps": 4 + i} if i else None,
            ),
            1000 * task.id + i,
        )
        for i in range(2)
    ]
    return TaskResult(task, images, 0.25 * task.id)


def test_outcomes_record_each_image_and_its_event_under_the_same_id(db: Database) -> None:
    claimed = _claimed(db, 3)
    started = db.write(start_tasks, "w1", [t.id for t in claimed[1:]])  # the first never marked
    assert started == {t.id for t in claimed[1:]}
    assert db.write(start_tasks, "w1", [t.id for t in claimed]) == {claimed[0].id}  # once each
    assert db.write(complete_tasks, "w1", [_result(t) for t in reversed(claimed)]) == {
        t.id for t in claimed
    }
    rows = {(i.task_id, i.index): i for i in db.read(list_images, claimed[0].batch_id)}
    assert len(rows) == 6
    for task in claimed:
        for index, (image, seed) in enumerate(_result(task).images):
            row = rows[(task.id, index)]
            assert (row.path, row.width, row.bytes, row.sha256, row.seed) == (
                image.path,
                image.width,
                image.bytes,
                image.sha256,
                seed,
            )
            assert (row.server, row.model, row.params) == ("http://gpu:7860", "m", image.params)
        stored = db.read(get_task, task.id)
        assert (stored.attempts, stored.duration) == (1, 0.25 * task.id)
    events = db.read(events_after, 0, batch_id=claimed[0].batch_id)
    for event in (e for e in events if e.type == EventType.IMAGE_GENERATED):
        image = event.data["image"]
        assert event.task_id is not None
        assert rows[(event.task_id, image["index"])].id == image["id"]


def test_a_driver_error_is_the_one_sqlalchemy_would_raise(pg: Database) -> None:
    claimed = _claimed(pg, 1)
    with pytest.raises(UnstorableValueError, match=r"NUL|0x00"):
        pg.write(complete_tasks, "w1", [_result(claimed[0], model="bad\x00model")])
    assert pg.read(list_images, claimed[0].batch_id) == []  # the whole record rolled back
    assert pg.write(complete_tasks, "w1", [_result(claimed[0])]) == {claimed[0].id}


def _backend_pid(tx: Tx) -> int:
    return int(driver.rows(tx, "SELECT pg_backend_pid()", ())[0][0])


def test_a_connection_lost_under_the_driver_is_replaced_for_the_next_write(
    pg: Database, postgres_url: str
) -> None:
    pid = pg.write(_backend_pid)
    with psycopg.connect(libpq_url(postgres_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits for its end
    # the write's first try fails on the dead connection; the writer tries it again on
    # its own, on a new connection: the failure under the driver did not wedge the writer
    assert pg.write(_backend_pid) != pid
    assert pg.write(_backend_pid) == pg.write(_backend_pid)  # and keeps that one


def _read_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_read_on_a_connection_the_server_closed_runs_again_without_pings(
    pg: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads are not preceded by a ping (a round trip each); a pooled connection the server
    closed fails the read's first statement, and the read runs once more on a new one."""
    pings: list[object] = []
    ping = pg.read_engine.dialect.do_ping

    def counted(connection: object) -> bool:
        pings.append(connection)
        return ping(connection)  # type: ignore[arg-type]

    monkeypatch.setattr(pg.read_engine.dialect, "do_ping", counted)
    pid = pg.read(_read_pid)
    assert pg.read(_read_pid) == pid  # the pooled connection again
    with psycopg.connect(libpq_url(postgres_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    assert pg.read(_read_pid) != pid
    assert pings == []


def test_a_core_statement_through_the_driver_gives_sqlalchemys_rows(pg: Database) -> None:
    claimed = _claimed(pg, 3)
    query = (
        select(tasks.c.id, tasks.c.params, tasks.c.status)
        .where(tasks.c.status.in_(["running", "pending"]), tasks.c.id >= bindparam("low"))
        .order_by(tasks.c.id)
    )

    def both(tx: Tx) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        ours = driver.core_rows(tx.conn, query, {"low": claimed[1].id})
        theirs = [tuple(r) for r in tx.conn.execute(query, {"low": claimed[1].id})]
        return ours, theirs

    ours, theirs = pg.write(both)
    assert ours == theirs and len(ours) == 2  # the literal IN list expanded once, JSON parsed
    assert isinstance(ours[0][1], dict)
    listed = select(tasks.c.id).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(ValueError, match="expanding"):  # a list per run: an array instead
        pg.write(lambda tx: driver.core_rows(tx.conn, listed, {"ids": [1]}))
