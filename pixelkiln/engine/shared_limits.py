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
statement. A take carries the start of the try it is for (the pool's ``about_to_send``
hook, an :class:`~pixelkiln.engine.starts.TryStart`): a slot granted with no rpm wait
marks it in the same write, so a request costs one write before it goes out, not two; a
grant whose caller was cancelled as it arrived gives the attempt back with the slot. A
killed process's slots come back when that lease lapses. With the setting off, or with
no backend on a server pool (the placeholder), nothing here runs.

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
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from pixelkiln.backends.base import Backend
from pixelkiln.backends.pool import Server, ServerPool, about_to_send, pool_of
from pixelkiln.config import SchedulerSettings
from pixelkiln.db.database import Database
from pixelkiln.db.notify import STATE_POLL
from pixelkiln.db.server_health import ServerDown, record_down, record_up, servers_down
from pixelkiln.db.settings_store import CONCURRENCY, get_setting
from pixelkiln.db.slots import (
    GLOBAL,
    Bucket,
    Granted,
    SlotWant,
    ensure_rows,
    exchange,
    release_holders,
    renew_slots,
)
from pixelkiln.engine.starts import TryStart

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
#: the longest back-off between slot writes while they keep failing
MAX_BACKOFF = 5.0


def server_key(url: str) -> str:
    """The row key of a server: its URL (without credentials), whichever backends send to
    it: two backends configured on one URL share its slots and its health, since the
    server's owner counts requests, not backends. A URL too long for the column is
    replaced by its digest."""
    if len(url) <= MAX_KEY:
        return url
    return f"sha256:{hashlib.sha256(url.encode()).hexdigest()}"


@dataclass
class _Take:
    key: str
    limit: int
    bucket: Bucket | None
    future: asyncio.Future[float | None]
    start: TryStart | None = None  #: the try it is for: marked with a grant without rpm wait
    marked_at: float | None = None  #: when the grant marked ``start`` (an attempt spent)


