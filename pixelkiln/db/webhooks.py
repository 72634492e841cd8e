"""Webhook deliveries: the outbox of batch ends, claims, outcomes, and users' signing secrets.

A batch end that a webhook is owed is a ``done`` event of a batch with a
``webhook`` URL. Deliveries are derived from those events (an outbox), not
handed over in memory: a process that stops between the batch end and the
delivery loses nothing, the next one finds the event without a delivery row
and makes one (:func:`enqueue_owed`; ``event_id`` is unique, so two processes
never make two). A row is claimed before it is sent (:func:`claim_due`: a
conditional UPDATE that moves ``next_attempt_at`` past the try's lease), so
two processes sharing a database never send it twice; an outcome is written
only by the try that claimed it (:func:`record_attempt` checks ``attempts``).

>>> db.write(enqueue_owed, 0)                       # doctest: +SKIP
1
>>> claimed = db.write(claim_due, 10, lease=40.0)  # doctest: +SKIP
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, and_, exists, func, literal, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from pixelkiln.db import returning
from pixelkiln.db.database import Tx
from pixelkiln.db.settings_store import get_setting, set_setting
from pixelkiln.db.tables import batches, events, users, webhook_deliveries
from pixelkiln.exceptions import NotFoundError
from pixelkiln.models import EventType

D = webhook_deliveries
#: the runtime setting holding the installation's own secret (batches without an owner)
LOCAL_SECRET = "webhook_secret"
SECRET_PREFIX = "whsec_"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  #: waiting for its next try (or being tried now)
    DELIVERED = "delivered"  #: the receiver answered 2xx
    FAILED = "failed"  #: every try failed, or the URL was refused; not tried again


@dataclass(frozen=True)
class WebhookDelivery:
    """One batch end's delivery to the batch's webhook, as stored."""

    id: int
    batch_id: int
    event_id: int  #: the ``done`` event of the batch end it reports
    url: str
    status: DeliveryStatus
    attempts: int  #: tries started so far
    next_attempt_at: float  #: when the next try may start (pending only)
    response_code: int | None  #: the receiver's last HTTP status, if it answered
    last_error: str | None  #: why the last try failed
    created_at: float
    delivered_at: float | None


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one try, with what its payload is made of."""

    id: int
    batch_id: int
    event_id: int
    url: str
    attempt: int  #: this try's number (1 = first); the outcome is written only for it


@dataclass(frozen=True)
class BatchEnd:
    """What a delivery reports: the batch and the summary of its ``done`` event."""

    batch_id: int
    name: str
    owner_id: int | None
    summary: dict[str, Any]
    ended_at: float  #: when the ``done`` event was written


# -- the outbox -----------------------------------------------------------------------------------


def _owed(after_id: int, *also: Any) -> Any:
    """``done`` events after ``after_id`` of batches with a webhook, without a delivery yet:
    (batch id, event id, URL, ``*also``)."""
    delivered = exists().where(D.c.event_id == events.c.id)
    return (
        select(events.c.batch_id, events.c.id, batches.c.webhook, *also)
        .select_from(events.join(batches, batches.c.id == events.c.batch_id))
        .where(
            events.c.id > after_id,
            events.c.type == str(EventType.DONE),
            batches.c.webhook.is_not(None),
            ~delivered,
        )
    )


def owed_count(conn: Connection, after_id: int = 0) -> int:
    """How many batch ends after event ``after_id`` are owed a delivery row (a cheap look
    before taking the write lock)."""
    return int(
        conn.execute(select(func.count()).select_from(_owed(after_id).subquery())).scalar_one()
    )


def enqueue_owed(tx: Tx, after_id: int = 0) -> int:
    """Make the delivery rows owed for ``done`` events after ``after_id``; how many were made.

    Another process making the same row at the same time is no error: ``event_id``
    is unique and the insert skips what exists.
    """
    made = _owed(after_id, literal(DeliveryStatus.PENDING.value), literal(tx.now), literal(tx.now))
    names = ["batch_id", "event_id", "url", "status", "next_attempt_at", "created_at"]
    statement: Any
    if tx.dialect == "mysql":  # no ON CONFLICT: IGNORE skips the rows whose key exists
        statement = mysql.insert(D).from_select(names, made).prefix_with("IGNORE")
    else:
        dialect_insert = postgresql.insert if tx.dialect == "postgresql" else sqlite.insert
        statement = (
            dialect_insert(D)
            .from_select(names, made)
            .on_conflict_do_nothing(index_elements=["event_id"])
        )
    return int(tx.conn.execute(statement).rowcount)


# -- claims and outcomes --------------------------------------------------------------------------


def due_count(conn: Connection, now: float) -> int:
    """Pending deliveries whose next try is due (read before claiming)."""
    query = select(func.count()).where(
        D.c.status == DeliveryStatus.PENDING, D.c.next_attempt_at <= now
    )
    return int(conn.execute(query).scalar_one())


