"""Ids that are handles never come back: not after a delete, not across the 0005 migration."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, delete, func, insert, select, text, update

from pixelkiln.db.batches import NewBatch, create_batch, get_batch
from pixelkiln.db.database import MIGRATIONS, Database, Tx
from pixelkiln.db.leases import ClaimedTask, claim_tasks
from pixelkiln.db.presets import PresetFields, create_preset, delete_preset
from pixelkiln.db.records import delete_batch, get_image, record_asset
from pixelkiln.db.tables import (
    NEVER_REUSED,
    assets,
    batches,
    credit_ledger,
    images,
    metadata,
    tasks,
    users,
)
from pixelkiln.db.tasks import TaskResult, complete_tasks, list_images, list_tasks
from pixelkiln.db.users import create_user
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage


def _run_batch(db: Database, n: int) -> int:
    """A finished batch of ``n`` one-image tasks; returns its id."""
    spec = parse_batch({"name": "b", "tasks": [{"prompt": f"p{i}"} for i in range(n)]})
    new = NewBatch(
        name="b",
        source="cli",
        max_attempts=3,
        tasks=resolve_tasks(spec, default_backend="placeholder"),
    )
    batch_id = db.write(create_batch, new)
    claimed = db.write(claim_tasks, "runner", {"placeholder": n}, 30.0, None)
    db.write(complete_tasks, "runner", [_result(t) for t in claimed])
    assert db.read(get_batch, batch_id).status == "completed"
    return batch_id


def _result(task: ClaimedTask) -> TaskResult:
    path = f"images/{task.batch_id}/t_{task.position:04d}_0.png"
    return TaskResult(task, [(StoredImage(path, 64, 64, 10, "0" * 64), 1)], 0.1)


def _ids(db: Database, batch_id: int) -> tuple[set[int], set[int]]:
    """(task ids, image ids) of a batch."""
    return (
        {t.id for t in db.read(list_tasks, batch_id)},
        {i.id for i in db.read(list_images, batch_id)},
    )


def test_deleting_the_newest_rows_frees_no_id(db: Database) -> None:
    _run_batch(db, 1)
    newest = _run_batch(db, 2)
    task_ids, image_ids = _ids(db, newest)
    db.write(delete_batch, newest)
    later = _run_batch(db, 2)
    assert later > newest
    later_tasks, later_images = _ids(db, later)
    assert min(later_tasks) > max(task_ids) and min(later_images) > max(image_ids)

    _, second = (db.write(create_preset, PresetFields(title=t, content="c")) for t in "ab")
    db.write(delete_preset, second.id)
    assert db.write(create_preset, PresetFields(title="c", content="c")).id > second.id

    _, bob = (db.write(create_user, name) for name in ("ann", "bob"))
    db.write(lambda tx: tx.conn.execute(delete(users).where(users.c.id == bob.id)))
    assert db.write(create_user, "cy").id > bob.id

    def upload(tx: Tx, digest: str) -> int:
        record = {"path": "x", "sha256": digest, "mime": "image/png"}
        return record_asset(tx, None, {**record, "width": 1, "height": 1, "bytes": 1}).id

    db.write(upload, "a" * 64)
    dropped = db.write(upload, "b" * 64)
    db.write(lambda tx: tx.conn.execute(delete(assets).where(assets.c.id == dropped)))
    assert db.write(upload, "c" * 64) > dropped


def test_sqlite_declares_autoincrement_for_every_table_whose_ids_are_handles(
    tmp_path: Path,
) -> None:
    declared = {
        t.name for t in metadata.tables.values() if t.dialect_options["sqlite"]["autoincrement"]
    }
    assert declared == set(NEVER_REUSED)
    db = Database.open(f"sqlite:///{tmp_path / 'kiln.db'}")
    try:
        with db.read_engine.connect() as conn:
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type='table'"))
            made = {name: sql for name, sql in rows}
    finally:
        db.close()
    assert all("AUTOINCREMENT" in made[name] for name in NEVER_REUSED)


def test_foreign_keys_are_back_on_after_migrating(tmp_path: Path) -> None:
    """The migration turns them off to rebuild tables; deletes rely on their cascades."""
    db = Database.open(f"sqlite:///{tmp_path / 'kiln.db'}")
    try:
        on = db.write(lambda tx: tx.conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
        assert on == 1
        batch_id = _run_batch(db, 2)
        db.write(delete_batch, batch_id)
        for table in (tasks, images):  # gone with their batch: ON DELETE CASCADE
            count = select(func.count()).select_from(table)
            assert db.read(lambda conn, q=count: conn.execute(q).scalar_one()) == 0
    finally:
        db.close()


# -- a database written by the previous release ----------------------------------------------


def _upgrade(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _write_at_0004(url: str) -> None:
    """Batches 1 and 2 with a task and an image each, a user charged for batch 2; then
    batch 2 deleted as 0004 did it. SQLite's next batch id was then 2 again."""
    engine = create_engine(url)
    batch = {"status": "completed", "source": "cli", "defaults": {}, "max_attempts": 3}
    task = {"status": "succeeded", "prompt": "p", "negative_prompt": "n", "inputs": {}}
    image = {"index": 0, "width": 64, "height": 64, "bytes": 1, "sha256": "0", "seed": 7}
    try:
        with engine.begin() as conn:
            user = {"name": "ann", "is_admin": False, "active": True, "created_at": 0.0}
            conn.execute(insert(users), user)
            for n in (1, 2):  # the database numbers them, as pixelkiln does
                batch_id = conn.execute(
                    insert(batches).returning(batches.c.id),
                    {**batch, "name": f"b{n}", "created_at": 0.0},
                ).scalar_one()
                params = {"model": f"m{n}", "steps": 20, "width": 64, "height": 64}
                task_id = conn.execute(
                    insert(tasks).returning(tasks.c.id),
                    {**task, "batch_id": batch_id, "position": 1, "key": "k", "backend": "sd"}
                    | {"params": params, "max_attempts": 3, "created_at": 0.0},
                ).scalar_one()
                conn.execute(
                    insert(images),
                    {**image, "task_id": task_id, "batch_id": batch_id, "path": f"p{n}"}
                    | {"created_at": 0.0},
                )
            assert batch_id == 2
            conn.execute(
                insert(credit_ledger),
                {"user_id": 1, "delta": -1, "reason": "charge", "batch_id": 2, "note": ""}
                | {"created_at": 0.0},
            )
            conn.execute(delete(images).where(images.c.batch_id == 2))
            conn.execute(delete(tasks).where(tasks.c.batch_id == 2))
            conn.execute(delete(batches).where(batches.c.id == 2))
    finally:
        engine.dispose()


def test_migrating_from_0004_keeps_the_rows_and_runs_ids_on(database_url: str) -> None:
    _upgrade(database_url, "0004")
    _write_at_0004(database_url)
    db = Database.open(database_url)  # migrates to 0005
    try:
        assert db.read(get_batch, 1).name == "b1" and [t.id for t in db.read(list_tasks, 1)] == [1]
        old = db.read(get_image, 1)
        assert (old.image.backend, old.image.model, old.image.server) == ("sd", "m1", "")
        assert old.image.params is None and old.sent_params == old.params  # not recorded then
        assert old.sent_negative_prompt == "n"
        # batch 2 was deleted under 0004; the credit ledger still names it
        newer = _run_batch(db, 1)
        assert newer == 3
        db.write(lambda tx: tx.conn.execute(update(batches).values(status="completed")))
        db.write(delete_batch, newer)
        assert _run_batch(db, 1) == 4
        assert {u for u in db.read(lambda c: set(c.execute(select(users.c.name)).scalars()))} == {
            "ann"
        }
    finally:
        db.close()
