"""The records search at scale, on SQLite and PostgreSQL: the prompt index (FTS5 trigram,
pg_trgm) finds what a scan finds, follows prompts that change or go, takes ``%`` and ``_``
literally, finds Chinese; each way of searching (the scope, the newest images walked,
the index) gives the same pages; counts come when cheap.

The ways are chosen by sizes (thousands of images); here the thresholds are lowered
(``monkeypatch`` on :mod:`pixelkiln.db.image_search`'s constants) so that a few dozen
images take every way.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text, update

from pixelkiln.db import image_search
from pixelkiln.db.batches import NewBatch, create_batch
from pixelkiln.db.database import Database
from pixelkiln.db.image_search import find_images
from pixelkiln.db.leases import claim_tasks, start_tasks
from pixelkiln.db.records import (
    INDEX,
    ImageQuery,
    _joined,
    count_images,
    delete_batch,
    filtered,
    search_batches,
    search_images,
)
from pixelkiln.db.tables import tasks
from pixelkiln.db.tasks import TaskResult, complete_tasks
from pixelkiln.resolve import resolve_tasks
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StoredImage
from tests.conftest import POSTGRES_ADMIN_URL, database_params

PROMPTS = [
    "a red Moth on a lamp",
    "a MOTH at night",
    "mothers day card",
    "100% cotton shirt",
    "100 cotton shirt",
    "snake_case name",
    "snakeXcase name",
    "一只发光的飞蛾在森林里",
    "飞蛾扑火",
    "夜晚的萤火虫",
    "a quiet lake",
    'say "hello" world',
]


@pytest.fixture(params=database_params())  # as database_url: one in a postgres/mysql pass
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, a PostgreSQL database of its own (pg_trgm lives in one schema per
    database, and other tests' schemas in the shared ``test`` database may hold it), or
    a MySQL database (no index: every way scans)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kiln.db'}"
        return
    if request.param == "mysql":
        yield request.getfixturevalue("mysql_url")
        return
    name = f"kiln_rs_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - only without the server
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    opened = Database.open(url)
    yield opened
    opened.close()


def made(db: Database, prompts: list[str], *, owner: int | None = None, backend: str = "p") -> int:
    """A batch whose tasks ran: one image each, recorded as the engine records them."""
    spec = parse_batch({"name": "b", "tasks": [{"prompt": p} for p in prompts]})
    new = NewBatch("b", "cli", 1, resolve_tasks(spec, default_backend=backend), owner_id=owner)
    batch_id = db.write(create_batch, new)
    claimed = db.write(claim_tasks, "t", {backend: len(prompts)}, 30.0, [batch_id])
    db.write(start_tasks, "t", [t.id for t in claimed])
    results = [
        TaskResult(t, [(StoredImage(f"i/{t.id}.png", 8, 8, 1, "0" * 64, backend), 1)], 0.1)
        for t in claimed
    ]
    db.write(complete_tasks, "t", results)
    return batch_id


def fold(value: str, dialect: str) -> str:
    """How each database folds case: SQLite's LIKE ASCII letters only."""
    return value.lower() if dialect == "postgresql" else value.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def expected(db: Database, needle: str) -> list[str]:
    """The scan's answer, computed here: prompts holding ``needle``, newest image first."""
    scan = "SELECT t.prompt FROM images i JOIN tasks t ON t.id = i.task_id ORDER BY i.id DESC"
    rows = db.read(lambda c: list(c.execute(text(scan))))
    return [r[0] for r in rows if fold(needle, db.dialect) in fold(r[0], db.dialect)]


def found(db: Database, needle: str, **options: Any) -> list[str]:
    q = ImageQuery(text=needle, **options)
    return [i.prompt for i in db.read(search_images, q, owner_id=None, limit=100)]


