"""What only MySQL/MariaDB needs: utf8mb4 and byte-wise text, 8-byte times, the migration
lock, and the writes that return rows on a server without INSERT/DELETE … RETURNING
(MySQL 8; MariaDB has them, so they are switched off here to run MySQL's way).

Everything else runs on MySQL through the ``database_url``/``db`` fixtures."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import Database
from pixelkiln.db.events import events_after
from pixelkiln.db.leases import claim_tasks
from pixelkiln.db.records import delete_batch
from pixelkiln.db.tasks import TaskResult, complete_tasks, get_task, list_images
from pixelkiln.db.users import add_user
from pixelkiln.models import BatchStatus, EventType
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage

pytestmark = pytest.mark.mysql

PROMPTS = ["一只萤火虫 🦋 in the 灯塔", "naïve café ☕", "plain"]


@pytest.fixture
def db(mysql_url: str) -> Iterator[Database]:
    opened = Database.open(mysql_url)
    yield opened
    opened.close()


def _batch(db: Database, prompts: list[str]) -> int:
    spec = parse_batch({"name": "b 🦋", "tasks": [{"prompt": p, "n": 2} for p in prompts]})
    tasks = resolve_tasks(spec, default_backend="placeholder")
    return db.write(
        create_batch, NewBatch(name=spec.name, source="cli", max_attempts=3, tasks=tasks)
    )


def _run_all(db: Database, n: int) -> None:
    claimed = db.write(claim_tasks, "w1", {"placeholder": n}, 30.0, None)
    results = [
        TaskResult(
            t,
            [
                (StoredImage(f"images/{t.batch_id}/{t.id}_{i}.png", 64, 64, 10, "0" * 64), i)
                for i in range(2)
            ],
            0.5,
        )
        for t in claimed
    ]
    assert db.write(complete_tasks, "w1", results) == {t.id for t in claimed}


def test_text_is_utf8mb4_compared_byte_for_byte(db: Database) -> None:
    batch_id = _batch(db, PROMPTS)
    assert db.read(get_batch, batch_id).name == "b 🦋"
    assert [db.read(get_task, i).prompt for i in (1, 2, 3)] == PROMPTS
    tables = db.read(
        lambda c: (
            c.execute(
                text(
                    "SELECT DISTINCT table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()"
                )
            )
            .scalars()
            .all()
        )
    )
    assert tables == ["utf8mb4_bin"]
    # a "_ci" collation would make these one name
    db.write(add_user, "Bob")
    db.write(add_user, "bob")


def test_times_are_doubles_and_long_text_fits(db: Database) -> None:
    kinds = db.read(
        lambda c: dict(
            c.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = 'tasks'"
                )
            ).all()
        )
    )
    assert kinds["created_at"] == "double" and kinds["lease_expires_at"] == "double"
    assert kinds["prompt"] == "longtext"
    long_prompt = "🦋" * 20_000  # 80,000 bytes (the longest prompt a spec takes): past TEXT
    batch_id = _batch(db, [long_prompt])
    assert db.read(get_task, 1).prompt == long_prompt
    created = db.read(get_batch, batch_id).created_at
    assert created > 1e9 and created != round(created)  # a FLOAT would have kept ~7 digits


def test_concurrent_opens_migrate_once(mysql_url: str) -> None:
    opened: list[Database] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(Database.open(mysql_url))
        except BaseException as exc:  # pragma: no cover - the failure is asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(opened) == 3
        rows = opened[0].read(
            lambda c: c.execute(text("SELECT version_num FROM alembic_version")).all()
        )
        assert len(rows) == 1
    finally:
        for db in opened:
            db.close()


def test_writes_return_their_rows_without_insert_or_delete_returning(db: Database) -> None:
    dialect = db.write_engine.dialect
    assert db.read_engine.dialect is dialect
    dialect.insert_returning = dialect.delete_returning = False  # as on MySQL 8
    batch_id = _batch(db, PROMPTS)
    _run_all(db, len(PROMPTS))
    batch = db.read(get_batch, batch_id)
    assert batch.status == BatchStatus.COMPLETED and batch.counts.images == 6
    images = db.read(list_images, batch_id)
    assert sorted((i.task_id, i.index) for i in images) == [
        (t, i) for t in (1, 2, 3) for i in (0, 1)
    ]
    events = db.read(events_after, 0, batch_id=batch_id)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert sum(e.type == EventType.IMAGE_GENERATED for e in events) == 6
    assert {e.data["image"]["id"] for e in events if e.type == EventType.IMAGE_GENERATED} == {
        i.id for i in images
    }
    db.write(delete_batch, batch_id)
    assert db.read(list_images, batch_id) == []
