"""``/api/v1/session``: sign a browser in with a token (an HttpOnly cookie), and out.

The cookie is what ``<img src>``, ``EventSource`` and downloads send; see
:mod:`pixelkiln.service.sessions`. Scripts keep using the bearer header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from pixelkiln.api.deps import (
    THROTTLED,
    CtxDep,
    check_origin,
    note_bad_token,
    refuse_if_locked,
)
from pixelkiln.api.errors import ApiError
from pixelkiln.api.routes.batches import ERRORS
from pixelkiln.api.views import user_public
from pixelkiln.db.credits import balance
from pixelkiln.service.sessions import COOKIE, sign_in
from pixelkiln.wire.schemas import SessionCreate, UserPublic

router = APIRouter(prefix="/session", tags=["session"])


def set_session_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Secure
    over https."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@router.post(
    "", responses=ERRORS | THROTTLED, summary="Sign in with a token: sets the session cookie"
)
async def create_session(
    body: SessionCreate, request: Request, response: Response, ctx: CtxDep
) -> UserPublic:
    """The browser keeps an HttpOnly, SameSite=Strict cookie that the API accepts in place
    of ``Authorization: Bearer``; it ends when it expires (``[auth] session_ttl``), on
    sign-out, or when the token is revoked."""
    if not ctx.settings.auth.enabled:
        raise ApiError(409, "auth_disabled", "auth is off: nothing needs signing in")
    refuse_if_locked(request, ctx)  # too many bad tokens from here: none is checked
    check_origin(request, ctx, by_cookie=False)  # another site's page may not sign you in
    found = await sign_in(ctx.service, body.token)
    if found is None:
        note_bad_token(request, ctx, body.token)
        raise ApiError(401, "unauthorized", "invalid or revoked token", field="token")
    user, value = found
    set_session_cookie(request, response, value, int(ctx.settings.auth.session_ttl))
    return user_public(user, await ctx.read(balance, user.id))


@router.delete("", status_code=204, responses=ERRORS, summary="Sign out: clears the cookie")
async def delete_session(request: Request, ctx: CtxDep) -> Response:
    """Always 204: signing out of no session is no error."""
    check_origin(request, ctx, by_cookie=False)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
