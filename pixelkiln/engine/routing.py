"""Where a task goes when its backend cannot take it: fallback chains and the down deadline.

A backend is *unavailable* while every server of it is down
(:class:`NoServerAvailableError`) or its account is out of quota or credits
(:class:`QuotaExhaustedError`). Its task then moves to the first backend of its
chain that is up, spending no attempt. The chain is the task's own
(``backend: ["jimeng", "placeholder"]``, stored as ``params["backends"]``: the
backends after the current one, in order) or else its backend's configured
``fallback`` chain (:meth:`Settings.fallback_chain`). A chain is followed from
where the task is now, so a task moved from ``a`` to ``b`` takes ``b``'s
fallbacks if ``b`` goes down too; loops are refused when the settings load.

With no fallback up, a task waits for a down backend and fails at once for a
backend out of quota. While every server of a pool is down its tasks stay in
the queue (claiming them would only put them back) and every few seconds
:meth:`Routes.sweep` moves those that have a fallback up. A backend down for
``down_timeout`` seconds fails the tasks that wait for it, spending no
attempt, with a reason that says so; ``kiln retry`` runs them again later.

>>> routes = Routes(backends, {"sd": ["placeholder"]}, 600, db)           # doctest: +SKIP
>>> routes.verdict(task, NoServerAvailableError("..."), now)              # doctest: +SKIP
Verdict(move_to='placeholder', fail=None, why='has every server down')
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from pixelkiln.backends.base import Backend
from pixelkiln.backends.pool import ServerPool, pool_of
from pixelkiln.db import events
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.db.routing import move_waiting, next_in_chain
from pixelkiln.engine.hours import Hours
from pixelkiln.exceptions import BackendError, NoServerAvailableError, QuotaExhaustedError

log = logging.getLogger("pixelkiln.engine")

#: seconds a backend out of quota is passed over before a task tries it again
QUOTA_HOLD = 60.0
#: seconds between moves of waiting tasks to a fallback (see Routes.sweep)
SWEEP_INTERVAL = 2.0


@dataclass(frozen=True)
class Verdict:
    """What becomes of a task whose backend could not take it."""

    move_to: str | None = None  #: another backend takes it now (no attempt spent)
    fail: str | None = None  #: it fails for good, for this reason
    why: str = ""  #: what is wrong with its backend, in words
    #: neither move_to nor fail: it waits for its backend to come back


class Routes:
    """Which backends are up, and where a task of a backend that is not goes; see the module."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        chains: Mapping[str, Sequence[str]],
        down_timeout: float,
        db: Database,
        hours: Hours | None = None,
    ) -> None:
        self.backends = backends
        self.db = db
        self.hours = hours  #: a backend outside its hours is no fallback target
        self.chains = {name: list(chains.get(name, ())) for name in backends}
        self.down_timeout = down_timeout
        self.down: dict[str, float] = {}  #: backend → since when every server is down
        self._quota: dict[str, tuple[float, str]] = {}  #: backend → (passed over until, why)
        self._reported: set[tuple[str, int]] = set()
        self._next_sweep = 0.0

    # -- state ----------------------------------------------------------------------------------

    def pool(self, name: str) -> ServerPool | None:
        return pool_of(self.backends.get(name))

    def is_up(self, name: str, now: float) -> bool:
        """Whether ``name`` may take work now, as far as we know."""
        if name not in self.backends or self._quota.get(name, (0.0, ""))[0] > now:
            return False
        if self.hours and name in self.hours.closed(now):
            return False
        pool = self.pool(name)
        if pool is not None:
            return pool.servers_up() > 0
        return name not in self.down  # without a pool, only a success says it is back

    def refuse_early(self, name: str, now: float, own_key: bool = False) -> BackendError | None:
        """The error a task of ``name`` gets without a request, when we already know it.

        Only what is certain: every server of its pool is down (the pool's
        health probe brings them back), or the system's account is out of
        quota (a task on its owner's own key is still sent).
        """
        if not (self.down or self._quota):
            return None  # the hot path: nothing is known to be wrong
        until, why = self._quota.get(name, (0.0, ""))
        if until > now and not own_key:
            return QuotaExhaustedError(why)
        pool = self.pool(name)
        if pool is not None and name in self.down and pool.servers_up() == 0:
            return NoServerAvailableError(pool.describe())
        return None

    @property
    def troubled(self) -> bool:
        """Whether any backend is known unavailable (a cheap test for the hot path)."""
        return bool(self.down or self._quota)

    def holds_back(self, name: str, now: float) -> bool:
        """True while claiming tasks of ``name`` would only put them back.

        Every server of its pool is down and the deadline has not passed: its
        waiting tasks stay in the queue (and :meth:`sweep` moves those that
        have a fallback up) instead of being claimed and returned in a loop.
        """
        return (
            name in self.down
            and not self.deadline_passed(name, now)
            and self.refuse_early(name, now) is not None
        )

    async def sweep(self, now: float, only_batches: Collection[int] | None) -> int:
        """Move waiting tasks of unavailable backends to a fallback that is up; how many moved.

        At most every SWEEP_INTERVAL seconds; one UPDATE per (backend, target).
        """
        self.refresh(now)
        if not self.troubled or now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_INTERVAL
        up = frozenset(n for n in self.backends if self.is_up(n, now))
        total = 0
        for name in [n for n in self.backends if n not in up and self._knows_unavailable(n)]:
            why = "is out of quota or credits" if name in self._quota else "has every server down"
            moved = await self.db.awrite(
                move_waiting,
                name,
                configured=next((b for b in self.chains[name] if b in up), None),
                up=up,
                why=why,
                only_batches=only_batches,
            )
            if moved:
                log.warning("backend '%s' %s: %d waiting task(s) moved", name, why, moved)
            total += moved
        return total

    def _knows_unavailable(self, name: str) -> bool:
        return name in self.down or name in self._quota

    def deadline_passed(self, name: str, now: float) -> bool:
        since = self.down.get(name)
        return since is not None and 0 < self.down_timeout <= now - since

    # -- decisions ------------------------------------------------------------------------------

    def fallback_for(self, task: ClaimedTask, now: float) -> str | None:
        """The first backend of the task's chain after its current one that is up.

        None for a task on its owner's own provider key: elsewhere it would run
        on the system's key, which its owner did not pay for.
        """
        if task.own_key:
            return None
        own = task.params.get("backends")
        chain = own if isinstance(own, list) and own else self.chains.get(task.backend, [])
        return next_in_chain(chain, task.backend, lambda b: self.is_up(b, now))

    def verdict(self, task: ClaimedTask, exc: BaseException, now: float) -> Verdict:
        """Move, fail or wait: what becomes of ``task``, whose backend raised ``exc``."""
        name = task.backend
        if isinstance(exc, QuotaExhaustedError):
            if not task.own_key:  # the system's account: its other tasks would hear the same
                self._quota[name] = (now + QUOTA_HOLD, str(exc))
            why = "is out of quota or credits"
        else:
            self._went_down(task, now)
            why = "has every server down"
        target = self.fallback_for(task, now)
        if target is not None:
            return Verdict(move_to=target, why=why)
        if isinstance(exc, QuotaExhaustedError):
            return Verdict(fail=str(exc), why=why)
        if self.deadline_passed(name, now):
            return Verdict(fail=f"backend '{name}': every server down for {self.down_timeout:g} s")
        return Verdict(why=why)

    # -- going down and coming back ---------------------------------------------------------------

    def _went_down(self, task: ClaimedTask, now: float) -> None:
        self.down.setdefault(task.backend, now)
        key = (task.backend, task.batch_id)
        if key in self._reported:
            return
        self._reported.add(key)
        wait = (
            f"its tasks wait up to {self.down_timeout:g} s"
            if self.down_timeout > 0
            else "its tasks wait"
        )
        message = f"backend '{task.backend}': every server is down; {wait} for it to come back"
        if self.chains.get(task.backend) or task.params.get("backends"):
            message += " or move to a fallback that is up"
        log.warning(message)
        self._note(events.warning(task.batch_id, message, backend=task.backend))

    def _note(self, event: events.PendingEvent) -> None:
        def write(tx: Tx) -> None:
            events.append_event(tx, event)

        task = asyncio.ensure_future(self.db.awrite(write))
        task.add_done_callback(lambda t: t.exception())  # never "exception never retrieved"

    def back_up(self, name: str) -> None:
        """``name`` served a task (or its pool says a server is back): report it once."""
        if self.down.pop(name, None) is None:
            return
        log.info("backend '%s' is back", name)
        for backend, batch_id in [k for k in self._reported if k[0] == name]:
            self._reported.discard((backend, batch_id))
            self._note(events.info(batch_id, f"backend '{name}' is back", backend=name))

    def refresh(self, now: float) -> None:
        """Notice backends whose pool brought a server back, and quota holds that are over."""
        for name in [n for n in self.down if self.pool(n) is not None]:
            if self.is_up(name, now):
                self.back_up(name)
        for name in [n for n, (until, _) in self._quota.items() if until <= now]:
            del self._quota[name]