def claim_due(tx: Tx, limit: int, *, lease: float) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries for one try each, lasting ``lease`` seconds.

    The conditions are repeated on the UPDATE itself, not only in the subquery
    that picks the rows: on PostgreSQL a second process that waited for the
    row's lock re-checks them against the claimed row and skips it.
    """
    due = and_(D.c.status == DeliveryStatus.PENDING, D.c.next_attempt_at <= tx.now)
    picked: Any = select(D.c.id).where(due).order_by(D.c.next_attempt_at, D.c.id).limit(limit)
    if tx.dialect == "mysql":  # no LIMIT in an IN subquery: the ids first, locked
        picked = list(tx.conn.execute(picked.with_for_update(skip_locked=True)).scalars())
    else:
        picked = picked.scalar_subquery()
    rows = returning.execute(
        tx.conn,
        update(D)
        .where(D.c.id.in_(picked), due)
        .values(attempts=D.c.attempts + 1, next_attempt_at=tx.now + lease)
        .returning(D.c.id, D.c.batch_id, D.c.event_id, D.c.url, D.c.attempts),
    ).all()
    claimed = [Claimed(r.id, r.batch_id, r.event_id, r.url, r.attempts) for r in rows]
    return sorted(claimed, key=lambda c: c.id)


def record_attempt(
    tx: Tx,
    claimed: Claimed,
    *,
    delivered: bool,
    response_code: int | None,
    error: str | None,
    retry_in: float | None,
) -> bool:
    """Write the outcome of ``claimed``'s try: delivered, failed for good (``retry_in``
    None), or due again in ``retry_in`` seconds. False when the try no longer owned the
    row (its lease lapsed and another process tried again meanwhile)."""
    values: dict[str, Any] = {"response_code": response_code, "last_error": error}
    if delivered:
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=tx.now, last_error=None)
    elif retry_in is None:
        values.update(status=DeliveryStatus.FAILED)
    else:
        values.update(next_attempt_at=tx.now + retry_in)
    changed = tx.conn.execute(
        update(D)
        .where(
            D.c.id == claimed.id,
            D.c.attempts == claimed.attempt,
            D.c.status == DeliveryStatus.PENDING,
        )
        .values(values)
    ).rowcount
    return bool(changed)


def batch_end(conn: Connection, claimed: Claimed) -> BatchEnd | None:
    """The batch and ``done`` summary a claimed delivery reports (None: the batch is gone)."""
    row = conn.execute(
        select(batches.c.name, batches.c.owner_id, events.c.data, events.c.created_at)
        .select_from(events.join(batches, batches.c.id == events.c.batch_id))
        .where(events.c.id == claimed.event_id)
    ).first()
    if row is None:
        return None
    summary = dict(row.data).get("summary", {})
    return BatchEnd(claimed.batch_id, row.name, row.owner_id, dict(summary), row.created_at)


# -- listing --------------------------------------------------------------------------------------


def _delivery(row: Row[Any]) -> WebhookDelivery:
    return WebhookDelivery(
        row.id,
        row.batch_id,
        row.event_id,
        row.url,
        DeliveryStatus(row.status),
        row.attempts,
        row.next_attempt_at,
        row.response_code,
        row.last_error,
        row.created_at,
        row.delivered_at,
    )


def list_deliveries(conn: Connection, batch_id: int) -> list[WebhookDelivery]:
    """The batch's deliveries, oldest first (one per batch end)."""
    rows = conn.execute(select(D).where(D.c.batch_id == batch_id).order_by(D.c.id))
    return [_delivery(row) for row in rows]


def pending_deliveries(conn: Connection) -> tuple[int, float | None]:
    """How many deliveries of every batch wait for a try, and when the earliest is due."""
    row = conn.execute(
        select(func.count(), func.min(D.c.next_attempt_at)).where(
            D.c.status == DeliveryStatus.PENDING
        )
    ).one()
    return int(row[0]), None if row[1] is None else float(row[1])


def get_delivery(conn: Connection, delivery_id: int) -> WebhookDelivery:
    row = conn.execute(select(D).where(D.c.id == delivery_id)).first()
    if row is None:
        raise NotFoundError(f"no webhook delivery {delivery_id}")
    return _delivery(row)


# -- signing secrets ------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def stored_secret(conn: Connection, owner_id: int | None) -> str | None:
    """The owner's secret (the installation's for ``None``), if one was made."""
    if owner_id is None:
        value = get_setting(conn, LOCAL_SECRET)
        return value if isinstance(value, str) else None
    row = conn.execute(select(users.c.webhook_secret).where(users.c.id == owner_id)).first()
    if row is None:
        raise NotFoundError(f"no user {owner_id}")
    return None if row.webhook_secret is None else str(row.webhook_secret)


def ensure_secret(tx: Tx, owner_id: int | None) -> str:
    """The owner's secret, made on first use (never replaced here: see :func:`rotate_secret`)."""
    found = stored_secret(tx.conn, owner_id)
    if found is not None:
        return found
    return _store_secret(tx, owner_id, new_secret(), only_if_missing=True)


def rotate_secret(tx: Tx, owner_id: int | None) -> str:
    """A new secret for the owner; deliveries from now on are signed with it."""
    return _store_secret(tx, owner_id, new_secret(), only_if_missing=False)


def _store_secret(tx: Tx, owner_id: int | None, secret: str, *, only_if_missing: bool) -> str:
    if owner_id is None:
        set_setting(tx, LOCAL_SECRET, secret)
        return secret
    query = update(users).where(users.c.id == owner_id)
    if only_if_missing:  # another write may have made one since we looked
        query = query.where(users.c.webhook_secret.is_(None))
    tx.conn.execute(query.values(webhook_secret=secret))
    found = stored_secret(tx.conn, owner_id)
    assert found is not None  # the user exists: stored_secret raised otherwise
    return found


__all__ = [
    "BatchEnd",
    "Claimed",
    "DeliveryStatus",
    "WebhookDelivery",
    "batch_end",
    "claim_due",
    "due_count",
    "enqueue_owed",
    "ensure_secret",
    "list_deliveries",
    "owed_count",
    "pending_deliveries",
    "record_attempt",
    "rotate_secret",
    "stored_secret",
]
