"""Alembic environment: runs on the connection pixelkiln hands it (see db/database.py)."""

from __future__ import annotations

from alembic import context

from pixelkiln.db.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite can only ALTER through table copies
)
with context.begin_transaction():
    context.run_migrations()
