"""Users, their API tokens and their provider keys.

A token is shown once, when issued, and only its sha256 is stored: tokens are
32 random bytes, so a plain hash is enough (no salt or slow hash needed, those
defend guessable passwords) and a lookup is one indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pixelkiln.db import returning
from pixelkiln.db.credits import grant
from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.tables import (
    api_tokens,
    batches,
    credit_ledger,
    provider_keys,
    tasks,
    users,
)
from pixelkiln.exceptions import InvalidStateError, InvalidValueError, NotFoundError
from pixelkiln.models import parse_id
from pixelkiln.wire.schemas import MAX_SHARE

TOKEN_PREFIX = "pk_"


@dataclass(frozen=True)
class User:
    """A person or program using the API."""

    id: int
    name: str
    is_admin: bool  #: may manage users, credits, presets and runtime settings
    active: bool  #: an inactive user's tokens are refused
    created_at: float
    #: their weight in fair share among tasks of equal priority (db.fair; default 1)
    share: float = 1.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: Row[Any]) -> User:
    active, admin = bool(row.active), bool(row.is_admin)
    return User(row.id, row.name, admin, active, row.created_at, float(row.share))


def check_share(share: float) -> float:
    """A user's fair-share weight, or InvalidValueError saying what one may be."""
    if not (0 < share <= MAX_SHARE):  # NaN fails too
        raise InvalidValueError(
            f"a share is a weight above 0 and at most {MAX_SHARE:g} (1 is everyone's "
            f"default; 2 gets twice the tasks of 1), not {share:g}",
            field="share",
        )
    return float(share)


def create_user(tx: Tx, name: str, *, is_admin: bool = False, share: float = 1.0) -> User:
    """A new active user; InvalidStateError when the name is taken."""
    check_share(share)
    if tx.conn.execute(select(users.c.id).where(users.c.name == name)).first() is not None:
        raise InvalidStateError(f"a user named '{name}' already exists")
    try:
        user_id = returning.execute(
            tx.conn,
            insert(users).returning(users.c.id),
            {
                "name": name,
                "is_admin": is_admin,
                "active": True,
                "created_at": tx.now,
                "share": share,
            },
        ).scalar_one()
    except IntegrityError as exc:  # another process won the race for the name
        raise InvalidStateError(f"a user named '{name}' already exists") from exc
    return User(user_id, name, is_admin, True, tx.now, share)


def issue_token(tx: Tx, user_id: int, label: str = "") -> str:
    """A new token for the user; the only time its text exists outside the caller."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    tx.conn.execute(
        insert(api_tokens),
        {"user_id": user_id, "token_hash": hash_token(token), "label": label, "created_at": tx.now},
    )
    return token


def revoke_tokens(tx: Tx, user_id: int) -> int:
    """Forget every token of the user (they get 401 from now on); how many there were."""
    get_user(tx.conn, user_id)  # NotFoundError for nobody
    return int(tx.conn.execute(delete(api_tokens).where(api_tokens.c.user_id == user_id)).rowcount)


def add_user(
    tx: Tx, name: str, *, is_admin: bool = False, credits: int = 0, share: float = 1.0
) -> tuple[User, str]:
    """A new user with a first token (returned: shown once), optional starting credits and
    a fair-share weight (``share``)."""
    user = create_user(tx, name, is_admin=is_admin, share=share)
    token = issue_token(tx, user.id, "first token")
    if credits:
        grant(tx, user.id, credits, "initial credits")
    return user, token


_BY_TOKEN = (  # built once: it runs on every authenticated request
    select(users)
    .join(api_tokens, api_tokens.c.user_id == users.c.id)
    .where(api_tokens.c.token_hash == bindparam("t_hash"), users.c.active.is_(True))
)


def user_for_token(conn: Connection, token: str) -> User | None:
    """The active user a token belongs to, or None."""
    return user_for_token_hash(conn, hash_token(token))


def user_for_token_hash(conn: Connection, token_hash: str) -> User | None:
    """The active user whose token has this hash (a browser session names it), or None."""
    row = conn.execute(_BY_TOKEN, {"t_hash": token_hash}).first()
    return _user(row) if row is not None else None


def get_user(conn: Connection, user_id: int) -> User:
    return _user(one_row(conn, select(users).where(users.c.id == user_id), f"no user {user_id}"))


def find_user(conn: Connection, ref: str) -> User:
    """A user by name, or by id when ``ref`` is a number."""
    number = parse_id(ref)
    query = select(users).where(users.c.id == number if number is not None else users.c.name == ref)
    return _user(one_row(conn, query, f"no user '{ref}'"))


def list_users(conn: Connection) -> list[tuple[User, int]]:
    """Every user with their credit balance, by name."""
    balance = (
        select(func.coalesce(func.sum(credit_ledger.c.delta), 0))
        .where(credit_ledger.c.user_id == users.c.id)
        .scalar_subquery()
    )
    rows = conn.execute(select(users, balance.label("balance")).order_by(users.c.name))
    return [(_user(row), int(row.balance)) for row in rows]


def set_active(tx: Tx, user_id: int, active: bool) -> User:
    changed = tx.conn.execute(
        update(users).where(users.c.id == user_id).values(active=active)
    ).rowcount
    if not changed:
        raise NotFoundError(f"no user {user_id}")
    return get_user(tx.conn, user_id)


def set_share(tx: Tx, user_id: int, share: float) -> User:
    """Change a user's fair-share weight; the next claim of any process weighs by it."""
    check_share(share)
    changed = tx.conn.execute(
        update(users).where(users.c.id == user_id).values(share=share)
    ).rowcount
    if not changed:
        raise NotFoundError(f"no user {user_id}")
    return get_user(tx.conn, user_id)


# -- provider keys (ciphertext only; pixelkiln.keybox encrypts and decrypts) ----------------------


def set_provider_key(tx: Tx, user_id: int, backend: str, ciphertext: str) -> None:
    """Store (or replace) the user's encrypted key for a backend."""
    tx.conn.execute(
        delete(provider_keys).where(
            provider_keys.c.user_id == user_id, provider_keys.c.backend == backend
        )
    )
    tx.conn.execute(
        insert(provider_keys),
        {"user_id": user_id, "backend": backend, "ciphertext": ciphertext, "created_at": tx.now},
    )


def delete_provider_key(tx: Tx, user_id: int, backend: str) -> None:
    deleted = tx.conn.execute(
        delete(provider_keys).where(
            provider_keys.c.user_id == user_id, provider_keys.c.backend == backend
        )
    ).rowcount
    if not deleted:
        raise NotFoundError(f"no key stored for backend '{backend}'")


def provider_key_backends(conn: Connection, user_id: int) -> dict[str, float]:
    """Backends the user has a key for → when it was stored (never the key)."""
    rows = conn.execute(
        select(provider_keys.c.backend, provider_keys.c.created_at)
        .where(provider_keys.c.user_id == user_id)
        .order_by(provider_keys.c.backend)
    )
    return {row.backend: row.created_at for row in rows}


def provider_key_for_task(conn: Connection, task_id: int) -> str | None:
    """The ciphertext of the key the task's owner stored for the task's backend, if any."""
    row = conn.execute(
        select(provider_keys.c.ciphertext)
        .select_from(
            tasks.join(batches, batches.c.id == tasks.c.batch_id).join(
                provider_keys,
                (provider_keys.c.user_id == batches.c.owner_id)
                & (provider_keys.c.backend == tasks.c.backend),
            )
        )
        .where(tasks.c.id == task_id)
    ).first()
    return None if row is None else str(row.ciphertext)
