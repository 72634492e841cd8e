"""Server pools: many URLs behind one backend, with health, failover and rate limits.

Every HTTP backend sends its requests through a :class:`ServerPool`. The pool
keeps one :class:`Server` per URL and decides, per request, where it goes:

* **the earliest finish.** A request goes to the healthy server that will finish
  it first. While more work waits than can be counted (the database still had
  tasks at the scheduler's last claim), that is the fastest server with a free
  slot (``concurrency`` per URL): every slot is kept busy, and a slow server never
  holds up the others, as round robin would. Near the end of the work (``backlog``:
  only the scheduler's ready queue is left) it may be a busy server: a request
  does not start on a slow server when a fast one will be free soon enough to
  finish it, and the rest, sooner (:func:`earliest_finish`, from each server's
  measured latency and the start times of its requests in flight).
* **circuit breaker.** ``failure_threshold`` consecutive failures (connection
  errors, timeouts, 5xx, unreadable answers) open a server's circuit; a refused
  connection opens it at once. An open server gets no work. After
  ``open_seconds`` (growing 1.5× up to ``max_open_seconds`` while it stays down) a
  background probe calls the backend's health check: success closes the
  circuit, failure keeps it open.
* **failover.** A request that fails on one server for a server reason is sent
  to another healthy server in the same :meth:`ServerPool.run` call, so a dying
  server costs the task at most one attempt. When every server's circuit is
  open, :class:`NoServerAvailableError` tells the scheduler to wait without
  spending an attempt.
* **first come, first served.** Calls that had to wait for a slot (every one busy, or
  held by other processes) get slots in the order they began to wait: a call that
  arrives later does not take a slot an earlier one can use, even when it happens to
  look first. The scheduler claims tasks in fair-share order (db.fair), so the order a
  process sends them in is that order too: a user's task claimed while every slot was
  busy is not passed over, turn after turn, by tasks claimed after it.
* **429.** ``Retry-After`` (or ``default_retry_after``) cools that server down;
  the request waits for a server (up to ``max_rate_limit_wait`` seconds) instead
  of failing the task.
* **rpm.** Request starts across all servers of the backend are spaced to
  ``rpm`` per minute (a GCRA token bucket, burst ``rpm_burst``).
* **adaptive concurrency** (``adaptive_concurrency = true``): a 429 or timeout
  halves that server's slot limit; ``adaptive_raise_after`` successes in a row
  give one slot back, up to ``concurrency``.
* **shared with other processes** (:attr:`ServerPool.shared`, set by
  engine.shared_limits): a slot taken here is also taken in the database, so every
  process on it together stays within a server's slots; a server whose slots the
  others hold is passed over for a short while; ``rpm`` is paced there too; a circuit
  opened here is recorded for the others, and one they found down is opened here
  (:meth:`ServerPool.report_down`).

The policy numbers come from the backend's ``options``::

    [[backends]]
    name = "sd"
    type = "sdwebui"
    urls = ["http://gpu1:7860", "http://gpu2:7860"]
    concurrency = 2
    options = { failure_threshold = 3, open_seconds = 5 }
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from pixelkiln.backends.http import ServerDownError, redact_url
from pixelkiln.backends.policy import PoolPolicy, RateLimiter
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    NoServerAvailableError,
    RateLimitedError,
    RejectedInputError,
    ServerError,
)

__all__ = [
    "CircuitState",
    "HealthCheck",
    "PoolPolicy",
    "RateLimiter",
    "Server",
    "ServerPool",
    "SharedSlots",
    "about_to_send",
]

T = TypeVar("T")
#: raises a BackendError when the server at the URL is unhealthy
HealthCheck = Callable[[str], Awaitable[object]]

logger = logging.getLogger(__name__)

#: seconds a call that leaves a free slot to an earlier waiting call looks again by
#: itself at most (it is woken when that call takes the slot or gives up anyway)
OWED_LOOK = 0.5

#: awaited just before a request goes out, once the pool holds a server slot for it (and
#: any rpm wait is over); set per task by the scheduler (engine.sending), which spends the
#: task's attempt and starts its timeout then, so waiting for a slot costs neither. With
#: shared limits the slot take reads it too, and may mark the start in its own write
#: (engine.shared_limits); the hook then only starts the timeout
about_to_send: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "pixelkiln_about_to_send", default=None
)

#: failures that say something about the server, so they move the breaker and fail over
SERVER_FAILURES = (BackendUnavailableError, BackendTimeoutError, ServerError)
#: weight of the newest sample in a server's latency average
LATENCY_EWMA = 0.3
#: factor by which the wait between probes of a server that stays down grows
OPEN_GROWTH = 1.5


class CircuitState(StrEnum):
    """Whether a server gets work."""

    CLOSED = "closed"  #: healthy: gets work
    OPEN = "open"  #: failing: no work until a probe succeeds
    HALF_OPEN = "half_open"  #: one probe (or, without health checks, one request) in flight


@dataclass(eq=False)
class Server:
    """One URL of a pool and what the pool knows about it."""

    url: str  #: base URL, without credentials
    capacity: int  #: configured slots (``concurrency``)
    limit: int  #: slots usable now (lower than capacity under adaptive concurrency)
    in_flight: int = 0  #: requests running on it now
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0  #: consecutive server failures
    open_for: float = 0.0  #: length of the current open period
    retry_at: float = 0.0  #: when an open server may be probed
    cooldown_until: float = 0.0  #: no requests before this (after a 429)
    latency: float | None = None  #: running average of successful request seconds
    successes: int = 0  #: successes since the slot limit last changed
    requests: int = 0  #: requests sent, in all
    failed: int = 0  #: server failures, in all
    rate_limited: int = 0  #: 429 answers, in all
    last_error: str = ""  #: the newest failure's message
    full_until: float = 0.0  #: other processes hold all its slots: passed over until then
    reported: bool = False  #: opened because another process found it down (report_down)
    #: wall-clock time of its latest success here (an answer, or a probe), to compare with
    #: another process's word that it is down
    ok_at: float = 0.0
    #: when its latest requests were sent (those still in flight are the newest ones)
    sent: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))

    def has_slot(self) -> bool:
        return self.in_flight < self.limit

    @property
    def up(self) -> bool:
        return self.state is CircuitState.CLOSED

    def resting_until(self) -> float:
        """No request before this: a 429's cooldown, or all its slots held elsewhere."""
        return max(self.cooldown_until, self.full_until)


