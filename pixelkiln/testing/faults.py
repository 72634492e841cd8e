"""What can go wrong on a fake server, chosen per request.

A :class:`Faults` object is shared between the test (or CLI) that sets it and
the server thread that reads it, so it can be changed while a server runs::

    server.faults.error_rates = {500: 0.1, 429: 0.05}
    server.faults.fail_next(503, "reset")     # the next two requests, exactly

An *outcome* is ``"ok"``, an HTTP status code (the server answers it with the
generator's own error body), ``"hang"`` (no answer for ``hang_seconds``),
``"reset"`` (the TCP connection is reset without an answer) or
``"malformed"`` (200 with a body that is not valid JSON) or ``"error200"`` (an
error body sent with HTTP 200, as OpenRouter does when a provider fails).
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Outcome = int | Literal["ok", "hang", "reset", "malformed", "error200"]
#: outcome names accepted from the command line and from :meth:`Faults.fail_next`
NAMED_OUTCOMES: tuple[str, ...] = ("ok", "hang", "reset", "malformed", "error200")


@dataclass
class Faults:
    """Injectable misbehaviour of a fake server; see the module docstring."""

    #: seconds each generation takes: a number, or a function called per request
    latency: float | Callable[[], float] = 0.0
    #: status code → share of requests answered with it, e.g. {500: 0.1, 429: 0.05}
    error_rates: dict[int, float] = field(default_factory=dict)
    hang_rate: float = 0.0  #: share of requests that never get an answer
    reset_rate: float = 0.0  #: share of requests whose connection is reset
    malformed_rate: float = 0.0  #: share of requests answered with broken JSON
    error200_rate: float = 0.0  #: share of requests answered with an error body and HTTP 200
    retry_after: float | None = 1.0  #: Retry-After sent with 429 and 503 (None: no header)
    hang_seconds: float = 3600.0  #: how long a hang lasts (the server cancels it on shutdown)
    seed: int | None = None  #: makes the random choices repeatable
    _forced: deque[Outcome] = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def fail_next(self, *outcomes: Outcome) -> None:
        """Force the outcomes of the next requests, in order, before any random choice."""
        for outcome in outcomes:
            self._forced.append(parse_outcome(outcome))

    def clear(self) -> None:
        """Back to a healthy server: no forced outcomes, no error rates, no latency."""
        with self._lock:
            self._forced.clear()
            self.error_rates = {}
            self.hang_rate = self.reset_rate = self.malformed_rate = self.error200_rate = 0.0
            self.latency = 0.0

    def next_outcome(self) -> Outcome:
        """The outcome of the request being served now."""
        with self._lock:
            if self._forced:
                return self._forced.popleft()
            roll = self._rng.random()
        for outcome, rate in self._rates():
            if roll < rate:
                return outcome
            roll -= rate
        return "ok"

    def delay(self) -> float:
        """Seconds the current request's generation takes."""
        value = self.latency() if callable(self.latency) else self.latency
        return max(0.0, float(value))

    def _rates(self) -> list[tuple[Outcome, float]]:
        named: list[tuple[Outcome, float]] = [
            ("hang", self.hang_rate),
            ("reset", self.reset_rate),
            ("malformed", self.malformed_rate),
            ("error200", self.error200_rate),
        ]
        return [*self.error_rates.items(), *named]


def parse_outcome(value: Outcome | str) -> Outcome:
    """``500``, ``"500"`` or a named outcome; ValueError for anything else."""
    if isinstance(value, int):
        if not 100 <= value <= 599:
            raise ValueError(f"not an HTTP status: {value}")
        return value
    if value.isdigit():
        return parse_outcome(int(value))
    if value in NAMED_OUTCOMES:
        return value  # type: ignore[return-value]  # checked against the literal names
    raise ValueError(f"unknown outcome {value!r}; use a status code or one of {NAMED_OUTCOMES}")


def parse_error_rates(text: str) -> dict[int, float]:
    """``"500:0.1,429:0.05"`` → ``{500: 0.1, 429: 0.05}`` (for the command line)."""
    rates: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        status, sep, rate = part.partition(":")
        if not sep:
            raise ValueError(f"expected STATUS:RATE, got {part!r}")
        rates[int(status)] = float(rate)
    return rates
