"""What one try of a task came to: images to write, a failure to record, or a move elsewhere.

:func:`judge` is the one rule for a failed try: retry later (backoff, or what
the server asked for), fail for good, or, when the backend itself could not
take the task, move it to a fallback or let it wait, spending no attempt
(see :mod:`pixelkiln.engine.routing`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from pixelkiln.backends.base import GeneratedImage
from pixelkiln.config import SchedulerSettings
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.db.tasks import TaskFailure
from pixelkiln.engine import retry
from pixelkiln.engine.routing import Routes

log = logging.getLogger("pixelkiln.engine")

#: seconds a task waits before looking again when every server of its backend is down
DOWN_WAIT = 2.0


@dataclass
class Job:
    """A task this scheduler runs now (or whose outcome waits to be recorded)."""

    task: ClaimedTask
    started: float
    job: asyncio.Task[None] | None = None
    generating: bool = True
    lost: bool = False  #: the lease was taken away; nothing to give back
    out: bool = False  #: its request went out (engine.sending)

    def went_out(self) -> None:
        self.out = True

    def take_away(self) -> bool:
        """Stop a generating job whose task is no longer this process's (its batch was
        cancelled, or its lease went to another): marked lost, so that nothing is recorded
        or given back, and its coroutine cancelled. Whether there was one to stop."""
        if not self.generating or self.job is None:
            return False
        self.lost = True
        self.job.cancel()
        return True


@dataclass(frozen=True)
class Generated:
    """Images made but not yet written: the committer writes a whole group in one thread hop."""

    job: Job
    images: list[GeneratedImage]
    duration: float

    @property
    def task(self) -> ClaimedTask:
        return self.job.task


@dataclass(frozen=True)
class Moved:
    """A task whose backend could not take it, given back to run on ``target``."""

    failure: TaskFailure
    target: str
    why: str  #: what was wrong with its backend, for the event

    @property
    def task(self) -> ClaimedTask:
        return self.failure.task


Outcome = Generated | TaskFailure | Moved


def judge(
    job: Job,
    exc: BaseException,
    now: float,
    settings: SchedulerSettings,
    rng: random.Random,
    routes: Routes,
) -> TaskFailure | Moved:
    """The outcome of a try of ``job`` that raised ``exc`` (see the module docstring)."""
    task = job.task
    message = retry.describe(exc)
    details: dict[str, Any] = {"error_type": type(exc).__name__}
    took = now - job.started
    if not retry.spends_attempt(exc):  # its backend could not take it: move, fail or wait
        verdict = routes.verdict(task, exc, now)
        if verdict.move_to is not None:
            text = f"{message}; moved to '{verdict.move_to}'"
            failure = TaskFailure(task, text, now, took, details, spend_attempt=False)
            return Moved(failure, verdict.move_to, verdict.why)
        if verdict.fail is not None:
            log.warning("task %s (batch %s): %s", task.key, task.batch_id, verdict.fail)
            return TaskFailure(task, verdict.fail, None, took, details, spend_attempt=False)
        return TaskFailure(task, message, now + DOWN_WAIT, took, details, spend_attempt=False)
    log.warning(
        "task %s (batch %s, %s) attempt %s/%s failed: %s",
        task.key,
        task.batch_id,
        task.backend,
        task.attempts,
        task.max_attempts,
        message,
    )
    if retry.is_retryable(exc) and task.attempts < task.max_attempts:
        delay = max(
            retry.backoff_delay(
                task.attempts, settings.retry_base_delay, settings.retry_max_delay, rng
            ),
            retry.minimum_delay(exc),
        )
        return TaskFailure(task, message, now + delay, took, details)
    return TaskFailure(task, message, None, took, details)