@dataclass(eq=False)
class _Call:
    """One call of :meth:`ServerPool.run` choosing a server: its place in the pool's line."""

    tried: set[Server]  #: the servers that already failed it (it does not wait for those)


class SharedSlots(Protocol):
    """What a pool shares with the other processes on its database (engine.shared_limits)."""

    async def take(self, server: Server) -> float | None:
        """Take one of ``server``'s slots for every process; seconds to wait before the
        request starts (rpm), or None when it cannot be had now (the others hold them all,
        or want one first; rpm; the database failed)."""

    def retry_in(self, server: Server) -> float:
        """Seconds a server whose take was just refused is passed over."""

    def give_back(self, server: Server) -> None:
        """A request taken with :meth:`take` ended: its slot is free again."""

    def opened(self, server: Server, retry_in: float) -> None:
        """``server``'s circuit opened here; it is probed again in ``retry_in`` seconds."""

    def closed(self, server: Server) -> None:
        """``server``'s circuit closed here (it answered)."""


class ServerPool:
    """The servers of one backend; see the module docstring.

    >>> pool = ServerPool("sd", ["http://gpu1:7860"], concurrency=2, health=check)
    >>> images = await pool.run(lambda server: generate_on(server.url))
    """

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        *,
        concurrency: int = 1,
        rpm: int | None = None,
        policy: PoolPolicy | None = None,
        health: HealthCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ConfigError(f"backend '{name}': list at least one server in `urls`")
        self.name = name
        self.rpm = rpm  #: request starts per minute across all servers (None: no limit)
        self.policy = policy or PoolPolicy()
        self.servers = [
            Server(url=redact_url(u), capacity=concurrency, limit=concurrency) for u in urls
        ]
        self._health = health
        self._clock = clock
        self._limiter = RateLimiter(rpm, self.policy.rpm_burst, clock) if rpm else None
        self._changed = asyncio.Event()  # a slot freed or a circuit changed: for waiters
        self._opened = asyncio.Event()  # a circuit opened: for the prober alone
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        #: slots, rpm and circuits shared with other processes; None: this process alone
        self.shared: SharedSlots | None = None
        #: how many more requests wait to be sent behind those choosing a server now, when
        #: that is all the work there is (the scheduler tells: engine.dispatch); None, or a
        #: hook answering None: more than that, so every free slot is filled at once
        self.backlog: Callable[[], int | None] | None = None
        self._choosing = 0  # calls in _acquire now
        #: calls that had to wait for a slot, in the order they began to wait: a slot one
        #: of them can use is theirs before a later call's (first come, first served)
        self._line: list[_Call] = []

    @classmethod
    def from_settings(
        cls, settings: BackendSettings, health: HealthCheck | None, urls: Sequence[str] = ()
    ) -> ServerPool:
        """The pool a backend's settings describe (``urls`` overrides ``settings.urls``)."""
        return cls(
            settings.name,
            list(urls or settings.urls),
            concurrency=settings.concurrency,
            rpm=settings.rpm,
            policy=PoolPolicy.from_options(settings.options, settings.name),
            health=health,
        )

    # -- the public operation ------------------------------------------------------

    async def run(self, call: Callable[[Server], Awaitable[T]]) -> T:
        """Run ``call`` on a server, failing over to others; see the module docstring."""
        self._ensure_prober()
        tried: set[Server] = set()
        last: BackendError | None = None
        rate_limited = 0
        while True:
            server = await self._acquire(tried, last)
            try:
                return await self._call(server, call)
            except RateLimitedError as exc:
                rate_limited += 1
                if rate_limited > self.policy.max_rate_limit_retries:
                    raise
                last = exc
            except SERVER_FAILURES as exc:
                tried.add(server)
                last = exc
                logger.info(
                    "backend %s: %s failed (%s); trying another server",
                    self.name,
                    server.url,
                    type(exc).__name__,
                )

    def rate_below(self, seconds: float) -> float:
        """Requests per second that the servers up whose requests take less than
        ``seconds`` (measured) complete with every usable slot busy: Σ slots / latency.

        The scheduler claims tasks ahead for these alone (engine.dispatch): on unequal
        servers the backend's mean task time may be long while a fast server still
        frees a slot every few hundredths of a second."""
        return sum(
            s.limit / s.latency
            for s in self.servers
            if s.up and s.latency is not None and 0 < s.latency < seconds
        )

    def servers_up(self) -> int:
        """How many servers may take work now (circuit closed)."""
        return sum(s.up for s in self.servers)

    def set_concurrency(self, per_server: int) -> None:
        """Change every server's slots at run time (an admin's ``kiln concurrency``).

        Requests already running keep their slots; under adaptive concurrency a
        server that had shrunk stays as small and grows back by successes.
        """
        for server in self.servers:
            shrunk = server.limit < server.capacity
            server.capacity = max(1, per_server)
            server.limit = min(server.limit, server.capacity) if shrunk else server.capacity
        self._notify()

    def look_again(self) -> None:
        """Slots may have freed in other processes (engine.shared_limits): servers passed
        over because the others held every slot are tried again now."""
        for server in self.servers:
            server.full_until = 0.0
        self._notify()

    def describe(self) -> str:
        """One line for status displays: how many servers are up and why the others are not."""
        up = self.servers_up()
        down = [f"{s.url} ({s.last_error or s.state})" for s in self.servers if not s.up]
        text = f"backend '{self.name}': {up}/{len(self.servers)} servers up"
        return f"{text}; down: {', '.join(down)}" if down else text

    async def aclose(self) -> None:
        """Stop the background health probe."""
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None

    # -- choosing a server ---------------------------------------------------------

    async def _acquire(self, tried: set[Server], last: BackendError | None) -> Server:
        """Take a slot on the server that will finish first, waiting for slots, 429
        cooldowns and (near the end of the work) a fast server about to be free; calls
        that had to wait go first, in their order (:meth:`_owed`)."""
        self._choosing += 1
        call = _Call(tried)
        waiting_since: float | None = None  # since when it waits for a busy, faster server
        try:
            while True:
                now = self._clock()
                candidates = [s for s in self.servers if s not in tried and self._usable(s, now)]
                if not candidates:
                    raise self._nothing_left(last)
                free = [s for s in candidates if s.has_slot() and s.resting_until() <= now]
                mine = [s for s in free if not self._owed(s, call)]
                if mine:
                    server, wait = self._choose(mine, candidates, now)
                    if server is None:  # bounded: never past when a free one would finish it
                        waiting_since = now if waiting_since is None else waiting_since
                        server, wait = _wait_at_most(mine, waiting_since, now, wait)
                    if server is not None:
                        self._take(server)
                        if self.shared is None or await self._take_shared(server):
                            server.sent.append(self._clock())  # after any rpm wait
                            return server
                        self._wait_in_line(call)  # the others hold its slots: wait in turn
                        continue
                    self._leave_line(call)  # it waits for a faster server by choice
                else:
                    self._wait_in_line(call)
                    wait = self._cooldown_wait(candidates, now, last)
                    if free:  # left to earlier calls, which are woken for it
                        wait = OWED_LOOK if wait is None else min(wait, OWED_LOOK)
                await self._wait_change(wait)
        finally:
            self._choosing -= 1
            self._leave_line(call)

    def _owed(self, server: Server, call: _Call) -> bool:
        """Whether a call waiting before ``call`` could take ``server``: it is theirs."""
        for earlier in self._line:
            if earlier is call:
                return False
            if server not in earlier.tried:
                return True
        return False

    def _wait_in_line(self, call: _Call) -> None:
        if call not in self._line:
            self._line.append(call)

    def _leave_line(self, call: _Call) -> None:
        """A call got its slot (or gave up): the next in line may take one now."""
        if call in self._line:
            self._line.remove(call)
            self._notify()

    def _choose(
        self, free: list[Server], candidates: list[Server], now: float
    ) -> tuple[Server | None, float | None]:
        """The free server to take now, or None and how long to wait for a better one.

        The fastest free server, unless the work left is counted (its end is near):
        then :func:`earliest_finish` over the calls choosing now and those queued behind
        them may rather wait for a fast server that frees soon."""
        fastest = min(free, key=_preference)
        if fastest.latency is None:
            return fastest, None  # unknown speed: tried at once, as a new server should be
        backlog = None if self.backlog is None else self.backlog()
        if backlog is None:
            return fastest, None
        return earliest_finish(candidates, self._choosing + backlog, now)

    def _usable(self, server: Server, now: float) -> bool:
        if server.state is CircuitState.CLOSED:
            return True
        if self._health is not None:  # the prober alone decides when it comes back
            return False
        if server.state is CircuitState.OPEN and now >= server.retry_at:
            server.state = CircuitState.HALF_OPEN  # this request is the trial
            return True
        return server.state is CircuitState.HALF_OPEN and server.in_flight == 0

    def _take(self, server: Server) -> None:
        server.in_flight += 1
        server.requests += 1

    async def _take_shared(self, server: Server) -> bool:
        """The slot taken here taken for every process too, and the rpm wait over; False
        (the slot given back here) when the others hold every one of the server's slots."""
        assert self.shared is not None
        shared, delay = self.shared, None
        try:
            delay = await shared.take(server)
            if delay is not None and delay > 0:
                await asyncio.sleep(delay)
        except BaseException:
            if delay is not None:
                shared.give_back(server)
            self._untake(server)
            raise
        if delay is None:
            server.full_until = self._clock() + shared.retry_in(server)
            self._untake(server)
            return False
        return True

    def _untake(self, server: Server) -> None:
        server.in_flight -= 1
        server.requests -= 1
        self._notify()

    def _nothing_left(self, last: BackendError | None) -> BackendError:
        """The error for a call that has no server left to try."""
        if last is not None and any(s.up for s in self.servers):
            return last  # a server is up but already failed this call: one attempt spent
        down = ", ".join(f"{s.url}: {s.last_error or 'down'}" for s in self.servers)
        error = NoServerAvailableError(
            f"backend '{self.name}': every server is down ({down}); "
            "waiting for a health check to bring one back",
            server=",".join(s.url for s in self.servers),
        )
        error.__cause__ = last
        return error

    def _cooldown_wait(
        self, candidates: list[Server], now: float, last: BackendError | None
    ) -> float | None:
        """Seconds until a cooled-down server may take work (None: wait for a free slot)."""
        cooling = [s.resting_until() for s in candidates if s.resting_until() > now]
        if len(cooling) < len(candidates):
            return min(cooling) - now if cooling else None
        wait = min(cooling) - now
        if wait > self.policy.max_rate_limit_wait:
            error = RateLimitedError(
                f"backend '{self.name}': every server asked to wait ({wait:.0f}s)",
                server=",".join(s.url for s in candidates),
                retry_after=wait,
            )
            raise error from last
        return wait

    async def _wait_change(self, timeout: float | None) -> None:
        """Sleep until a slot frees, a circuit changes, or ``timeout`` passes."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- accounting ----------------------------------------------------------------

    async def _call(self, server: Server, call: Callable[[Server], Awaitable[T]]) -> T:
        """``call`` on ``server`` (slot already taken), recording how it went."""
        try:
            if self._limiter is not None and self.shared is None:  # else paced by the take
                await self._limiter.wait()
            sending = about_to_send.get()
            if sending is not None:  # the try starts now (engine.sending)
                await sending()
            started = self._clock()
            result = await call(server)
        except RejectedInputError:
            self._succeeded(server, None)  # the server answered sensibly
            raise
        except RateLimitedError as exc:
            self._rate_limited(server, exc)
            raise
        except SERVER_FAILURES as exc:
            self._failed(server, exc)
            raise
        else:
            self._succeeded(server, self._clock() - started)
            return result
        finally:
            server.in_flight -= 1
            if self.shared is not None:
                self.shared.give_back(server)
            self._notify()

    def _succeeded(self, server: Server, seconds: float | None) -> None:
        server.failures = 0
        server.ok_at = time.time()
        if server.state is not CircuitState.CLOSED:
            self._close(server)
        if seconds is not None:
            old = server.latency
            server.latency = seconds if old is None else old + LATENCY_EWMA * (seconds - old)
        server.successes += 1
        if (
            self.policy.adaptive_concurrency
            and server.limit < server.capacity
            and server.successes >= self.policy.adaptive_raise_after
        ):
            server.limit += 1
            server.successes = 0

    def _failed(self, server: Server, exc: BackendError) -> None:
        server.failures += 1
        server.failed += 1
        server.last_error = str(exc)
        if isinstance(exc, BackendTimeoutError):
            self._shrink(server)
        if server.state is CircuitState.OPEN or (
            server.state is CircuitState.HALF_OPEN and self._health is not None
        ):
            return  # a request sent before it opened; the probe decides from here
        if (
            server.state is CircuitState.HALF_OPEN
            or isinstance(exc, ServerDownError)
            or server.failures >= self.policy.failure_threshold
        ):
            self._open(server)

    def _rate_limited(self, server: Server, exc: RateLimitedError) -> None:
        delay = exc.retry_after if exc.retry_after is not None else self.policy.default_retry_after
        server.rate_limited += 1
        server.cooldown_until = max(server.cooldown_until, self._clock() + delay)
        self._shrink(server)
        logger.info(
            "backend %s: %s rate-limited us; pausing it %.1fs", self.name, server.url, delay
        )

    def _shrink(self, server: Server) -> None:
        if self.policy.adaptive_concurrency:
            server.limit = max(1, math.ceil(server.limit / 2))
            server.successes = 0

    # -- the circuit breaker -------------------------------------------------------

    def _open(self, server: Server) -> None:
        was_closed = server.state is CircuitState.CLOSED
        base, most = self.policy.open_seconds, self.policy.max_open_seconds
        # probes are one cheap GET: grow gently, so a server back after a short outage
        # is found soon, while one that stays down is asked every max_open_seconds
        server.open_for = (
            base if was_closed else min(most, max(base, server.open_for * OPEN_GROWTH))
        )
        server.retry_at = self._clock() + server.open_for
        server.state = CircuitState.OPEN
        server.reported = False  # found down here: this process records and probes it
        self._opened.set()
        if self.shared is not None:
            self.shared.opened(server, server.open_for)
        if was_closed:
            logger.warning(
                "backend %s: server %s marked down after %d failure(s): %s",
                self.name,
                server.url,
                server.failures,
                server.last_error,
            )

    def _close(self, server: Server) -> None:
        server.ok_at = time.time()
        server.state = CircuitState.CLOSED
        server.failures = 0
        server.open_for = 0.0
        server.reported = False
        logger.info("backend %s: server %s is back", self.name, server.url)
        if self.shared is not None:
            self.shared.closed(server)

    def report_down(self, server: Server, retry_in: float, error: str) -> bool:
        """Another process found ``server`` down and probes it in ``retry_in`` seconds: open
        its circuit here too, without a failure of ours (nothing is recorded back); this
        process's prober (or, without health checks, a trial request) looks at it then.
        True when this closed its circuit here."""
        if server.state is not CircuitState.CLOSED:
            return False
        server.state = CircuitState.OPEN
        server.reported = True
        server.open_for = max(retry_in, self.policy.open_seconds)
        server.retry_at = self._clock() + max(0.0, retry_in)
        server.last_error = error or "found down by another process"
        logger.warning(
            "backend %s: server %s found down by another process: %s",
            self.name,
            server.url,
            server.last_error,
        )
        self._ensure_prober()
        self._opened.set()
        self._notify()
        return True

    def report_up(self, server: Server) -> bool:
        """The process that found ``server`` down found it back: close a circuit that
        :meth:`report_down` opened (not one this process's own failures opened)."""
        if not (server.reported and server.state is CircuitState.OPEN):
            return False
        server.state = CircuitState.CLOSED
        server.failures = 0
        server.open_for = 0.0
        server.reported = False
        logger.info(
            "backend %s: server %s is back (found by another process)", self.name, server.url
        )
        self._notify()
        return True

    def _ensure_prober(self) -> None:
        """Start the health probe on first use (it needs a running loop)."""
        if self._health is None or self._prober is not None or self._closed:
            return
        self._prober = asyncio.get_running_loop().create_task(
            self._probe_loop(), name=f"pixelkiln-health-{self.name}"
        )

    async def _probe_loop(self) -> None:
        """Probe open servers when their wait is over; sleep until the next one is due.

        It wakes only when a circuit opens (not on every request), so a busy
        pool pays nothing for it.
        """
        while True:
            self._opened.clear()
            now = self._clock()
            due = [s for s in self.servers if s.state is CircuitState.OPEN and s.retry_at <= now]
            if due:
                await asyncio.gather(*(self._probe(s) for s in due))
                continue
            waits = [s.retry_at for s in self.servers if s.state is CircuitState.OPEN]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(waits) - now if waits else None):
                    await self._opened.wait()

    async def _probe(self, server: Server) -> None:
        assert self._health is not None
        server.state = CircuitState.HALF_OPEN
        try:
            async with asyncio.timeout(self.policy.health_timeout):
                await self._health(server.url)
        except (RejectedInputError, RateLimitedError):
            self._close(server)  # it answered: up, whatever it thinks of the probe
        except (BackendError, TimeoutError) as exc:
            server.last_error = str(exc) or "health check timed out"
            self._open(server)
        except Exception as exc:  # a bug in a health check must not kill the prober
            logger.exception("backend %s: health check of %s crashed", self.name, server.url)
            server.last_error = f"health check crashed: {type(exc).__name__}"
            self._open(server)
        else:
            self._close(server)
        self._notify()


