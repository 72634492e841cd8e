"""The numbers a server pool works by, and the request-rate limiter it spaces starts with.

:class:`PoolPolicy` is read from a backend's ``options`` (see
:mod:`pixelkiln.backends.pool` for what each number does); :class:`RateLimiter`
spaces request starts to ``rpm`` per minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from pixelkiln.exceptions import ConfigError


@dataclass(frozen=True)
class PoolPolicy:
    """How a pool reacts to failures; read from a backend's ``options``."""

    failure_threshold: int = 5  #: consecutive failures that open a circuit
    open_seconds: float = 1.0  #: first wait before probing an open server
    max_open_seconds: float = 10.0  #: longest wait between probes of a server that stays down
    health_timeout: float = 5.0  #: seconds a health probe may take
    default_retry_after: float = 1.0  #: cooldown after a 429 that names no Retry-After
    max_rate_limit_wait: float = 30.0  #: longest wait for a cooled-down server in one call
    max_rate_limit_retries: int = 5  #: 429s tolerated in one call before giving up
    adaptive_concurrency: bool = False  #: halve a server's slots on 429/timeout
    adaptive_raise_after: int = 20  #: successes in a row that give one slot back
    rpm_burst: int = 1  #: request starts allowed back to back under ``rpm``

    @classmethod
    def from_options(cls, options: Mapping[str, Any], backend: str = "") -> PoolPolicy:
        """The policy named in ``options`` (other keys are ignored); ConfigError on bad values."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in options:
                values[f.name] = _coerce(
                    f.name, options[f.name], type(getattr(cls(), f.name)), backend
                )
        return cls(**values)


def _coerce(name: str, value: Any, kind: type, backend: str) -> Any:
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not ok or isinstance(value, bool) != (kind is bool) or (kind is not bool and value < 0):
        raise ConfigError(
            f"backend '{backend}': option {name} must be a non-negative "
            f"{kind.__name__}, not {value!r}"
        )
    return kind(value)


class RateLimiter:
    """Spaces request starts ``60 / rpm`` seconds apart, allowing ``burst`` back to back.

    A reservation scheme (GCRA): each caller is given the next start time and
    sleeps until then, so concurrent callers queue fairly and a window of W
    seconds never holds more than ``W * rpm / 60 + burst`` starts.
    """

    def __init__(self, rpm: int, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        self.interval = 60.0 / rpm
        self.burst = max(1, burst)
        self._clock = clock
        self._tat = 0.0  # theoretical arrival time of the next request

    def reserve(self) -> float:
        """Claim the next start; returns seconds to wait before starting."""
        now = self._clock()
        start = max(now, self._tat - (self.burst - 1) * self.interval)
        self._tat = max(self._tat, start) + self.interval
        return start - now

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
