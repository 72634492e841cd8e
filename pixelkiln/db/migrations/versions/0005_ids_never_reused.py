"""Ids that are handles are never reused: on SQLite, AUTOINCREMENT on batches, tasks,
images, assets, users and presets (deleting the newest batch handed its id, and its image
folder, to the next batch). Images record who made them: backend, server, model, params.

SQLite can add AUTOINCREMENT only by rebuilding a table, and these tables are referenced
by others: the rebuild runs with foreign keys off (``Database.migrate``), or dropping the
old copy would cascade-delete every child row. After the rebuild, each table's counter
starts past the highest id it ever gave, as far as the database still knows it: its own
rows, and for batches the ids the append-only credit ledger names.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: the tables rebuilt (``events`` got AUTOINCREMENT in 0004)
REBUILT = ("batches", "tasks", "images", "assets", "users", "presets")


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backend", sa.String(100), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("server", sa.String(500), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("model", sa.String(200), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
    dialect = op.get_bind().dialect.name
    sqlite = dialect == "sqlite"
    _backfill(dialect)
    if not sqlite:  # PostgreSQL's sequences, InnoDB's persisted counters: never reused
        return
    ledger_floor = op.get_bind().execute(sa.text("SELECT max(batch_id) FROM credit_ledger"))
    floors = {"batches": int(ledger_floor.scalar() or 0)}
    for table in REBUILT:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    for table in REBUILT:
        _start_after(table, floors.get(table, 0))


def _backfill(dialect: str) -> None:
    """Earlier images: the backend and model their task named (the server is unknown)."""
    if dialect in ("mysql", "mariadb"):
        op.execute(
            "UPDATE images JOIN tasks t ON t.id = images.task_id SET images.backend = t.backend, "
            "images.model = coalesce(json_unquote(json_extract(t.params, '$.model')), '')"
        )
    elif dialect == "sqlite":
        op.execute(
            "UPDATE images SET "
            "backend = coalesce((SELECT t.backend FROM tasks t WHERE t.id = images.task_id), ''), "
            "model = coalesce((SELECT json_extract(t.params, '$.model') FROM tasks t "
            "WHERE t.id = images.task_id), '')"
        )
    else:
        op.execute(
            "UPDATE images SET backend = t.backend, model = coalesce(t.params->>'model', '') "
            "FROM tasks t WHERE t.id = images.task_id"
        )


def _start_after(table: str, floor: int) -> None:
    """Make SQLite's counter for ``table`` at least its highest id and ``floor``."""
    conn = op.get_bind()
    highest = conn.execute(sa.text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()
    seq = max(int(highest), floor)
    if not seq:
        return
    known = {"name": table, "seq": seq}
    updated = conn.execute(
        sa.text("UPDATE sqlite_sequence SET seq = max(seq, :seq) WHERE name = :name"), known
    )
    if not updated.rowcount:
        conn.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"), known)


def downgrade() -> None:
    # the AUTOINCREMENT stays: ids that were never reused may stay so
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("params")
        batch_op.drop_column("model")
        batch_op.drop_column("server")
        batch_op.drop_column("backend")
