"""The one place a scheduler is put together, for every face that runs tasks.

``kiln run`` (through :class:`pixelkiln.app.Kiln`), ``kiln serve`` (its
scheduler thread) and, next, ``kiln worker`` all build their scheduler here,
so the backends it runs on, their fallback chains, the user keys, the limits
an admin stored and the supervision rules are the same everywhere.

An :class:`Engine` owns the built backends (server pools, health probes) and
the HTTP client they share. Build it on the event loop that will run the
scheduler: pools and clients belong to one loop. The API side never needs
one: what it knows of backends comes from
:func:`pixelkiln.backends.describe_backends`.

>>> engine = Engine(settings, db=db, storage=storage, keys=keys)   # doctest: +SKIP
>>> scheduler = engine.scheduler([batch_id], stop_when_stalled=True)
>>> await scheduler.run(until_done=True)
>>> await engine.aclose()
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import httpx

from pixelkiln.backends import Backend, BackendDeps, build_backends
from pixelkiln.backends.transport import shared_client
from pixelkiln.config import BackendSettings, Settings
from pixelkiln.db.database import Database
from pixelkiln.engine.credentials import UserKeys
from pixelkiln.engine.scheduler import Scheduler
from pixelkiln.engine.supervisor import Companion
from pixelkiln.engine.webhooks import Deliverer
from pixelkiln.exceptions import ConfigError
from pixelkiln.keybox import KeyBox
from pixelkiln.storage import Storage

#: connections the shared HTTP client keeps open at most, over every backend
MAX_CONNECTIONS = 1000


class Engine:
    """Backends built on the running loop, and the schedulers that run tasks on them.

    ``only`` names the configured backends to build (``kiln worker --backends``):
    its schedulers claim tasks of those alone and leave the others to other
    processes. ConfigError for a name that is not configured.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        storage: Storage,
        keys: KeyBox,
        http: httpx.AsyncClient | None = None,
        backends: Mapping[str, Backend] | None = None,
        only: Collection[str] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.keys = keys
        self._own_http = http is None and backends is None
        self.http = http
        if backends is None:
            chosen = chosen_backends(settings, only)  # before anything is opened
            if self.http is None:
                # httpx's client over aiohttp: a third of the default's CPU per request
                self.http = shared_client(max_connections=MAX_CONNECTIONS)
            backends = build_backends(chosen, BackendDeps(http=self.http))
        elif only is not None:
            backends = {name: b for name, b in backends.items() if name in only}
        self.backends = dict(backends)
        #: POSTs batch ends to their webhooks beside every scheduler built here
        self.deliverer = Deliverer(db, settings)

    def scheduler(
        self,
        only_batches: Iterable[int] | None = None,
        *,
        concurrency: int | None = None,
        backend_limits: Mapping[str, int] | None = None,
        stop_when_stalled: bool = False,
        follow_settings: bool = False,
        companions: Sequence[Companion] = (),
    ) -> Scheduler:
        """A scheduler over these backends.

        ``concurrency`` and ``backend_limits`` (per-URL) override the configured
        limits (what an admin stored); ``stop_when_stalled`` ends a run that can
        make no progress (``kiln run``) instead of retrying for ever (``kiln
        serve``, which also sets ``follow_settings`` to apply limits an admin
        changes while it runs). ``companions`` run beside it, after the webhook
        deliverer (a server's: :func:`pixelkiln.engine.housekeeping.server_companions`).
        """
        scheduler = Scheduler(
            db=self.db,
            storage=self.storage,
            backends=self.backends,
            settings=self.settings.scheduler,
            only_batches=only_batches,
            user_keys=UserKeys(self.db, self.keys),
            chains={name: self.settings.fallback_chain(name) for name in self.backends},
            stop_when_stalled=stop_when_stalled,
            follow_settings=follow_settings,
            companions=(self.deliverer, *companions),
        )
        if concurrency is not None:
            scheduler.set_concurrency(concurrency)
        for name, per_url in (backend_limits or {}).items():
            scheduler.set_backend_concurrency(name, per_url)
        return scheduler

    async def aclose(self) -> None:
        """Stop the backends' probes and close the HTTP clients this engine opened."""
        for backend in self.backends.values():
            await backend.aclose()
        await self.deliverer.aclose()
        if self._own_http and self.http is not None:
            await self.http.aclose()
        self.http = None


def chosen_backends(settings: Settings, only: Collection[str] | None) -> list[BackendSettings]:
    """The configured backends named in ``only`` (all without it); ConfigError for a name
    that is not configured."""
    configured = settings.effective_backends()
    if only is None:
        return configured
    names = [b.name for b in configured]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown backend(s) {', '.join(map(repr, unknown))}; configured: {', '.join(names)}"
        )
    if not only:
        raise ConfigError("name at least one backend")
    return [b for b in configured if b.name in only]
