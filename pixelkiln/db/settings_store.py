"""Runtime settings: values an admin changes while the server runs (global concurrency).

``kiln.toml`` holds what is fixed at start; this table holds what may change
later and must survive a restart. Values are JSON.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select

from pixelkiln.db.database import Tx
from pixelkiln.db.tables import runtime_settings

CONCURRENCY = "concurrency"  #: global number of tasks running at once


def get_setting(conn: Connection, key: str, default: Any = None) -> Any:
    """The stored value, or ``default`` when never set."""
    row = conn.execute(
        select(runtime_settings.c.value).where(runtime_settings.c.key == key)
    ).first()
    return default if row is None else row.value


def set_setting(tx: Tx, key: str, value: Any) -> None:
    tx.conn.execute(delete(runtime_settings).where(runtime_settings.c.key == key))
    tx.conn.execute(insert(runtime_settings), {"key": key, "value": value, "updated_at": tx.now})
