"""What every route shares: the API context, the caller, pagination. Typed dependencies.

>>> @router.get("/things")
... async def things(ctx: CtxDep, caller: CallerDep, page: PageDep) -> ...: ...
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

from fastapi import Depends, Path, Query, Request
from sqlalchemy import Connection

from pixelkiln.api.errors import ApiError
from pixelkiln.api.hosts import is_loopback
from pixelkiln.api.runner import SchedulerThread
from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.users import User, user_for_token
from pixelkiln.keybox import KeyBox
from pixelkiln.service import sessions
from pixelkiln.service.context import LOCAL, Caller
from pixelkiln.service.links import link_is_valid
from pixelkiln.service.sessions import COOKIE
from pixelkiln.service.throttle import FailedAttempts, client_key
from pixelkiln.storage import Storage
from pixelkiln.wire.schemas import ErrorBody, Id, Offset
from pixelkiln.wire.text import PATTERN as TEXT_PATTERN

P = ParamSpec("P")
T = TypeVar("T")

#: an object's id in a path; ``Id``/``Offset`` (pixelkiln.wire.schemas) bound query values
#: and body fields the same way: nothing past 64 bits reaches the database
IdPath = Annotated[Id, Path()]
OffsetQuery = Annotated[Offset, Query(description="Items to skip.")]


def search_text(description: str) -> Any:
    """A search's ``q``: up to 200 characters, no control character (pixelkiln.wire.text;
    no database can match a NUL, and SQLite's index would read it as the end of the text)."""
    return Query(max_length=200, pattern=TEXT_PATTERN, description=description)


READ_THREADS = 4  #: threads for the API's reads and file work