def each_way(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Set the thresholds so that searches go each way in turn; yields its name."""
    yield "scope"  # the defaults: a few images are a small scope
    monkeypatch.setattr(image_search, "SMALL_SCOPE", 0)
    monkeypatch.setattr(image_search, "FIRST_SLICE", 2)
    monkeypatch.setattr(image_search, "INDEX_COST", {"sqlite": 1e-6, "postgresql": 1e-6})
    yield "walk, then the index"
    monkeypatch.setattr(image_search, "INDEX_COST", {"sqlite": 10**9, "postgresql": 10**9})
    monkeypatch.setattr(image_search, "SCOPE_COST", 10**9)
    yield "the newest walked"
    monkeypatch.setattr(image_search, "SCOPE_COST", 0)
    yield "walk, then the scope"


NEEDLES = [
    "moth",
    "MOTH",
    "oth",
    "0% c",
    "100",
    "e_c",
    "飞蛾",
    "萤火虫",
    "发光的飞蛾",
    '"hello"',
    "zzz",
]


def test_every_way_finds_what_a_scan_finds(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):  # 36 images over three batches, interleaved prompts
        made(db, PROMPTS[i::3] + PROMPTS)
    for way in each_way(monkeypatch):
        for needle in NEEDLES:
            assert found(db, needle) == expected(db, needle), (way, needle)
            count = db.read(count_images, ImageQuery(text=needle), owner_id=None)
            assert count == len(expected(db, needle)), (way, needle)


def test_percent_and_underscore_are_literal_and_chinese_is_found(db: Database) -> None:
    made(db, PROMPTS)
    assert found(db, "0% c") == ["100% cotton shirt"]
    assert found(db, "e_c") == ["snake_case name"]
    assert found(db, "%") == ["100% cotton shirt"]  # short: the scan, same rule
    assert set(found(db, "飞蛾")) == {"一只发光的飞蛾在森林里", "飞蛾扑火"}
    assert found(db, "萤火虫") == ["夜晚的萤火虫"]
    assert set(found(db, "moth")) == {"a red Moth on a lamp", "a MOTH at night", "mothers day card"}


def test_pages_by_offset_and_by_cursor_agree_every_way(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        made(db, PROMPTS)
    every = expected(db, "moth")  # 12 of 48
    for way in each_way(monkeypatch):
        pages, before = [], None
        for offset in range(0, 12, 5):
            q = ImageQuery(text="moth")
            rows, _ = db.read(find_images, q, owner_id=None, limit=5, offset=offset)
            pages.append([r.prompt for r in rows])
        assert [p for page in pages for p in page] == every, way
        walked: list[str] = []
        while True:
            q = ImageQuery(text="moth", before_id=before)
            rows, _ = db.read(find_images, q, owner_id=None, limit=5)
            walked += [r.prompt for r in rows]
            if len(rows) < 5:
                break
            before = rows[-1].image.id
        assert walked == every, way


def test_the_index_follows_a_prompt_that_changes_or_goes(db: Database) -> None:
    batch_id = made(db, ["an old lighthouse", "a barn"])
    made(db, ["a lighthouse keeper"])
    lighthouse = db.read(
        lambda c: c.execute(text("SELECT id FROM tasks WHERE prompt = 'an old lighthouse'"))
    ).scalar_one()

    def rename(tx: Any) -> None:
        tx.conn.execute(update(tasks).where(tasks.c.id == lighthouse).values(prompt="a new 灯塔"))

    db.write(rename)
    assert indexed(db, "lighthouse") == found_by_index(db, "lighthouse")
    assert found_by_index(db, "lighthouse") == ["a lighthouse keeper"]
    assert found_by_index(db, "new 灯塔") == ["a new 灯塔"]
    db.write(delete_batch, batch_id)
    assert found_by_index(db, "new 灯塔") == [] and indexed(db, "new 灯塔") == []
    assert found_by_index(db, "keeper") == ["a lighthouse keeper"]


def found_by_index(db: Database, needle: str) -> list[str]:
    """The search the index leads (its plan is checked in the EXPLAIN test)."""
    q = ImageQuery(text=needle)

    def run(conn: Any) -> list[str]:
        query = filtered(_joined(tasks.c.prompt), q, None, db.dialect, INDEX)
        return [r[0] for r in conn.execute(query)]

    return db.read(run)


def indexed(db: Database, needle: str) -> list[str]:
    """What the index itself holds for ``needle`` (SQLite: the FTS table's own text, which
    the LIKE check would hide if it were stale); PostgreSQL's GIN index is PostgreSQL's."""
    if db.dialect != "sqlite":
        return found_by_index(db, needle)
    statement = text("SELECT prompt FROM tasks_search WHERE tasks_search MATCH :p")
    phrase = '"' + needle.replace('"', '""') + '"'
    return [r[0] for r in db.read(lambda c: list(c.execute(statement, {"p": phrase})))]


def test_the_plans_use_the_index(db: Database) -> None:
    if db.dialect == "mysql":
        pytest.skip("MySQL has no prompt index: every search scans")
    made(db, PROMPTS)
    q = ImageQuery(text="moth")
    query = filtered(_joined(tasks.c.prompt), q, None, db.dialect, INDEX)

    def plan(conn: Any) -> str:
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        if db.dialect == "sqlite":
            return " ".join(r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: scanned else
        return " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}".replace("%", "%%")))

    shown = db.read(plan)
    assert (
        "tasks_search VIRTUAL TABLE" if db.dialect == "sqlite" else "ix_tasks_prompt_trgm"
    ) in shown


def test_counts_come_when_cheap(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    if db.dialect == "mysql":
        pytest.skip("MySQL has no prompt index: every search scans")
    for _ in range(3):
        made(db, PROMPTS)
    q = ImageQuery(text="moth")
    _, total = db.read(find_images, q, owner_id=None, limit=2, count=True)
    assert total == 9  # a small scope: every match looked at
    monkeypatch.setattr(image_search, "SMALL_SCOPE", 0)
    monkeypatch.setattr(image_search, "FIRST_SLICE", 100)
    rows, total = db.read(find_images, q, owner_id=None, limit=2, count=True)
    assert len(rows) == 2 and total is None  # the newest held the page: the rest unknown
    _, total = db.read(find_images, ImageQuery(), owner_id=None, limit=2, count=True)
    assert total == 36  # the counters know
    monkeypatch.setattr(image_search, "FIRST_SLICE", 2)
    monkeypatch.setattr(image_search, "INDEX_COST", {"sqlite": 1e-6, "postgresql": 1e-6})
    _, total = db.read(find_images, ImageQuery(text="萤火虫"), owner_id=None, limit=2, count=True)
    assert total == 3  # the index gave every match


def test_owner_backend_and_batch_filters(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = made(db, ["alice's moth", "alice's lake"], owner=1, backend="p")
    made(db, ["bob's moth"], owner=2, backend="q")
    made(db, ["alice's other moth"], owner=1, backend="q")
    for _ in each_way(monkeypatch):
        mine = db.read(search_images, ImageQuery(text="moth"), owner_id=1, limit=10)
        assert [i.prompt for i in mine] == ["alice's other moth", "alice's moth"]
        by_q = db.read(search_images, ImageQuery(text="moth", backend="q"), owner_id=None, limit=9)
        assert [i.prompt for i in by_q] == ["alice's other moth", "bob's moth"]
        one = db.read(search_images, ImageQuery(text="moth", batch_id=alice), owner_id=2, limit=9)
        assert one == []  # someone else's batch: nothing


def queued(db: Database, name: str, prompt: str) -> int:
    """A batch not run yet: its prompts are not in SQLite's index (a task enters it with
    its first image)."""
    spec = parse_batch({"name": name, "tasks": [{"prompt": prompt}]})
    return db.write(
        create_batch, NewBatch(name, "cli", 1, resolve_tasks(spec, default_backend="p"))
    )


def test_batch_search_by_prompt_finds_queued_and_finished_batches(db: Database) -> None:
    done = made(db, ["a glowing moth"])
    waiting = queued(db, "later", "a moth, queued")
    named = queued(db, "MOTH study", "a lake")
    queued(db, "other", "a lake")
    found_batches, total = db.read(search_batches, owner_id=None, text="moth")
    assert [b.id for b in found_batches] == [named, waiting, done] and total == 3
    assert db.read(search_batches, owner_id=None, text="zzz")[1] == 0
    assert db.read(search_batches, owner_id=None, text="mo")[1] == 3  # short: scanned


@pytest.mark.postgres
def test_without_pg_trgm_postgres_still_finds_by_scanning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed PostgreSQL that refused the extension: ILIKE scans, same answers."""
    name = f"kiln_rs_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        db = Database.open(url)
        try:
            db.write(lambda tx: tx.conn.exec_driver_sql("DROP EXTENSION pg_trgm CASCADE"))
            made(db, PROMPTS)
            for way in each_way(monkeypatch):
                for needle in NEEDLES:
                    assert found(db, needle) == expected(db, needle), (way, needle)
        finally:
            db.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
