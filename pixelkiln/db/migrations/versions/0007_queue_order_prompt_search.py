"""A queue order users set, and an index for searching prompts.

- batches: ``queue_rank``, the place a user gave the batch in the queue (web UI's Queue
  page, ``PUT /api/v1/queue``); claims go by priority, then ``coalesce(queue_rank, id)``,
  then id; a batch nobody moved ranks by its id (age), as before;
- prompt search (records, batch search) by an index instead of a scan:
  SQLite: ``tasks_search``, an FTS5 table with the trigram tokenizer (rowid = task id,
  column ``prompt``), holding the prompts of tasks that have images (kept by triggers),
  which answers substring ``LIKE`` / ``MATCH`` of three or more characters; PostgreSQL:
  the ``pg_trgm``
  extension and a GIN trigram index on ``tasks.prompt``, which answers ``ILIKE``.
  Neither is in ``tables.metadata`` (``tables.SEARCH_OBJECTS`` names them).

A later revision that rebuilds ``tasks`` on SQLite (``batch_alter_table``) drops the
triggers with the old table: it must call :func:`sqlite_search` again.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("queue_rank", sa.Float(), nullable=True))
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        sqlite_search()
    elif dialect == "postgresql":
        _postgres_search()


#: SQLite: a task's prompt enters the index when its first image is recorded, not when the
#: task is created: records are images, and indexing 100,000 prompts inside the statement
#: that creates a batch would more than double its time (measured: 20,000 tasks 1.7 s →
#: 4.1 s). So ``tasks_search`` keeps its own copy of the text (not external content, whose
#: ``delete`` must match what was indexed), and rows are removed by rowid (a no-op for a
#: task never indexed).
SQLITE_SEARCH = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS tasks_search USING fts5(prompt, tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS tasks_search_image AFTER INSERT ON images "
    'WHEN new."index" = 0 BEGIN '
    "INSERT INTO tasks_search(rowid, prompt) SELECT t.id, t.prompt FROM tasks t "
    "WHERE t.id = new.task_id AND NOT EXISTS "
    "(SELECT 1 FROM tasks_search s WHERE s.rowid = new.task_id); END",
    "CREATE TRIGGER IF NOT EXISTS tasks_search_delete AFTER DELETE ON tasks BEGIN "
    "DELETE FROM tasks_search WHERE rowid = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS tasks_search_update AFTER UPDATE OF prompt ON tasks BEGIN "
    "UPDATE tasks_search SET prompt = new.prompt WHERE rowid = new.id; END",
    "INSERT INTO tasks_search(rowid, prompt) SELECT id, prompt FROM tasks "
    "WHERE id IN (SELECT DISTINCT task_id FROM images)",
)


def sqlite_search() -> None:
    """The FTS5 trigram index of prompts and its triggers, filled from the tasks that
    have images."""
    conn = op.get_bind()
    for statement in SQLITE_SEARCH:
        conn.exec_driver_sql(statement)


def _postgres_search() -> None:
    """pg_trgm and a GIN index; without the right to create the extension (a managed
    database that did not allow it), searching scans as before instead of failing.

    The extension goes into ``public`` where there is one, and the operator class is
    named with the schema it is in: an installation whose ``search_path`` is its own
    schema (several on one database, or each test) sees an extension another made.
    """
    conn = op.get_bind()
    for statement in (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public",
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    ):
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(statement)
            break
        except sa.exc.DBAPIError:
            continue
    schema = conn.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    ).scalar()
    if schema is None:
        return
    opclass = conn.dialect.identifier_preparer.quote(schema) + ".gin_trgm_ops"
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS ix_tasks_prompt_trgm ON tasks USING gin (prompt {opclass})"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("image", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS tasks_search_{name}")
        op.execute("DROP TABLE IF EXISTS tasks_search")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tasks_prompt_trgm")
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_column("queue_rank")
