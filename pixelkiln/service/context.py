"""What the service needs of the open installation, passed in: :class:`ServiceContext`.

Every face builds one from what it already holds (``Kiln.service``; the API's
``ApiContext.service``) and hands it to the service functions, so nothing in
:mod:`pixelkiln.service` reaches for a global. ``Caller`` says who asks.

>>> async with Kiln(settings) as kiln:                           # doctest: +SKIP
...     await submit(kiln.service, LOCAL, Submission(spec))
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection

from pixelkiln.backends.base import Backend, BackendInfo, accepts_user_keys
from pixelkiln.config import Settings
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.users import User
from pixelkiln.engine.bus import EventBus
from pixelkiln.exceptions import PermissionDeniedError
from pixelkiln.keybox import KeyBox
from pixelkiln.storage import Storage

P = ParamSpec("P")
T = TypeVar("T")


class SchedulerLink(Protocol):
    """What the service asks of a scheduler running in this process.

    Both the in-process :class:`~pixelkiln.engine.scheduler.Scheduler` (``kiln run``,
    the library) and the API's scheduler thread answer it.
    """

    def wake(self) -> None:
        """Look for work now."""

    def cancel_batch(self, batch_id: int) -> object:
        """Stop this process's running tasks of a batch the database just cancelled."""

    def slots_freed(self) -> None:
        """Another process gave back server slots: requests waiting for one look again."""

    def state_changed(self) -> None:
        """Stored limits changed, or a server was found down or back (another process):
        read them again now."""


class Schedulers:
    """The schedulers of this process that submits wake and cancels reach.

    Empty when another process runs the tasks: that one finds new work at its
    next poll, and cancelled tasks at their next lease renewal.
    """

    def __init__(self) -> None:
        self._links: list[SchedulerLink] = []

    def add(self, link: SchedulerLink) -> None:
        if link not in self._links:
            self._links.append(link)

    def discard(self, link: SchedulerLink | None) -> None:
        if link in self._links:
            self._links.remove(link)

    def __len__(self) -> int:
        return len(self._links)

    def wake(self) -> None:
        for link in list(self._links):
            link.wake()

    def cancel_batch(self, batch_id: int) -> None:
        for link in list(self._links):
            link.cancel_batch(batch_id)

    def slots_freed(self) -> None:
        for link in list(self._links):
            link.slots_freed()

    def state_changed(self) -> None:
        for link in list(self._links):
            link.state_changed()


@dataclass(frozen=True)
class BackendCatalog:
    """The configured backends as the service sees them: names, and who takes users' keys."""

    names: tuple[str, ...] = ()
    #: backends that send a user's own provider key when the user stored one
    user_keys: frozenset[str] = frozenset()

    @classmethod
    def of(cls, backends: Mapping[str, Backend | BackendInfo]) -> BackendCatalog:
        return cls(
            tuple(backends), frozenset(n for n, b in backends.items() if accepts_user_keys(b))
        )


@dataclass(frozen=True)
class ServiceContext:
    """The open installation: every dependency of the service functions, passed in."""

    settings: Settings
    db: Database
    storage: Storage
    backends: BackendCatalog
    keys: KeyBox  #: users' own provider keys, encrypted at rest
    bus: EventBus  #: this process's live events (waiting for a batch to end)
    schedulers: Schedulers  #: the schedulers of this process, woken after a change
    #: threads for reads and file work; None: the event loop's default executor
    executor: Executor | None = None

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a read query in a worker thread."""
        return await self.run(self.db.read, fn, *args, **kwargs)  # type: ignore[arg-type]

    async def write(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a write through the one writer and wait for its commit."""
        return await self.db.awrite(fn, *args, **kwargs)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Blocking work (files, Pillow, preparing a batch) in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))


@dataclass(frozen=True)
class Caller:
    """Who asks. ``Caller(None)`` is the local installation (CLI, library, API without
    auth): it may do everything."""

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


def require_admin(caller: Caller, what: str) -> None:
    """PermissionDeniedError unless ``caller`` is an admin (the local installation is one).

    >>> require_admin(LOCAL, "manage presets")
    """
    if not caller.is_admin:
        raise PermissionDeniedError(f"only admins may {what}")


LOCAL = Caller(None)
