"""Scale-out: limits and server health shared by every process, and users' fair share.

- ``server_slots``: one row per slot of a generator server (``server`` is
  ``<backend>|<url>``); a process holds a slot (``holder``, ``expires_at``: a lease
  renewed like a task's) while a request of its runs there, so N workers never send a
  server more requests than its ``concurrency`` (engine.shared_limits);
- ``rate_buckets``: a GCRA bucket per backend with ``rpm`` (the theoretical arrival time
  ``tat``), so requests per minute hold across processes;
- ``server_health``: a server's circuit as one process found it (down since, probe
  again at), so the others skip it without waiting for their own timeouts;
- users: ``share``, their weight in fair share among tasks of equal priority (default 1);
- credit_ledger: ``delta`` as a 64-bit integer: balances go up to ``MAX_BALANCE`` (10**15),
  past PostgreSQL's and MySQL's 32-bit INTEGER (a large grant failed "out of range").

Every change but one is an added table or a column with a default: SQLite adds it with
``ALTER TABLE`` (no rebuild), so 0007's search triggers stay. The ledger's column is
rebuilt on SQLite like 0003's seed (the ledger has no triggers).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_slots",
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("server", "slot", name=op.f("pk_server_slots")),
    )
    op.create_index(op.f("ix_server_slots_holder"), "server_slots", ["holder"])
    op.create_table(
        "rate_buckets",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rate_buckets")),
    )
    op.create_table(
        "server_health",
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("down_since", sa.Float(), nullable=True),
        sa.Column("retry_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("server", name=op.f("pk_server_health")),
    )
    op.add_column(
        "users", sa.Column("share", sa.Float(), nullable=False, server_default=sa.text("1"))
    )
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.alter_column(
            "delta", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.alter_column(
            "delta", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as b:
        b.drop_column("share")
    op.drop_table("server_health")
    op.drop_table("rate_buckets")
    op.drop_index(op.f("ix_server_slots_holder"), table_name="server_slots")
    op.drop_table("server_slots")
