"""Runs, schedules, sweep axes and measured speeds.

- ``runs``: several batches started together and reported as one (a nightly project run:
  one batch per project), with a lease so that one process drives it at a time;
- batches: ``run_id``, the run a batch belongs to (NULL for a batch on its own);
- ``schedules``: cron schedules of project runs and batch files, claimed through the
  database (``next_run_at`` compare-and-set) so several processes run each slot once,
  the claimed slot kept (``claimed_*``) until it has started, for another to take over;
- tasks: ``axes``, a sweep task's values on each axis (``{"x": {"cfg_scale": 7}, ...}``);
- ``speeds``: measured seconds per image of each backend at a size and step count,
  which plans estimate a batch's time from.

Every change here is an added table or a nullable column: SQLite adds them with
``ALTER TABLE`` (no rebuild), so 0007's search triggers stay.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("schedule_id", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_runs_owner_id"), "runs", ["owner_id"])
    op.create_index(op.f("ix_runs_status_lease_expires_at"), "runs", ["status", "lease_expires_at"])
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False, server_default=""),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("next_run_at", sa.Float(), nullable=True),
        sa.Column("last_run_at", sa.Float(), nullable=True),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("claimed_slot", sa.Float(), nullable=True),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_schedules_enabled_next_run_at"), "schedules", ["enabled", "next_run_at"]
    )
    op.create_table(
        "speeds",
        sa.Column("backend", sa.String(100), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("seconds_per_image", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "width", "height", "steps", name=op.f("pk_speeds")),
    )
    op.add_column("batches", sa.Column("run_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_batches_run_id"), "batches", ["run_id"])
    op.add_column("tasks", sa.Column("axes", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_index(op.f("ix_batches_run_id"), table_name="batches")
    with op.batch_alter_table("batches", table_kwargs={"sqlite_autoincrement": True}) as b:
        b.drop_column("run_id")
    with op.batch_alter_table("tasks", table_kwargs={"sqlite_autoincrement": True}) as b:
        b.drop_column("axes")
    if op.get_bind().dialect.name == "sqlite":  # the tasks rebuild dropped 0007's triggers
        from importlib import import_module

        name = "pixelkiln.db.migrations.versions.0007_queue_order_prompt_search"
        import_module(name).sqlite_search()
    op.drop_table("speeds")
    op.drop_table("schedules")
    op.drop_table("runs")
