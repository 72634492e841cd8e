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
from pixelkiln.db.batches import cancel_batch, create_batch
from pixelkiln.db.database import Database
from pixelkiln.engine.assembly import Engine
from pixelkiln.engine.bus import EventBus
from pixelkiln.engine.intake import prepare_batch
from pixelkiln.engine.scheduler import Scheduler
from pixelkiln.keybox import KeyBox
from pixelkiln.models import Batch
from pixelkiln.specs import BatchSpec
from pixelkiln.storage import Storage


class Kiln:
    """An open pixelkiln installation. Use ``async with Kiln(settings) as kiln``.

    ``backends`` replaces the configured ones with ready-made instances (tests,
    embedding); ``engine=False`` builds none when opening, for a process whose
    tasks run elsewhere (the API: its scheduler thread builds its own).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        backends: Mapping[str, Backend] | None = None,
        engine: bool = True,
    ) -> None:
        self.settings = settings
        self.storage = Storage(settings.storage.data_dir)
        self.bus = EventBus()
        self.keys = KeyBox(settings)  #: users' own provider keys, encrypted at rest
        #: the configured backends, what each is and can do (nothing built: see ``engine``)
        self.backends: dict[str, BackendInfo] = {}
        self.scheduler: Scheduler | None = None
        self._http = http
        self._given_backends = backends
        self._build_engine = engine
        self._engine: Engine | None = None
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("Kiln is not open; use 'async with Kiln(settings)'")
        return self._db

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
        """Open the database (migrating it), wire the event bus, build the backends."""
        self.backends = describe_backends(self.settings.effective_backends())
        url = self.settings.storage.resolved_database_url()
        self._db = await asyncio.to_thread(Database.open, url)
        self.bus.bind(asyncio.get_running_loop())
        self._db.on_commit = self.bus.publish
        if self._build_engine:
            self.engine()  # a backend that cannot be built fails here, before any submit

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
        """Stop the scheduler if running, release backends, the HTTP client and the DB."""
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None

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
        """Validate, store and queue a batch; returns its id. SpecError lists every problem."""
        new = await asyncio.to_thread(
            prepare_batch,
            spec,
            storage=self.storage,
            default_backend=self.settings.default_backend(),
            known_backends=list(self.backends),
            max_attempts=self.settings.scheduler.max_attempts,
            source=source,
            source_name=source_name,
            base_dir=base_dir,
            where=where,
            owner_id=owner_id,
        )
        batch_id = await self.db.awrite(create_batch, new)
        if self.scheduler is not None:
            self.scheduler.wake()
        return batch_id

    def new_scheduler(self, only_batches: Sequence[int] | None = None) -> Scheduler:
        """A scheduler over this installation (all batches, or only the given ones).

        It stops with SchedulerStalledError rather than hang when its writes keep
        failing for ``[scheduler] stall_seconds``.
        """
        self.scheduler = self.engine().scheduler(only_batches, stop_when_stalled=True)
        return self.scheduler

    async def run_until_done(self, batch_ids: Sequence[int] | None = None) -> None:
        """Run the given batches (default: every unfinished one) until each has ended.

        Raises SchedulerStalledError when the scheduler cannot go on.
        """
        await self.new_scheduler(batch_ids).run(until_done=True)

    async def cancel(self, batch_id: int, owner_id: int | None = None) -> Batch:
        """Cancel a batch: pending tasks at once, this process's running ones now too."""
        batch = await self.db.awrite(cancel_batch, batch_id, owner_id)
        if self.scheduler is not None:
            self.scheduler.cancel_batch(batch_id)
        return batch
