"""When to try a failed task again, and how long to wait first."""

from __future__ import annotations

import random

from pixelkiln.exceptions import (
    BackendError,
    NoServerAvailableError,
    QuotaExhaustedError,
    RateLimitedError,
    StorageError,
)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped, times 0.5–1.0.

    The jitter spreads retries of tasks that failed together (a server restart)
    so they do not hit the server again in one burst.
    """
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay * rng.uniform(0.5, 1.0)


def describe(exc: BaseException) -> str:
    """A one-line message for a failure, with the backend's own words."""
    if isinstance(exc, BackendError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, StorageError):
        return f"storage: {exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


def is_retryable(exc: BaseException) -> bool:
    """Backend errors say so; an unexpected exception is retried (it may be transient)."""
    return exc.retryable if isinstance(exc, BackendError) else True


def spends_attempt(exc: BaseException) -> bool:
    """A backend that cannot take work (every server down, account out of quota or credits)
    is not the task's fault: the task moves to a fallback or waits, and the try is no attempt."""
    return not isinstance(exc, NoServerAvailableError | QuotaExhaustedError)


def minimum_delay(exc: BaseException) -> float:
    """What the server asked us to wait (Retry-After), if anything."""
    if isinstance(exc, RateLimitedError) and exc.retry_after:
        return exc.retry_after
    return 0.0