class SlotExchange:
    """Takes and gives back slots in the database, every change of one turn in one write.

    The first take of a turn schedules a flush for the end of the turn (the others of that
    turn join it); the writer's answer settles the waiting takes from one callback. A slot
    given back waits up to :data:`RELEASE_DELAY` for the next take's write (releases go
    first in it, so this process never waits for itself). A take whose caller gave up
    meanwhile has its slot given back (and the attempt its grant spent, with it).

    A write that fails (the database away, a deadlock) refuses its takes, as if the slots
    were held (the callers look again after :meth:`retry_in`, backing off while writes keep
    failing), and its give-backs are sent again after the same back-off.
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
        self._unstarts: dict[int, float] = {}  # task → its start to undo, sent with releases
        self._held: dict[str, list[int]] = {}  # key → slot numbers held now
        self._ensured: dict[str, int] = {}  # key → rows known to exist (0 … n-1)
        self._buckets: set[str] = set()  # rpm bucket rows known to exist
        self._writes: set[Future[Any]] = set()
        self._soon = False  # a flush is scheduled for the end of this turn
        self._later: asyncio.TimerHandle | None = None  # a flush of releases is scheduled
        self._rest: dict[str, float] = {}  # key → no start may be reserved before (rpm)
        self._failures = 0  # writes failed in a row
        self._backoff_until = 0.0  # after failed writes: no take before this
        self.used = False  #: any slot was ever taken: there may be rows to give back

    async def take(
        self, key: str, limit: int, bucket: Bucket | None = None, start: TryStart | None = None
    ) -> float | None:
        """One of ``key``'s ``limit`` slots: seconds to wait before starting (rpm), or None
        when it cannot be had now (every one held elsewhere, another process waits for one
        first, rpm, or the write failed): look again after :meth:`retry_in`.

        ``start``: the try the slot is for; granted with no rpm wait (0.0), it is marked
        in the same write (``start.taken_with`` says how)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float | None] = loop.create_future()
        take = _Take(key, max(1, limit), bucket, future, start)
        self._takes.append(take)
        if not self._soon:
            self._soon = True
            loop.call_soon(self._flush, loop)
        try:
            return await future
        except asyncio.CancelledError:
            # granted in the very turn its caller was cancelled (a timeout, a cancel): the
            # answer arrived but nobody will use or give back the slot, so give it back here
            if future.done() and not future.cancelled() and future.exception() is None:
                if future.result() is not None:
                    self._abandon(take)
            raise

    def _abandon(self, take: _Take) -> None:
        """A slot granted to a caller that gave up: given back, and the attempt its grant
        spent (the request never went out) with it, in the same write."""
        self.give_back(take.key)
        if take.start is not None and take.marked_at is not None:
            self._unstarts[take.start.task_id] = take.marked_at
            take.start.taken_with, take.marked_at = None, None

    def retry_in(self, key: str) -> float:
        """Seconds before a take of ``key`` refused now is worth asking again."""
        now = self._clock()
        return max(RECHECK, self._rest.get(key, 0.0) - now, self._backoff_until - now)

    def give_back(self, key: str) -> None:
        """Free one slot of ``key`` this process holds (any one: they are alike)."""
        held = self._held.get(key)
        if not held:
            return
        self._releases.append((key, held.pop()))
        self._flush_in(RELEASE_DELAY)

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

    def _flush_in(self, seconds: float) -> None:
        if self._later is None:
            loop = asyncio.get_running_loop()
            self._later = loop.call_later(seconds, self._flush_later, loop)

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._later = None
        self._flush(loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the changes waiting now as one write; never raises."""
        self._soon = False
        takes, self._takes = [t for t in self._takes if not t.future.done()], []
        releases, self._releases = self._releases, []
        unstarts, self._unstarts = self._unstarts, {}
        if not takes and not releases and not unstarts:
            return
        if self._clock() < self._backoff_until:  # the database keeps failing: not yet
            self._answered(takes, [], {}, None, None)
            self._releases = releases + self._releases
            self._unstarts = unstarts | self._unstarts
            self._flush_in(self._backoff_until - self._clock())
            return
        wants: dict[tuple[str, str | None], SlotWant] = {}
        for t in takes:  # the i-th slot granted to a want is its i-th take's (_answered)
            name = t.bucket.name if t.bucket else None
            old = wants.get((t.key, name))
            count = old.count + 1 if old else 1
            limit = max(old.limit, t.limit) if old else t.limit
            starts = (*(old.starts if old else ()), t.start.task_id if t.start else None)
            paced = (old is not None and old.paced) or (t.start is not None and t.start.paced)
            held = self.held(t.key)
            wants[(t.key, name)] = SlotWant(t.key, limit, count, t.bucket, held, starts, paced)
        ensure = self._ensure(wants.values())
        until = self._clock() + self._lease
        added: Future[None] | None = None
        try:
            if ensure is not None:  # a write of its own, before the first take (db.slots)
                added = self._db.submit(ensure_rows, *ensure)
                self._writes.add(added)
            written = self._db.submit(
                exchange, self.holder, releases, list(wants.values()), until, unstarts
            )
        except Exception as exc:  # the writer is gone: refused, as by a failed write
            self._answered(takes, releases, unstarts, None, exc)
            return
        self.used = self.used or bool(takes)
        self._writes.add(written)

        def answered(done: Future[Any]) -> None:  # in the writer thread
            if not loop.is_closed():  # else nobody waits any more
                ensured = None if added is None or added.exception() is not None else ensure
                loop.call_soon_threadsafe(
                    self._settle_written, takes, releases, unstarts, ensured, done
                )

        written.add_done_callback(answered)

    def _ensure(self, wants: Iterable[SlotWant]) -> tuple[dict[str, int], list[str]] | None:
        """The rows the takes of ``wants`` may lack (first take of a server), or None."""
        slots = {w.key: w.limit for w in wants if w.limit > self._ensured.get(w.key, 0)}
        buckets = sorted({w.bucket.name for w in wants if w.bucket} - self._buckets)
        return (slots, buckets) if slots or buckets else None

    def _settle_written(
        self,
        takes: list[_Take],
        releases: list[tuple[str, int]],
        unstarts: dict[int, float],
        ensure: tuple[dict[str, int], list[str]] | None,
        written: Future[dict[tuple[str, str | None], Granted]],
    ) -> None:
        self._writes = {w for w in self._writes if not w.done()}
        error = written.exception()
        if error is None and ensure is not None:
            slots, buckets = ensure
            for key, n in slots.items():
                self._ensured[key] = max(n, self._ensured.get(key, 0))
            self._buckets.update(buckets)
        self._answered(takes, releases, unstarts, None if error else written.result(), error)

    def _answered(
        self,
        takes: list[_Take],
        releases: list[tuple[str, int]],
        unstarts: dict[int, float],
        granted: dict[tuple[str, str | None], Granted] | None,
        error: BaseException | None,
    ) -> None:
        if granted is None:
            if error is not None:
                self._failed(error, releases, unstarts)
            for t in takes:  # refused: they look again after retry_in
                if not t.future.done():
                    t.future.set_result(None)
            return
        self._failures = 0
        now = self._clock()
        grants = {
            k: list(zip(g.slots, g.delays, g.marks or [None] * len(g.slots), strict=True))
            for k, g in granted.items()
        }
        for (key, _), g in granted.items():
            if g.wait > 0:
                self._rest[key] = now + g.wait
        for t in takes:
            given = grants.get((t.key, t.bucket.name if t.bucket else None))
            if not given:
                if not t.future.done():
                    t.future.set_result(None)
                continue
            slot, delay, mark = given.pop(0)
            self._held.setdefault(t.key, []).append(slot)
            if mark is not None and t.start is not None:  # its start marked in that write
                t.start.taken_with = mark
                t.marked_at = granted[(t.key, t.bucket.name if t.bucket else None)].at
            if t.future.done():  # its caller gave up meanwhile: nobody will give it back
                self._abandon(t)
            else:
                t.future.set_result(delay)

    def _failed(
        self, error: BaseException, releases: list[tuple[str, int]], unstarts: dict[int, float]
    ) -> None:
        """A write failed: back off; the slots given back are still held there, so they
        are sent again after the back-off (renewals keep them alive meanwhile), and the
        attempts to give back with them."""
        self._failures += 1
        backoff = min(MAX_BACKOFF, RECHECK * 2**self._failures)
        self._backoff_until = self._clock() + backoff
        if self._failures == 1:
            log.warning("server slots: a write failed (%s); backing off", error)
        self._releases = releases + self._releases
        self._unstarts = unstarts | self._unstarts
        if self._releases or self._unstarts:
            self._flush_in(backoff)


class _PoolShare:
    """One pool's side of :class:`SharedLimits` (the pool's ``shared``)."""

    def __init__(self, limits: SharedLimits, backend: str, pool: ServerPool) -> None:
        self._limits = limits
        self._slots = limits.slots
        self.pool = pool
        self.keys = {id(s): server_key(s.url) for s in pool.servers}
        self._bucket = (
            Bucket(backend, 60.0 / pool.rpm, max(1, pool.policy.rpm_burst)) if pool.rpm else None
        )

    async def take(self, server: Server) -> float | None:
        # the try this request is for (engine.sending's hook, in the task's context): a
        # slot granted without rpm wait marks its start in the same write
        hook = about_to_send.get()
        start = hook if isinstance(hook, TryStart) and hook.open else None
        return await self._slots.take(self.keys[id(server)], server.limit, self._bucket, start)

    def retry_in(self, server: Server) -> float:
        return self._slots.retry_in(self.keys[id(server)])

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

    async def refresh(self, now: float, *, announced: bool = False) -> None:
        """When due: servers others found down (or back), and the stored global cap.

        ``announced``: changes to them are announced to this process (PostgreSQL
        LISTEN/NOTIFY, db.notify.STATE), which calls :meth:`refresh_soon`; they are then
        read by themselves only every STATE_POLL seconds instead of every REFRESH.
        """
        if now < self._next_refresh:
            return
        self._next_refresh = now + (STATE_POLL if announced else REFRESH)
        keys = [k for share in self._shares for k in share.keys.values()]
        downs, overall = await self._db.aread(_shared_state, keys)
        self._apply_health(downs)
        limit = overall if isinstance(overall, int) and overall > 0 else None
        if limit != self.global_limit:
            self.global_limit = limit
            self._wake_global()

    def refresh_soon(self) -> None:
        """Another process changed what :meth:`refresh` reads: it reads at its next call."""
        self._next_refresh = 0.0

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
                async with asyncio.timeout(self.slots.retry_in(GLOBAL)):
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
        """Another process's word that a server is down makes this one look now (a probe,
        or one trial request), not skip it until that process's ``retry_at``: one worker
        with a bad link must not take a healthy server away from the others. A server that
        answered here since it was found down is not looked at again on that word."""
        found = {d.server: d for d in downs}
        for share in self._shares:
            for server in share.pool.servers:
                down = found.get(share.keys[id(server)])
                if down is None:
                    share.pool.report_up(server)
                elif down.updated_by != self.owner and server.ok_at < down.down_since:
                    share.pool.report_down(server, 0.0, down.last_error)

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