class ApiContext:
    """The running installation as the routes see it; one per app.

    ``service`` is what :mod:`pixelkiln.service` is called with: the Kiln's,
    with reads and file work on the API's own threads.
    """

    def __init__(self, settings: Settings, kiln: Kiln, keys: KeyBox) -> None:
        self.settings = settings
        self.kiln = kiln
        self.keys = keys
        #: threads for the API's reads and file work: kept apart from the loop's default
        #: executor, which the scheduler uses, so API load cannot starve generation
        self.pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="kiln-api")
        self.service = replace(kiln.service, executor=self.pool)
        self._runner: SchedulerThread | None = None
        #: failed tokens by client address (:mod:`pixelkiln.service.throttle`)
        self.throttle = FailedAttempts(settings.auth.failed_limit, settings.auth.failed_window)

    @property
    def runner(self) -> SchedulerThread | None:
        """The scheduler thread of this process; None when another process runs the tasks."""
        return self._runner

    @runner.setter
    def runner(self, runner: SchedulerThread | None) -> None:
        # the service wakes (and tells of cancels) whichever schedulers this process runs
        self.kiln.schedulers.discard(self._runner)
        self._runner = runner
        if runner is not None:
            self.kiln.schedulers.add(runner)

    @property
    def db(self) -> Database:
        return self.kiln.db

    @property
    def storage(self) -> Storage:
        return self.kiln.storage

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a read query in the API's own threads."""
        return await self.service.read(fn, *args, **kwargs)

    async def write(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a write through the one writer and wait for its commit."""
        return await self.service.write(fn, *args, **kwargs)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Blocking work (files, Pillow) in the API's threads."""
        return await self.service.run(fn, *args, **kwargs)


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ApiContext, Depends(get_ctx)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


#: methods that change something: a cookie alone never authorises them cross-site
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _origin_key(origin: str) -> str:
    """An origin as compared: lower case, no trailing slash (``allowed_origins`` entries
    are written by people, ``Origin`` headers by browsers)."""
    return origin.strip().rstrip("/").lower()


def same_origin(request: Request, allowed: list[str], *, loopback_only: bool = False) -> bool:
    """Whether the page that sent ``request`` is ours: its ``Origin`` names this server's
    own host (or one of ``[auth] allowed_origins``). A browser sends ``Origin`` with every
    write, same-site or not; scripts send none, and a missing one is not ours.

    ``loopback_only`` (auth off): the host must also be this machine's. A site whose
    name an attacker re-points at 127.0.0.1 (DNS rebinding) sends matching ``Origin``
    and ``Host`` headers, both naming the attacker's host; a loopback server never has
    a public name of its own."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    if _origin_key(origin) in {_origin_key(a) for a in allowed}:
        return True
    _, sep, netloc = origin.partition("://")
    host = request.headers.get("host", "")
    if not sep or netloc.lower() != host.lower():
        return False
    return is_loopback(netloc) or not loopback_only


def check_origin(request: Request, ctx: ApiContext, by_cookie: bool) -> None:
    """CSRF: a write from another site's page is refused. With a cookie the page must
    prove it is ours (Origin); without one, a foreign Origin is refused too (a form posted
    from a web page to a loopback server with auth off)."""
    if request.method not in WRITES:
        return
    if by_cookie or request.headers.get("origin") is not None:
        auth = ctx.settings.auth
        if not same_origin(request, auth.allowed_origins, loopback_only=not auth.enabled):
            raise ApiError(
                403,
                "cross_site",
                "a write from a web page must come from this server's own pages (the "
                "Origin header did not match); scripts send no Origin"
                + (", and a bearer token" if auth.enabled else ""),
            )


#: the 429 of signing in (routes/session.py), which takes no token yet: every operation that
#: takes one has its 429 from the schema's shared answers (api/openapi.py)
_THROTTLED_429: dict[str, Any] = {
    "description": "Too many different bad tokens from this client address: nothing is "
    "checked until Retry-After seconds have passed ([auth] failed_limit).",
    "headers": {
        "Retry-After": {
            "description": "Seconds until this address may try again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
THROTTLED: dict[int | str, dict[str, Any]] = {429: {"model": ErrorBody, **_THROTTLED_429}}


def refuse_if_locked(request: Request, ctx: ApiContext) -> None:
    """429 with ``Retry-After`` while the client's address is locked for sending too many
    bad tokens; its token (good or bad) is not looked at."""
    wait = ctx.throttle.retry_after(client_key(request.client.host if request.client else None))
    if wait:
        raise ApiError(
            429,
            "too_many_requests",
            f"too many bad tokens from this address: try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def note_bad_token(request: Request, ctx: ApiContext, credential: str) -> None:
    """Count a bearer token, session cookie or sign-in that opened nothing against the
    client's address (its lock, when this is one too many, is logged there)."""
    ctx.throttle.failed(client_key(request.client.host if request.client else None), credential)


async def session_user(request: Request, ctx: ApiContext) -> User | None:
    """The user of the request's session cookie (see :mod:`pixelkiln.service.sessions`)."""
    return await sessions.session_user(ctx.service, request.cookies.get(COOKIE))


async def get_caller(request: Request, ctx: CtxDep) -> Caller:
    """The caller, from the bearer token or else the session cookie; 401 when auth is on
    and neither is good, 429 while the client's address is locked for too many bad ones.
    Cookie-authenticated writes must come from our own pages."""
    if ctx.settings.auth.enabled:
        refuse_if_locked(request, ctx)
    by_cookie = ctx.settings.auth.enabled and not request.headers.get("authorization")
    if by_cookie and COOKIE in request.cookies:
        check_origin(request, ctx, by_cookie=True)
        user = await session_user(request, ctx)
        if user is None:
            note_bad_token(request, ctx, request.cookies[COOKIE])
            raise ApiError(
                401,
                "unauthorized",
                "the session has ended (signed out, expired or its token revoked): sign in again",
            )
        return Caller(user)
    check_origin(request, ctx, by_cookie=False)
    if not ctx.settings.auth.enabled:
        return LOCAL
    token = _bearer(request)
    user = await ctx.read(user_for_token, token)
    if user is None:
        note_bad_token(request, ctx, token)
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return Caller(user)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_image_scope(
    request: Request,
    ctx: CtxDep,
    image_id: IdPath,
    exp: Annotated[
        int | None, Query(ge=0, le=2**40, description="A signed link's expiry (epoch seconds).")
    ] = None,
    sig: Annotated[
        str | None,
        Query(pattern="^[0-9a-f]{64}$", description="A signed link's signature (hex)."),
    ] = None,
) -> int | None:
    """Owner filter for reading one image: a valid signed link (``exp`` + ``sig``, see
    :mod:`pixelkiln.service.links`) reads that image whoever asks; else the caller's scope."""
    if not ctx.settings.auth.enabled:  # nothing needs a token: a stale link is no matter
        return None
    if exp is not None and sig is not None:
        if link_is_valid(ctx.keys, image_id, exp, sig):
            return None
        if not request.headers.get("authorization") and COOKIE not in request.cookies:
            raise ApiError(401, "unauthorized", "this image link has expired or is not valid")
    return (await get_caller(request, ctx)).scope


#: who may read an image: its owner (or an admin), or anyone with a signed link to it
ImageScopeDep = Annotated[int | None, Depends(get_image_scope)]


async def get_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise ApiError(403, "forbidden", "this needs an admin")
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int


def get_page(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
    offset: OffsetQuery = 0,
) -> Pagination:
    return Pagination(limit, offset)


PageDep = Annotated[Pagination, Depends(get_page)]


def page_fields(p: Pagination, got: int, total: int | None) -> dict[str, Any]:
    """limit/offset/next_offset/total of a page that returned ``got`` items."""
    more = got == p.limit if total is None else p.offset + got < total
    return {
        "limit": p.limit,
        "offset": p.offset,
        "total": total,
        "next_offset": p.offset + got if more and got else None,
    }