#: a request this many times its server's latency late is no longer expected to end soon:
#: its slot is left out of the guess (the server may be stuck), so nobody waits for it
LATE_FACTOR = 3.0


def earliest_finish(
    servers: Sequence[Server], requests: int, now: float
) -> tuple[Server | None, float | None]:
    """Where the first of ``requests`` waiting ones should start now, if anywhere.

    Each slot of each server is a lane that is free now or when a request in flight
    ends (its start plus the server's latency); ``requests`` are placed one by one on
    the lane where each would finish first (a lane's free time plus its server's
    latency). The first to land on a lane free now says which server to take now. If
    none does, every one of them finishes sooner by waiting for a busy, faster server:
    the answer is (None, seconds until the first lane they wait for frees).

    A busy server of unknown latency offers no lane (when it frees cannot be guessed),
    nor does a server whose slots other processes hold, nor a request long overdue; a late
    one is expected within a quarter of its latency; a server cooling down after a 429
    frees when its cooldown ends.

    >>> fast, slow = Server("f", 1, 1, latency=0.1), Server("s", 1, 1, latency=0.9)
    >>> fast.in_flight, fast.sent = 1, collections.deque([0.0])  # ends at 0.1
    >>> earliest_finish([fast, slow], 1, now=0.05)[1]             # wait 0.05 s for fast
    0.05
    >>> earliest_finish([fast, slow], 12, now=0.05)[0] is slow    # enough work for both
    True
    """
    tie = itertools.count()  # lanes finishing at once go in the servers' order
    lanes: list[tuple[float, float, int, bool, Server]] = []
    for server in servers:
        latency = server.latency or 0.0
        for free_at, now_free in _lanes(server, now):
            lanes.append((free_at + latency, free_at, next(tie), now_free, server))
    heapq.heapify(lanes)
    waits: list[float] = []
    for _ in range(max(1, requests)):
        if not lanes:
            break
        finish, free_at, _, now_free, server = heapq.heappop(lanes)
        if now_free:
            return server, None
        waits.append(free_at)
        latency = server.latency or 0.0
        heapq.heappush(lanes, (finish + latency, finish, next(tie), False, server))
    return None, (min(waits) - now if waits else None)


