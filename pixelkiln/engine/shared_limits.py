"""Limits and circuit-breaker state that hold across every process on one database.

``[scheduler] shared_limits = true`` (the default): a scheduler whose backends run on
server pools shares with every other process on its database

- **servers' slots**: a request takes one of its server's slot rows (db.slots) just
  before it goes out and gives it back when it ends, so N workers together never send
  a server more than its ``concurrency``. A server whose every slot the others hold is
  passed over for :data:`RECHECK` seconds (or until :meth:`SharedLimits.changed`);
- **rpm**: the start of each request is reserved in the backend's bucket row in the
  same write (a GCRA bucket, as the in-memory limiter it replaces);
- **the global concurrency an admin stored** (db.settings_store): each task takes a
  slot of the pseudo server ``"*"`` before its attempt starts, so it caps tasks
  generating across all processes; each process's own cap still holds locally;
- **servers found down**: a circuit a pool opens is recorded (db.server_health); every
  :data:`REFRESH` seconds each scheduler reads the table and opens its own circuit for
  a server another found down, so one discovery saves the others the timeouts.

Cost: every take and give-back of one event-loop turn goes to the writer as one
:func:`~pixelkiln.db.slots.exchange` (as engine.starts groups start marks), nothing
waits on the event loop, and held slots are renewed with the tasks' leases by one
statement; a killed process's slots come back when that lease lapses. With the
setting off, or with no backend on a server pool (the placeholder), nothing here runs.

>>> shared = SharedLimits.build(db, owner, backends, settings)   # doctest: +SKIP
>>> shared.attach()                  # pools take slots in the database from now on
>>> await shared.refresh(time.time())   # in the scheduler's housekeeping
>>> await shared.close()             # detached; every slot of this owner given back
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import Connection

from pixelkiln.backends.base import Backend
from pixelkiln.backends.pool import Server, ServerPool, pool_of
from pixelkiln.config import SchedulerSettings
from pixelkiln.db.database import Database
from pixelkiln.db.server_health import ServerDown, record_down, record_up, servers_down
from pixelkiln.db.settings_store import CONCURRENCY, get_setting
from pixelkiln.db.slots import (
    GLOBAL,
    Bucket,
    Granted,
    SlotWant,
    exchange,
    release_holders,
    renew_slots,
)

__all__ = ["RECHECK", "REFRESH", "SharedLimits", "SlotExchange", "server_key"]

log = logging.getLogger("pixelkiln.engine")

#: seconds a server (or the global cap) whose every slot others hold is passed over
RECHECK = 0.1
#: seconds between reads of the servers found down and the stored global concurrency
REFRESH = 1.5
#: seconds a slot given back may wait for the next take's write (one write per request
#: under load instead of two); the others look again every RECHECK seconds anyway
RELEASE_DELAY = 0.02
#: longest key of a server_slots / server_health row
MAX_KEY = 255


def server_key(backend: str, url: str) -> str:
    """The row key of a server: ``"<backend>|<url>"`` (``url`` without credentials); a key
    too long for the column ends in a digest of the URL instead."""
    key = f"{backend}|{url}"
    if len(key) <= MAX_KEY:
        return key
    return f"{backend[:150]}|sha256:{hashlib.sha256(url.encode()).hexdigest()}"


@dataclass
class _Take:
    key: str
    limit: int
    bucket: Bucket | None
    future: asyncio.Future[float | None]


class SlotExchange:
    """Takes and gives back slots in the database, every change of one turn in one write.

    The first take of a turn schedules a flush for the end of the turn (the others of that
    turn join it); the writer's answer settles the waiting takes from one callback. A slot
    given back waits up to :data:`RELEASE_DELAY` for the next take's write (releases go
    first in it, so this process never waits for itself). A take whose caller gave up
    meanwhile has its slot given back.
    """

    def __init__(
        self,
        db: Database,
        holder: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.holder = holder
        self._lease = lease_seconds
        self._clock = clock
        self._takes: list[_Take] = []
        self._releases: list[tuple[str, int]] = []
        self._held: dict[str, list[int]] = {}  # key → slot numbers held now
        self._ensured: dict[str, int] = {}  # key → rows known to exist (0 … n-1)
        self._writes: set[Future[dict[str, Granted]]] = set()
        self._soon = False  # a flush is scheduled for the end of this turn
        self._later: asyncio.TimerHandle | None = None  # a flush of releases is scheduled
        self.used = False  #: any slot was ever taken: there may be rows to give back

    async def take(self, key: str, limit: int, bucket: Bucket | None = None) -> float | None:
        """One of ``key``'s ``limit`` slots: seconds to wait before starting (rpm), or None
        when every one is held elsewhere. Raises what the write raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float | None] = loop.create_future()
        self._takes.append(_Take(key, max(1, limit), bucket, future))
        if not self._soon:
            self._soon = True
            loop.call_soon(self._flush, loop)
        return await future

    def give_back(self, key: str) -> None:
        """Free one slot of ``key`` this process holds (any one: they are alike)."""
        held = self._held.get(key)
        if not held:
            return
        self._releases.append((key, held.pop()))
        if self._later is None:
            loop = asyncio.get_running_loop()
            self._later = loop.call_later(RELEASE_DELAY, self._flush_later, loop)

    def holding(self) -> bool:
        """Whether this process may hold slots now (held, or given back but not yet written)."""
        return bool(self._releases) or any(self._held.values())

    def held(self, key: str) -> int:
        """Slots of ``key`` held now."""
        return len(self._held.get(key, ()))

    async def settled(self) -> None:
        """Send the slots given back now, and wait until every write has been answered."""
        if self._later is not None:
            self._later.cancel()
            self._flush_later(asyncio.get_running_loop())
        while self._writes:
            await asyncio.gather(
                *(asyncio.wrap_future(w) for w in list(self._writes)), return_exceptions=True
            )
            await asyncio.sleep(0)  # their answers are settled in a callback

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._later = None
        self._flush(loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the changes waiting now as one write; never raises."""
        self._soon = False
        takes, self._takes = [t for t in self._takes if not t.future.done()], []
        releases, self._releases = self._releases, []
        if not takes and not releases:
            return
        wants: dict[str, SlotWant] = {}
        for t in takes:
            old = wants.get(t.key)
            count = old.count + 1 if old else 1
            limit = max(old.limit, t.limit) if old else t.limit
            wants[t.key] = SlotWant(t.key, limit, count, t.bucket)
        ensure = {k: w.limit for k, w in wants.items() if w.limit > self._ensured.get(k, 0)}
        until = self._clock() + self._lease
        try:
            written = self._db.submit(
                exchange, self.holder, releases, list(wants.values()), until, ensure
            )
        except Exception as exc:  # the writer is gone: the takes fail with the reason
            self._answered(takes, releases, ensure, None, exc)
            return
        self.used = self.used or bool(takes)
        self._writes.add(written)

        def answered(done: Future[dict[str, Granted]]) -> None:  # in the writer thread
            if not loop.is_closed():  # else nobody waits any more
                loop.call_soon_threadsafe(self._settle_written, takes, releases, ensure, done)

        written.add_done_callback(answered)

    def _settle_written(
        self,
        takes: list[_Take],
        releases: list[tuple[str, int]],
        ensure: dict[str, int],
        written: Future[dict[str, Granted]],
    ) -> None:
        self._writes.discard(written)
        error = written.exception()
        self._answered(takes, releases, ensure, None if error else written.result(), error)

    def _answered(
        self,
        takes: list[_Take],
        releases: list[tuple[str, int]],
        ensure: dict[str, int],
        granted: dict[str, Granted] | None,
        error: BaseException | None,
    ) -> None:
        if granted is None:
            # not written: the slots given back are still held there; they go with the next
            self._releases = releases + self._releases
            for t in takes:
                if not t.future.done():
                    t.future.set_exception(error or RuntimeError("slot exchange failed"))
            return
        for key, n in ensure.items():
            self._ensured[key] = max(n, self._ensured.get(key, 0))
        grants = {k: list(zip(g.slots, g.delays, strict=True)) for k, g in granted.items()}
        for t in takes:
            given = grants.get(t.key)
            if not given:
                if not t.future.done():
                    t.future.set_result(None)
                continue
            slot, delay = given.pop(0)
            self._held.setdefault(t.key, []).append(slot)
            if t.future.done():  # its caller gave up meanwhile: nobody will give it back
                self.give_back(t.key)
            else:
                t.future.set_result(delay)


class _PoolShare:
    """One pool's side of :class:`SharedLimits` (the pool's ``shared``)."""

    recheck = RECHECK

    def __init__(self, limits: SharedLimits, backend: str, pool: ServerPool) -> None:
        self._limits = limits
        self._slots = limits.slots
        self.pool = pool
        self.keys = {id(s): server_key(backend, s.url) for s in pool.servers}
        self._bucket = (
            Bucket(backend, 60.0 / pool.rpm, max(1, pool.policy.rpm_burst)) if pool.rpm else None
        )

    async def take(self, server: Server) -> float | None:
        return await self._slots.take(self.keys[id(server)], server.limit, self._bucket)

    def give_back(self, server: Server) -> None:
        self._slots.give_back(self.keys[id(server)])
        # the slot just freed is one a request waiting here may take (the release goes
        # first in its write): no need to wait out the re-check
        server.full_until = 0.0

    def opened(self, server: Server, retry_in: float) -> None:
        self._limits.record_down(self.keys[id(server)], retry_in, server.last_error)

    def closed(self, server: Server) -> None:
        self._limits.record_up(self.keys[id(server)])


class SharedLimits:
    """A scheduler's limits held in the database; see the module docstring."""

    def __init__(
        self,
        db: Database,
        owner: str,
        backends: Mapping[str, Backend],
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.owner = owner
        self._clock = clock
        self.slots = SlotExchange(db, owner, lease_seconds, clock)
        self._shares = [
            _PoolShare(self, name, pool)
            for name, b in backends.items()
            if (pool := pool_of(b)) is not None
        ]
        #: the global concurrency an admin stored (None: none; each process's own cap only)
        self.global_limit: int | None = None
        self._global_tasks: set[int] = set()  # tasks holding a slot of "*"
        self._global_changed = asyncio.Event()
        self._next_refresh = 0.0

    @classmethod
    def build(
        cls,
        db: Database,
        owner: str,
        backends: Mapping[str, Backend],
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.time,
    ) -> SharedLimits | None:
        """The shared limits of a scheduler, or None: the setting is off, or no backend runs
        on a server pool (nothing to share)."""
        if not settings.shared_limits or not any(pool_of(b) for b in backends.values()):
            return None
        return cls(db, owner, backends, settings.lease_seconds, clock)

    # -- lifecycle ----------------------------------------------------------------------------

    def attach(self) -> None:
        """From now on the pools take their slots, pace rpm and record circuits here."""
        for share in self._shares:
            share.pool.shared = share

    async def close(self) -> None:
        """Detach from the pools; once the writes under way are answered, give back every
        slot this owner still holds."""
        for share in self._shares:
            if share.pool.shared is share:
                share.pool.shared = None
        await self.slots.settled()
        if self.slots.used:
            try:
                await self._db.awrite(release_holders, [self.owner])
            except Exception:
                log.exception("could not give back server slots; their leases will lapse")

    # -- the scheduler's calls ----------------------------------------------------------------

    async def renew(self, until: float) -> None:
        """Extend the lease of the slots held (with the tasks' leases)."""
        if self.slots.holding():
            await self._db.awrite(renew_slots, self.owner, until)

    async def forget(self, dead_owners: Collection[str]) -> None:
        """Free the slots of owners known dead (a killed process on this host)."""
        if dead_owners:
            await self._db.awrite(release_holders, dead_owners)

    async def refresh(self, now: float) -> None:
        """When due: servers others found down (or back), and the stored global cap."""
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH
        keys = [k for share in self._shares for k in share.keys.values()]
        downs, overall = await self._db.aread(_shared_state, keys)
        self._apply_health(downs)
        limit = overall if isinstance(overall, int) and overall > 0 else None
        if limit != self.global_limit:
            self.global_limit = limit
            self._wake_global()

    def changed(self) -> None:
        """Slots may have freed in another process (a wake-up, e.g. PostgreSQL NOTIFY):
        every waiter looks again now instead of at its next re-check."""
        for share in self._shares:
            share.pool.look_again()
        self._wake_global()

    async def take_global(self, task_id: int) -> None:
        """Before ``task_id``'s attempt starts: a slot of the global cap an admin stored
        (none stored: nothing to take); waits while every slot is held."""
        while (limit := self.global_limit) is not None:
            changed = self._global_changed
            if await self.slots.take(GLOBAL, limit) is not None:
                self._global_tasks.add(task_id)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK):
                    await changed.wait()

    def task_over(self, task_id: int) -> None:
        """``task_id`` stopped generating: its global slot, if any, is free again."""
        if task_id in self._global_tasks:
            self._global_tasks.discard(task_id)
            self.slots.give_back(GLOBAL)
            self._wake_global()

    # -- circuits -----------------------------------------------------------------------------

    def record_down(self, key: str, retry_in: float, error: str) -> None:
        """A pool here found server ``key`` down; it probes it again in ``retry_in`` s."""
        self._record(key, record_down, key, self._clock() + retry_in, error, self.owner)

    def record_up(self, key: str) -> None:
        """A pool here found server ``key`` back."""
        self._record(key, record_up, key)

    def _record(self, key: str, fn: Callable[..., None], *args: object) -> None:
        """Write a circuit change without waiting; a failure is logged (the others then
        find out by their own timeouts, as without sharing)."""
        try:
            written = self._db.submit(fn, *args)
        except Exception:
            log.exception("could not record the state of server %s", key)
            return
        written.add_done_callback(_log_failure(key))

    def _apply_health(self, downs: list[ServerDown]) -> None:
        found = {d.server: d for d in downs}
        now = self._clock()
        for share in self._shares:
            for server in share.pool.servers:
                down = found.get(share.keys[id(server)])
                if down is None:
                    share.pool.report_up(server)
                elif down.updated_by != self.owner and down.retry_at > now:
                    share.pool.report_down(server, down.retry_at - now, down.last_error)

    def _wake_global(self) -> None:
        event, self._global_changed = self._global_changed, asyncio.Event()
        event.set()


def _shared_state(conn: Connection, keys: list[str]) -> tuple[list[ServerDown], object]:
    """One read: the rows of servers found down among ``keys``, and the stored global cap."""
    return servers_down(conn, keys), get_setting(conn, CONCURRENCY)


def _log_failure(key: str) -> Callable[[Future[None]], None]:
    def done(written: Future[None]) -> None:
        error = written.exception()
        if error is not None:
            log.warning("could not record the state of server %s: %s", key, error)

    return done
