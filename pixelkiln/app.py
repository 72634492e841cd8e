"""pixelkiln as a library: one object that owns the database, storage, backends and scheduler.

>>> from pixelkiln.app import Kiln
>>> from pixelkiln.config import load_settings
>>> from pixelkiln.specs import parse_batch
>>> async def main() -> None:                                   # doctest: +SKIP
...     async with Kiln(load_settings(None)) as kiln:
...         batch_id = await kiln.submit(parse_batch(
...             {"name": "foxes", "tasks": [{"prompt": "a red fox"}]}))
...         await kiln.run_until_done([batch_id])
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from pixelkiln.backends import Backend, BackendInfo, describe_backends
from pixelkiln.config import Settings
from pixelkiln.db.database import Database
from pixelkiln.db.notify import EVENTS, KINDS, Listener
from pixelkiln.db.users import get_user
from pixelkiln.engine.assembly import Engine
from pixelkiln.engine.bus import EventBus
from pixelkiln.engine.scheduler import Scheduler
from pixelkiln.engine.wakeups import Wakeups
from pixelkiln.keybox import KeyBox
from pixelkiln.models import Batch
from pixelkiln.service import (
    LOCAL,
    BackendCatalog,
    Caller,
    Schedulers,
    ServiceContext,
    Submission,
    cancel,
    submit,
)
from pixelkiln.specs import BatchSpec
from pixelkiln.storage import open_storage


class Kiln:
    """An open pixelkiln installation. Use ``async with Kiln(settings) as kiln``.

    ``backends`` replaces the configured ones with ready-made instances (tests,
    embedding); ``engine=False`` builds none when opening, for a process whose
    tasks run elsewhere (the API: its scheduler thread builds its own).
    ``hear_events=False``: on PostgreSQL, other processes' events are not listened for
    (a process that streams none to anyone: ``kiln worker``), only their new work.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        backends: Mapping[str, Backend] | None = None,
        engine: bool = True,
        hear_events: bool = True,
    ) -> None:
        self.settings = settings
        self.storage = open_storage(settings.storage)  #: where image bytes live
        self.bus = EventBus()
        self.keys = KeyBox(settings)  #: users' own provider keys, encrypted at rest
        #: the configured backends, what each is and can do (nothing built: see ``engine``)
        self.backends: dict[str, BackendInfo] = {}
        self.scheduler: Scheduler | None = None
        #: the schedulers of this process that submits wake (this one's, the API's thread)
        self.schedulers = Schedulers()
        self._service: ServiceContext | None = None
        self._http = http
        self._given_backends = backends
        self._build_engine = engine
        self._hear_events = hear_events
        self._engine: Engine | None = None
        self._db: Database | None = None
        #: PostgreSQL: other processes' new work and events, heard as they commit
        self.wakeups: Wakeups | None = None
        self._listener: Listener | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("Kiln is not open; use 'async with Kiln(settings)'")
        return self._db

    @property
    def listening(self) -> bool:
        """Whether other processes' work and events are heard as they commit (PostgreSQL)."""
        return self._listener is not None and self._listener.live

    @property
    def service(self) -> ServiceContext:
        """What :mod:`pixelkiln.service` needs of this installation (once open)."""
        if self._service is None:
            raise RuntimeError("Kiln is not open; use 'async with Kiln(settings)'")
        return self._service

    async def __aenter__(self) -> Kiln:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Check the storage, open the database (migrating it), wire the event bus, build
        the backends. A storage that cannot be used (bucket missing, credentials refused,
        endpoint down) is ConfigError, before anything else starts."""
        await asyncio.to_thread(self.storage.check)
        self.backends = describe_backends(self.settings.effective_backends())
        url = self.settings.storage.resolved_database_url()
        self._db = await asyncio.to_thread(Database.open, url)
        self.bus.bind(asyncio.get_running_loop())
        self._db.on_commit = self.bus.publish
        self._service = ServiceContext(
            settings=self.settings,
            db=self._db,
            storage=self.storage,
            backends=BackendCatalog.of(self.backends),
            keys=self.keys,
            bus=self.bus,
            schedulers=self.schedulers,
        )
        if self._db.dialect == "postgresql":
            self._listen(url)
        if self._build_engine:
            self.engine()  # a backend that cannot be built fails here, before any submit

    def _listen(self, url: str) -> None:
        """Hear other processes' work and events (LISTEN/NOTIFY) instead of waiting for polls."""
        self.wakeups = Wakeups(
            asyncio.get_running_loop(),
            self.schedulers.wake,
            self.bus,
            slots_freed=self.schedulers.slots_freed,
            state_changed=self.schedulers.state_changed,
        )
        kinds = KINDS if self._hear_events else tuple(k for k in KINDS if k != EVENTS)
        self._listener = Listener(url, self.wakeups.heard, self.wakeups.live, kinds=kinds)
        self._listener.start()

    def engine(self) -> Engine:
        """The built backends of this process, on the running loop (built on first use)."""
        if self._engine is None:
            self._engine = Engine(
                self.settings,
                db=self.db,
                storage=self.storage,
                keys=self.keys,
                http=self._http,
                backends=self._given_backends,
            )
        return self._engine

    async def aclose(self) -> None:
        """Stop the scheduler if running, release backends, the HTTP client, the DB and the
        storage's connections."""
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None
            self._service = None
        self.storage.close()  # its connections (a bucket's); it opens again on use

    async def submit(
        self,
        spec: BatchSpec,
        *,
        source: str = "api",
        source_name: str = "",
        base_dir: Path | None = None,
        where: Callable[[int], str] | None = None,
        owner_id: int | None = None,
    ) -> int:
        """Validate, store and queue a batch; returns its id. SpecError lists every problem.

        Input paths are files on this machine (relative ones to ``base_dir``);
        with ``owner_id`` the batch is that user's, charged to them like theirs.
        """
        sub = Submission(
            spec,
            source=source,
            source_name=source_name,
            where=where,
            server_paths=True,
            base_dir=base_dir,
            owner_id=owner_id,
        )
        return (await submit(self.service, LOCAL, sub)).batch_id

    def new_scheduler(self, only_batches: Sequence[int] | None = None) -> Scheduler:
        """A scheduler over this installation (all batches, or only the given ones).

        It stops with SchedulerStalledError rather than hang when its writes keep
        failing for ``[scheduler] stall_seconds``.
        """
        self.schedulers.discard(self.scheduler)
        self.scheduler = self.engine().scheduler(only_batches, stop_when_stalled=True)
        self.scheduler.listening = lambda: self.listening  # announced work: rarer idle looks
        self.schedulers.add(self.scheduler)
        return self.scheduler

    async def run_until_done(self, batch_ids: Sequence[int] | None = None) -> None:
        """Run the given batches (default: every unfinished one) until each has ended.

        Raises SchedulerStalledError when the scheduler cannot go on.
        """
        await self.new_scheduler(batch_ids).run(until_done=True)

    async def cancel(self, batch_id: int, owner_id: int | None = None) -> Batch:
        """Cancel a batch: pending tasks at once, this process's running ones now too.

        With ``owner_id`` the cancel is done as that user, who reaches only their
        own batches unless they are an admin (NotFoundError otherwise).
        """
        caller = LOCAL if owner_id is None else Caller(await self.db.aread(get_user, owner_id))
        return await cancel(self.service, caller, batch_id)
