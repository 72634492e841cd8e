"""tasks.own_key: the task runs on its owner's own provider key (and was priced 0);
an index to expire idempotency keys by age; on SQLite, event ids never reused
(AUTOINCREMENT: they are SSE cursors, and deleting the newest batch freed its ids)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("own_key", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_created_at"), ["created_at"], unique=False
        )

    if op.get_bind().dialect.name == "sqlite":  # PostgreSQL's SERIAL never reuses ids
        with op.batch_alter_table(
            "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_created_at"))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("own_key")
