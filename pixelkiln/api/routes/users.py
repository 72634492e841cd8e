"""``/api/v1/me`` (your account, credits, provider keys) and ``/api/v1/admin/users``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import Connection

from pixelkiln.api.deps import AdminDep, CallerDep, CtxDep, IdPath, PageDep
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import ledger_public, user_public
from pixelkiln.db.credits import LedgerEntry, balance, grant, ledger
from pixelkiln.db.database import Tx
from pixelkiln.db.users import (
    User,
    add_user,
    delete_provider_key,
    get_user,
    issue_token,
    list_users,
    provider_key_backends,
    revoke_tokens,
    set_active,
    set_provider_key,
    set_share,
)
from pixelkiln.wire.schemas import (
    CreditsPublic,
    GrantRequest,
    ProviderKeyPublic,
    ProviderKeyRequest,
    UserCreate,
    UserCreated,
    UserPublic,
    UserUpdate,
)

me = APIRouter(prefix="/me", tags=["me"])
admin = APIRouter(prefix="/admin/users", tags=["admin"])


def _need_user(caller: CallerDep) -> int:
    if caller.user_id is None:
        raise ApiError(409, "auth_disabled", "there are no user accounts while [auth] is off")
    return caller.user_id


def _credits(
    conn: Connection, user_id: int, limit: int, offset: int
) -> tuple[int, list[LedgerEntry]]:
    return balance(conn, user_id), ledger(conn, user_id, limit=limit, offset=offset)


@me.get("", responses=ERRORS, summary="Who am I")
async def whoami(ctx: CtxDep, caller: CallerDep) -> UserPublic:
    user_id = _need_user(caller)
    user, credits = await ctx.read(_user_and_balance, user_id)
    return user_public(user, credits)


def _user_and_balance(conn: Connection, user_id: int) -> tuple[User, int]:
    return get_user(conn, user_id), balance(conn, user_id)


@me.get("/credits", responses=ERRORS, summary="My balance and ledger")
async def my_credits(ctx: CtxDep, caller: CallerDep, page: PageDep) -> CreditsPublic:
    """Balance = the sum of the ledger; entries newest first. Without auth: 0, nothing charged."""
    if caller.user_id is None:
        return CreditsPublic(user_id=None, balance=0)
    total, entries = await ctx.read(_credits, caller.user_id, page.limit, page.offset)
    return CreditsPublic(
        user_id=caller.user_id, balance=total, entries=[ledger_public(e) for e in entries]
    )


@me.get("/provider-keys", responses=ERRORS, summary="Backends I stored my own key for")
async def my_keys(ctx: CtxDep, caller: CallerDep) -> list[ProviderKeyPublic]:
    """Never the keys themselves."""
    stored = await ctx.read(provider_key_backends, _need_user(caller))
    return [ProviderKeyPublic(backend=b, created_at=t) for b, t in stored.items()]


@me.put(
    "/provider-keys/{backend}",
    status_code=204,
    responses=ERRORS,
    summary="Store my own key for a backend (its images then run on it and cost no credits)",
)
async def put_key(
    backend: str, body: ProviderKeyRequest, ctx: CtxDep, caller: CallerDep
) -> Response:
    user_id = _need_user(caller)
    if backend not in ctx.service.backends.names:
        raise ApiError(404, "not_found", f"no backend '{backend}'", field="backend")
    if backend not in ctx.service.backends.user_keys:
        raise ApiError(
            422,
            "own_key_not_supported",
            f"backend '{backend}' runs on the server's own generators; it takes no user key",
            field="backend",
        )
    ciphertext = await ctx.run(ctx.keys.encrypt, body.api_key.get_secret_value())
    await ctx.write(set_provider_key, user_id, backend, ciphertext)
    return Response(status_code=204)


@me.delete(
    "/provider-keys/{backend}",
    status_code=204,
    responses=ERRORS,
    summary="Forget my key for a backend",
)
async def delete_key(backend: str, ctx: CtxDep, caller: CallerDep) -> Response:
    await ctx.write(delete_provider_key, _need_user(caller), backend)
    return Response(status_code=204)


# -- admin ------------------------------------------------------------------------------------


@admin.get("", responses=ERRORS, summary="Every user with their balance")
async def users_list(ctx: CtxDep, _: AdminDep) -> list[UserPublic]:
    return [user_public(u, b) for u, b in await ctx.read(list_users)]


@admin.post("", status_code=201, responses=ERRORS, summary="Add a user; the token is shown once")
async def users_add(body: UserCreate, ctx: CtxDep, _: AdminDep) -> UserCreated:
    user, token = await ctx.write(
        add_user, body.name, is_admin=body.is_admin, credits=body.credits, share=body.share
    )
    return UserCreated(**user_public(user, body.credits).model_dump(), token=token)


@admin.patch(
    "/{user_id:int}",
    responses=ERRORS,
    summary="Enable or disable a user, or change their fair-share weight",
)
async def users_update(user_id: IdPath, body: UserUpdate, ctx: CtxDep, _: AdminDep) -> UserPublic:
    """``share``: their weight among users' tasks of equal priority (docs/queue-policy.md)."""
    user = await ctx.write(_update_user, user_id, body)
    return user_public(user, await ctx.read(balance, user_id))


def _update_user(tx: Tx, user_id: int, body: UserUpdate) -> User:
    """The fields given, in one transaction (nothing changes unless all can)."""
    if body.share is not None:
        set_share(tx, user_id, body.share)
    if body.active is not None:
        set_active(tx, user_id, body.active)
    return get_user(tx.conn, user_id)


@admin.post(
    "/{user_id:int}/tokens",
    status_code=201,
    responses=ERRORS,
    summary="Issue another token for a user (shown once)",
)
async def users_token(
    user_id: IdPath,
    ctx: CtxDep,
    _: AdminDep,
    label: Annotated[str, Query(max_length=100)] = "",
) -> UserCreated:
    user = await ctx.read(get_user, user_id)
    token = await ctx.write(issue_token, user_id, label)
    return UserCreated(
        **user_public(user, await ctx.read(balance, user_id)).model_dump(), token=token
    )


@admin.delete(
    "/{user_id:int}/tokens",
    status_code=204,
    responses=ERRORS,
    summary="Revoke every token of a user (a leaked one, say); issue a new one after",
)
async def users_revoke(user_id: IdPath, ctx: CtxDep, _: AdminDep) -> Response:
    await ctx.write(revoke_tokens, user_id)
    return Response(status_code=204)


@admin.post("/{user_id:int}/credits", responses=ERRORS, summary="Grant (or take back) credits")
async def users_grant(
    user_id: IdPath, body: GrantRequest, ctx: CtxDep, _: AdminDep
) -> CreditsPublic:
    await ctx.read(get_user, user_id)
    total = await ctx.write(grant, user_id, body.amount, body.note)
    return CreditsPublic(user_id=user_id, balance=total)
