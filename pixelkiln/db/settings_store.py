"""Runtime settings: values an admin changes while the server runs (concurrency).

``kiln.toml`` holds what is fixed at start; this table holds what may change
later and must survive a restart. Values are JSON.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select

from pixelkiln.db.database import Tx
from pixelkiln.db.notify import STATE, notify
from pixelkiln.db.tables import runtime_settings

CONCURRENCY = "concurrency"  #: global number of tasks running at once
#: prefix of the per-backend keys: ``backend_concurrency:<name>`` = requests in flight per URL
BACKEND_CONCURRENCY = "backend_concurrency:"


def backend_concurrency_key(backend: str) -> str:
    """The key of ``backend``'s runtime concurrency (requests in flight per URL)."""
    return BACKEND_CONCURRENCY + backend


def get_setting(conn: Connection, key: str, default: Any = None) -> Any:
    """The stored value, or ``default`` when never set."""
    row = conn.execute(
        select(runtime_settings.c.value).where(runtime_settings.c.key == key)
    ).first()
    return default if row is None else row.value


def set_setting(tx: Tx, key: str, value: Any) -> None:
    """Store ``value``; every listening process re-reads the settings (db.notify)."""
    tx.conn.execute(delete(runtime_settings).where(runtime_settings.c.key == key))
    tx.conn.execute(insert(runtime_settings), {"key": key, "value": value, "updated_at": tx.now})
    notify(tx, STATE)


def delete_setting(tx: Tx, key: str) -> None:
    """Forget a value: the configured one applies again."""
    tx.conn.execute(delete(runtime_settings).where(runtime_settings.c.key == key))
    notify(tx, STATE)


def stored_concurrency(conn: Connection) -> tuple[int | None, dict[str, int]]:
    """The global concurrency and each backend's per-URL concurrency an admin set, if any."""
    rows = conn.execute(
        select(runtime_settings.c.key, runtime_settings.c.value).where(
            (runtime_settings.c.key == CONCURRENCY)
            | runtime_settings.c.key.startswith(BACKEND_CONCURRENCY, autoescape=True)
        )
    ).all()
    values = {row.key: row.value for row in rows}
    overall = values.pop(CONCURRENCY, None)
    backends = {
        key.removeprefix(BACKEND_CONCURRENCY): value
        for key, value in values.items()
        if isinstance(value, int)
    }
    return (overall if isinstance(overall, int) else None), backends
