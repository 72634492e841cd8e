"""Items, per-batch limits, regenerate history, upload names and webhooks.

- batches: ``max_workers``, ``delay``, ``last_start_at`` (per-batch limits), ``webhook``
  (POSTed when the batch ends), ``extra`` (what a face keeps about a batch);
- batches: ``refund_failed``, the refund policy it was last charged under;
- tasks: ``item`` (the object the task was made from), ``run`` (regenerations so far),
  ``replace_runs`` (its next successful run deletes the earlier runs' images);
- images: ``run`` and ``superseded`` (a regenerated task keeps its earlier images as
  history); unique per (task, run, index) instead of (task, index);
- assets: ``name``, the uploaded file's own name;
- users: ``webhook_secret``;
- ``webhook_deliveries``: one row per batch end a webhook is owed.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


#: tables whose ids are handles (see ``tables.NEVER_REUSED``) that this revision may rebuild
KEEP_IDS = ("batches", "tasks", "images")


def upgrade() -> None:
    # A change SQLite cannot ALTER (a NOT NULL column with a default, a new unique
    # constraint) rebuilds the table: keep AUTOINCREMENT and each counter past every id it
    # ever gave (0005), or a deleted newest row's id would come back.
    sqlite = op.get_bind().dialect.name == "sqlite"
    seqs = {table: _sqlite_seq(table) for table in KEEP_IDS} if sqlite else {}
    _alter()
    for table, seq in seqs.items():
        _start_after(table, seq)
    _webhook_deliveries()


def _alter() -> None:
    keep = {"sqlite_autoincrement": True}
    with op.batch_alter_table("batches", schema=None, table_kwargs=keep) as batch_op:
        batch_op.add_column(sa.Column("max_workers", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("delay", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_start_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("webhook", sa.String(2000), nullable=True))
        batch_op.add_column(sa.Column("extra", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("refund_failed", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("tasks", schema=None, table_kwargs=keep) as batch_op:
        batch_op.add_column(sa.Column("item", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("replace_runs", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("images", schema=None, table_kwargs=keep) as batch_op:
        batch_op.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("superseded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        # MySQL: the old unique index is the one its task_id foreign key uses, so it can
        # only go once the new one (which also starts with task_id) is there
        unique = ("uq_images_task_id_run_index", ["task_id", "run", "index"])
        if op.get_bind().dialect.name in ("mysql", "mariadb"):
            batch_op.create_unique_constraint(*unique)
            batch_op.drop_constraint("uq_images_task_id_index", type_="unique")
        else:
            batch_op.drop_constraint("uq_images_task_id_index", type_="unique")
            batch_op.create_unique_constraint(*unique)
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(255), nullable=True))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_secret", sa.String(200), nullable=True))


def _webhook_deliveries() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=False, server_default="0"),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name="fk_webhook_deliveries_batch_id_batches",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("event_id", name="uq_webhook_deliveries_event_id"),
    )
    op.create_index("ix_webhook_deliveries_batch_id", "webhook_deliveries", ["batch_id"])
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )


def _sqlite_seq(table: str) -> int:
    found = op.get_bind().execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": table}
    )
    return int(found.scalar() or 0)


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