def _wait_at_most(
    free: list[Server], since: float, now: float, wait: float | None
) -> tuple[Server | None, float | None]:
    """A wait for a busy server, bounded: once the fastest free server would have finished
    the request had it been sent there at ``since``, it goes there now."""
    fallback = min(free, key=_preference)
    give_up = since + (fallback.latency or 0.0)
    if now >= give_up:
        return fallback, None
    return None, give_up - now if wait is None else min(wait, give_up - now)


def _lanes(server: Server, now: float) -> list[tuple[float, bool]]:
    """(when a slot of ``server`` is free, whether that is now) for each slot one can tell.

    A server whose slots other processes hold (``full_until``) offers none: when they
    give one back cannot be told."""
    if server.full_until > now:
        return []
    resting = server.resting_until()
    cooling = resting > now
    ready = resting if cooling else now
    lanes = [(ready, not cooling)] * max(0, server.limit - server.in_flight)
    latency = server.latency
    if latency is None:
        return lanes
    busy = min(server.in_flight, server.limit, len(server.sent))
    for sent in list(server.sent)[len(server.sent) - busy :]:
        end = sent + latency
        if end < now:  # late: soon, unless so late that the server may be stuck
            if now - sent > LATE_FACTOR * latency:
                continue
            end = now + latency / 4
        lanes.append((max(ready, end), False))
    return lanes


def _preference(server: Server) -> tuple[float, float]:
    """Fastest first (unknown speed counts as fastest, so new servers get tried), then emptiest."""
    return (server.latency or 0.0, server.in_flight / server.limit)


def pool_of(backend: object) -> ServerPool | None:
    """The server pool a backend runs on (``backend.pool``), or None (placeholder, diffusers)."""
    pool = getattr(backend, "pool", None)
    return pool if isinstance(pool, ServerPool) else None
