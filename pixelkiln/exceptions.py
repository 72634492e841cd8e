"""pixelkiln's exception tree.

Foreign errors (httpx, sqlite, Pillow, pydantic) are translated once, at the
boundary where they enter our code, into one of these, with ``raise ... from``::

    KilnError
    ├── ConfigError              kiln.toml / KILN_* values that cannot work
    │   └── InvalidValueError    a value an admin sets at run time is out of range (a limit, params)
    ├── SpecError                bad batch input; carries every Problem found
    ├── NotFoundError            a batch, task or image that does not exist (for this user)
    ├── InvalidStateError        an action that the object's state forbids (retry a running batch)
    ├── PermissionDeniedError    an action only an admin may take
    ├── IdempotencyKeyReusedError  an idempotency key sent again with a different request
    ├── DatabaseError            the database is unreachable or stayed locked
    ├── StorageError             the image storage (folder, S3 bucket) cannot be reached
    ├── UnstorableValueError     a value the database refuses to store (a NUL in text)
    ├── SchedulerStalledError    the scheduler could not go on (its writes kept failing)
    └── BackendError             a generator failed one request
        ├── RejectedInputError   the generator refused the request; retrying cannot help
        │   └── QuotaExhaustedError  the provider account is out of quota or credits
        ├── BackendUnavailableError  connection refused / reset, DNS, server marked down
        │   └── NoServerAvailableError  every server of the backend is down: wait, spend no attempt
        ├── BackendTimeoutError  no answer within the request timeout
        ├── RateLimitedError     429; ``retry_after`` seconds when the server said
        └── ServerError          5xx or a malformed answer

``BackendError.retryable`` says whether the scheduler may try the task again.
"""

from __future__ import annotations

from dataclasses import dataclass


class KilnError(Exception):
    """Base of every error pixelkiln raises on purpose."""


class StorageError(KilnError):
    """The storage could not be reached or refused an operation (not a missing file).

    A server-side failure: a task whose images cannot be written fails with it and is
    retried like any unexpected error; the API answers 503. A missing file or object is
    ``FileNotFoundError``, as from ``open()``.
    """


class ConfigError(KilnError):
    """The configuration cannot work (unknown backend type, bad value)."""


class InvalidValueError(ConfigError):
    """A value given to change the installation at run time cannot be used.

    A concurrency out of its range, a preset's unknown parameters. ``field``
    names the value at fault, ``problems`` each one when there are several; the
    API answers 422 with them, the CLI an error line (exit 2), as for a bad
    kiln.toml value.
    """

    def __init__(self, message: str, *, field: str, problems: list[Problem] | None = None) -> None:
        self.field = field
        self.problems = problems or []
        super().__init__(message)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with batch input, located as precisely as we can."""

    #: file the problem is in ("" when the spec did not come from a file)
    source: str
    #: human location inside it: "task 3", "row 17"; "" for the whole file
    where: str
    #: parameter or column name; "" when not about one field
    field: str
    #: what is wrong, in words a user can act on
    message: str
    #: where the value sits in submitted structured data ("tasks[0].n", "" for the whole of
    #: it) when the problem is that it does not fit the batch schema; None otherwise
    path: str | None = None

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.where) if p]
        head = ", ".join(parts)
        if self.field:
            head = f"{head}, field '{self.field}'" if head else f"field '{self.field}'"
        return f"{head}: {self.message}" if head else self.message


class SpecError(KilnError):
    """Batch input is invalid; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems[:5]))


class NotFoundError(KilnError):
    """The object does not exist, or belongs to someone else."""


class InvalidStateError(KilnError):
    """The action is not allowed in the object's current state."""


class PermissionDeniedError(KilnError):
    """An action only an admin may take (the API answers 403)."""


class BackendError(KilnError):
    """A generator failed one request."""

    retryable = True

    def __init__(self, message: str, *, server: str = "") -> None:
        self.server = server
        super().__init__(message)


class RejectedInputError(BackendError):
    """The generator refused the request (bad parameters, moderation, 4xx): not retried."""

    retryable = False


class QuotaExhaustedError(RejectedInputError):
    """The provider account is out of quota or credits (HTTP 402, ``insufficient_quota``).

    Retrying on the same backend cannot help until someone pays; a backend
    with a ``fallback`` chain hands the task to the next one instead, spending
    no attempt.
    """


class BackendUnavailableError(BackendError):
    """The server could not be reached, or every server of the backend is down."""


class NoServerAvailableError(BackendUnavailableError):
    """Every server of the backend is down (circuit open): the task waits, no attempt is spent."""


class BackendTimeoutError(BackendError):
    """The server did not answer within the timeout."""


class RateLimitedError(BackendError):
    """The server answered 429; ``retry_after`` is its Retry-After in seconds, if any."""

    def __init__(self, message: str, *, server: str = "", retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message, server=server)


class ServerError(BackendError):
    """The server failed (5xx) or answered something we cannot read."""


class IdempotencyKeyReusedError(KilnError):
    """An idempotency key came again with a different request; nothing was done."""


class DatabaseError(KilnError):
    """The database could not be reached or stayed locked past the busy timeout."""


class UnstorableValueError(KilnError):
    """A value the database refuses to store or compare: text with a NUL character on
    PostgreSQL, say. Bad input, reported as such (the checks at the edges name where it
    is; this is what is left when one did not)."""


class SchedulerStalledError(KilnError):
    """The scheduler made no progress for ``[scheduler] stall_seconds``: its steps kept failing.

    ``kiln run`` stops with this reason (exit 1) instead of hanging; ``kiln
    serve`` keeps retrying and reports it on ``/healthz``.
    """
