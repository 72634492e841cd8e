"""What every route shares: the API context, the caller, pagination. Typed dependencies.

>>> @router.get("/things")
... async def things(ctx: CtxDep, caller: CallerDep, page: PageDep) -> ...: ...
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

from fastapi import Depends, Path, Query, Request
from sqlalchemy import Connection

from pixelkiln.api.errors import ApiError
from pixelkiln.api.runner import SchedulerThread
from pixelkiln.api.schemas import Id, Offset
from pixelkiln.app import Kiln
from pixelkiln.config import Settings
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.users import User, user_for_token
from pixelkiln.keybox import KeyBox
from pixelkiln.storage import Storage

P = ParamSpec("P")
T = TypeVar("T")

#: an object's id in a path; ``Id``/``Offset`` (pixelkiln.api.schemas) bound query values
#: and body fields the same way: nothing past 64 bits reaches the database
IdPath = Annotated[Id, Path()]
OffsetQuery = Annotated[Offset, Query(description="Items to skip.")]


#: threads for the API's reads and file work: kept apart from the loop's default
#: executor, which the scheduler uses, so API load cannot starve generation
READ_THREADS = 4


@dataclass
class ApiContext:
    """The running installation as the routes see it; one per app."""

    settings: Settings
    kiln: Kiln
    keys: KeyBox
    runner: SchedulerThread | None = None  #: None when another process runs the tasks
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(READ_THREADS, thread_name_prefix="kiln-api")
    )

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
        return await self.run(self.db.read, fn, *args, **kwargs)  # type: ignore[arg-type]

    async def write(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a write through the one writer and wait for its commit."""
        return await self.db.awrite(fn, *args, **kwargs)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Blocking work (files, Pillow) in the API's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def wake_scheduler(self) -> None:
        if self.runner is not None:
            self.runner.wake()


@dataclass(frozen=True)
class Caller:
    """Who is asking. Without auth, the one local user, who may do everything."""

    user: User | None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user else None

    @property
    def is_admin(self) -> bool:
        return self.user is None or self.user.is_admin

    @property
    def scope(self) -> int | None:
        """Owner filter for reaching one object by id: admins reach everyone's."""
        return None if self.is_admin else self.user_id

    @property
    def mine(self) -> int | None:
        """Owner filter for lists: your own (everything without auth)."""
        return self.user_id

    @property
    def owner_key(self) -> int:
        """Idempotency keys are per user; 0 stands for "no auth"."""
        return self.user_id or 0


LOCAL = Caller(None)


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


async def get_caller(request: Request, ctx: CtxDep) -> Caller:
    """The caller, from the bearer token; 401 when auth is on and the token is bad."""
    if not ctx.settings.auth.enabled:
        return LOCAL
    user = await ctx.read(user_for_token, _bearer(request))
    if user is None:
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return Caller(user)


CallerDep = Annotated[Caller, Depends(get_caller)]


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
