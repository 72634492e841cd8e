"""How many tasks may run at once: the global cap, and each backend's slots.

A backend's slots are its per-URL ``concurrency`` times its servers; the
pool also holds each server to its share. An admin may change either number
while the server runs (``PUT /api/v1/admin/concurrency[/backends/{name}]``,
``kiln concurrency``); the values are stored (db.settings_store) and the
scheduler applies them at once.

What actually runs in parallel on a backend is the smallest of the global
cap, its per-URL concurrency times its servers, and that times the servers up
now: :meth:`BackendLimit.effective` says which one binds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from pixelkiln.backends.base import Backend
from pixelkiln.backends.pool import pool_of
from pixelkiln.config import BackendSettings

#: why a backend runs no more than it does (see BackendLimit.effective)
GLOBAL, BACKEND, SERVERS_DOWN = "global", "backend", "servers_down"
#: seconds added to a paced batch's wait, so that the claim at the end finds it due
TIMER_SLACK = 0.002


@dataclass(frozen=True)
class BackendLimit:
    """One backend's share of the parallelism, and what it is made of."""

    per_url: int  #: requests in flight per server now (an admin's value, else configured)
    configured: int  #: ``concurrency`` in kiln.toml
    servers: int  #: servers (URLs) of the backend; 1 without URLs
    servers_up: int | None = None  #: servers taking work now; None when not known here
    running: int = 0  #: tasks generating on it now

    @property
    def slots(self) -> int:
        """The backend's cap: per-URL concurrency × servers."""
        return self.per_url * self.servers

    def effective(self, overall: int) -> tuple[int, str]:
        """(tasks that may run on it now, what binds: "global", "backend" or "servers_down")."""
        up = self.servers if self.servers_up is None else self.servers_up
        usable = self.per_url * up
        if overall < min(self.slots, usable):
            return overall, GLOBAL
        if usable < self.slots:
            return usable, SERVERS_DOWN
        return self.slots, BACKEND


def servers_of(settings: BackendSettings, backend: Backend | None = None) -> int:
    """How many servers a backend spreads its slots over."""
    pool = pool_of(backend)
    if pool is not None:
        return len(pool.servers)
    return max(1, len(settings.urls))


def configured_limits(
    settings: list[BackendSettings], stored: Mapping[str, int] | None = None
) -> dict[str, BackendLimit]:
    """Each backend's limit from kiln.toml and an admin's stored values (no live state)."""
    stored = stored or {}
    return {
        s.name: BackendLimit(stored.get(s.name, s.concurrency), s.concurrency, servers_of(s))
        for s in settings
    }


class Limits:
    """The scheduler's limits, changed at run time; see the module docstring."""

    def __init__(self, overall: int, backends: Mapping[str, Backend]) -> None:
        self.configured_overall = self.overall = max(1, overall)
        self._backends = backends
        self._limits = {
            name: BackendLimit(
                b.settings.concurrency, b.settings.concurrency, servers_of(b.settings, b)
            )
            for name, b in backends.items()
        }
        #: slots per backend, read on every start (kept as plain ints for speed)
        self.slots = {name: limit.slots for name, limit in self._limits.items()}

    def set_backend(self, name: str, per_url: int | None) -> bool:
        """Per-URL concurrency of ``name`` (None: the configured one); False if unknown."""
        limit = self._limits.get(name)
        if limit is None:
            return False
        value = max(1, per_url) if per_url is not None else limit.configured
        if value != limit.per_url:
            self._limits[name] = replace(limit, per_url=value)
            self.slots[name] = self._limits[name].slots
            pool = pool_of(self._backends[name])
            if pool is not None:
                pool.set_concurrency(value)
        return True

    def apply(self, overall: int | None, per_backend: Mapping[str, int]) -> None:
        """Stored values, as read from the database: what is missing is the configured value."""
        self.overall = max(1, overall if overall is not None else self.configured_overall)
        for name in self._limits:
            self.set_backend(name, per_backend.get(name))

    def snapshot(self, running: Mapping[str, int]) -> dict[str, BackendLimit]:
        """Every backend's limit with its servers up and tasks running now."""
        out = {}
        for name, limit in self._limits.items():
            pool = pool_of(self._backends[name])
            up = pool.servers_up() if pool is not None else None
            out[name] = replace(limit, servers_up=up, running=running.get(name, 0))
        return out


def idle_timeout(poll_interval: float, wake_at: float | None, now: float) -> float:
    """How long an idle scheduler waits: until the next poll, or a paced batch is due.

    A batch with a ``delay`` (db.pacing) may start its next task at ``wake_at``;
    nothing else would wake the scheduler then. A ``wake_at`` already past is
    stale (its batch is due, and waits for a slot whose freeing wakes the
    scheduler anyway): waiting for it again would spin.
    """
    if wake_at is None or wake_at <= now:
        return poll_interval
    return min(poll_interval, wake_at - now + TIMER_SLACK)
