"""The scheduler: claims tasks, runs them on backends within limits, records outcomes.

One scheduler per process. Its loop claims as many tasks as there are free
generator slots (globally and per backend), runs each as an asyncio job, and
hands outcomes to a committer that records them in groups. A lease keeper
renews the leases of held tasks every few seconds; a task missing from the
renewal was cancelled or taken away, and its job is cancelled. Recovery of
expired leases (a runner that died) runs inside the loop.

>>> scheduler = Scheduler(db=db, storage=storage, backends=backends,
...                       settings=settings.scheduler, user_keys=UserKeys(db, keys),
...                       only_batches=[batch_id])
>>> await scheduler.run(until_done=True)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelkiln.backends.base import Backend, GeneratedImage
from pixelkiln.config import SchedulerSettings
from pixelkiln.db import events
from pixelkiln.db.batches import runnable_batch_ids, unfinished_batch_ids
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.leases import (
    ClaimedTask,
    claim_tasks,
    recover_leases,
    release_tasks,
    renew_leases,
    running_lease_owners,
)
from pixelkiln.db.tasks import TaskFailure, TaskResult, record_outcomes
from pixelkiln.engine import retry
from pixelkiln.engine.credentials import UserKeys
from pixelkiln.engine.owners import dead_local_owners, new_owner_id
from pixelkiln.engine.starts import StartMarks
from pixelkiln.engine.task_io import build_request, store_images
from pixelkiln.exceptions import BackendTimeoutError, ServerError
from pixelkiln.storage import Storage

log = logging.getLogger("pixelkiln.engine")

#: tasks finished generating but not yet recorded, at most, before claiming pauses
MAX_BACKLOG = 256
#: work claimed ahead per backend, in seconds of generation (see _ready_target)
PREFETCH_SECONDS = 0.25
MAX_PREFETCH = 64
#: seconds a task waits before looking again when every server of its backend is down
DOWN_WAIT = 2.0


@dataclass
class _Job:
    task: ClaimedTask
    started: float
    job: asyncio.Task[None] | None = None
    generating: bool = True
    lost: bool = False  #: the lease was taken away; nothing to give back


@dataclass(frozen=True)
class _Generated:
    """Images made but not yet written: the committer writes a whole group in one thread hop."""

    job: _Job
    images: list[GeneratedImage]
    duration: float

    @property
    def task(self) -> ClaimedTask:
        return self.job.task


_Outcome = _Generated | TaskFailure


@dataclass
class SchedulerStatus:
    """A snapshot for progress displays and the API."""

    concurrency: int
    generating: dict[str, int]
    held: int
    backends_down: dict[str, float] = field(default_factory=dict)  #: name → down since


class Scheduler:
    """Claims and runs tasks until stopped (or, with ``until_done``, until its batches end)."""

    def __init__(
        self,
        *,
        db: Database,
        storage: Storage,
        backends: Mapping[str, Backend],
        settings: SchedulerSettings,
        only_batches: Iterable[int] | None = None,
        user_keys: UserKeys,
        owner: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.storage = storage
        self.backends = dict(backends)
        self.settings = settings
        self.concurrency = settings.concurrency
        self.only_batches = set(only_batches) if only_batches is not None else None
        self.user_keys = user_keys
        self.owner = owner or new_owner_id()
        self._starts = StartMarks(db, self.owner)  # attempts are spent when a request goes out
        self._rng = rng or random.Random()
        self._clock = clock
        self._slots = {name: b.settings.slots for name, b in self.backends.items()}
        self._generating = dict.fromkeys(self.backends, 0)
        self._jobs: dict[int, _Job] = {}
        #: claimed ahead, waiting for a slot; claiming in chunks keeps the writer's
        #: per-task cost low. Their leases are renewed like those of running tasks.
        self._ready: dict[str, collections.deque[ClaimedTask]] = {
            name: collections.deque() for name in self.backends
        }
        self._nothing_runnable = False
        self._mean_duration: dict[str, float] = {}  # moving average of generation time
        self._outcomes: asyncio.Queue[_Outcome | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = False
        self._down: dict[str, float] = {}
        self._down_reported: set[tuple[str, int]] = set()
        self._next_recovery = 0.0
        self._backend_order = list(self.backends)

    # -- control ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for work now (a batch was submitted or resumed)."""
        self._nothing_runnable = False
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; running tasks are cancelled and given back untried."""
        self._stopping = True
        self._wake.set()

    def set_concurrency(self, value: int) -> None:
        """Change the global limit at run time; takes effect at the next claim."""
        self.concurrency = max(1, value)
        self._wake.set()

    def cancel_batch(self, batch_id: int) -> int:
        """Stop this process's running tasks of a batch now (after the DB cancel)."""
        stopped = self._drop_ready(lambda t: t.batch_id == batch_id)
        for job in list(self._jobs.values()):
            if job.task.batch_id == batch_id and job.generating and job.job is not None:
                job.lost = True
                job.job.cancel()
                stopped += 1
        return stopped

    def _drop_ready(self, condition: Callable[[ClaimedTask], bool]) -> int:
        dropped = 0
        for name, ready in self._ready.items():
            keep = [t for t in ready if not condition(t)]
            dropped += len(ready) - len(keep)
            self._ready[name] = collections.deque(keep)
        return dropped

    def _drop_lost(self, lost: set[int]) -> None:
        """Forget ready tasks whose lease was taken away (cancelled, or recovered)."""
        if lost:
            self._drop_ready(lambda t: t.id in lost)

    def _ready_ids(self) -> list[int]:
        return [t.id for ready in self._ready.values() for t in ready]

    def status(self) -> SchedulerStatus:
        held = len(self._jobs) + len(self._ready_ids())
        return SchedulerStatus(self.concurrency, dict(self._generating), held, dict(self._down))

    # -- main loop ----------------------------------------------------------------------------

    async def run(self, *, until_done: bool = False) -> None:
        """Run until :meth:`stop`; with ``until_done``, also stop when the batches end."""
        helpers = [
            asyncio.create_task(self._commit_loop(), name="kiln-commit"),
            asyncio.create_task(self._lease_loop(), name="kiln-leases"),
        ]
        try:
            while not self._stopping:
                # cleared before looking, not after: a wake-up that arrives while we
                # look (a task finishing during the claim) must not be lost
                self._wake.clear()
                await self._recover_if_due()
                if await self._claim_and_start():
                    continue
                idle = not self._jobs and not any(self._ready.values())
                if until_done and idle and await self._scope_finished():
                    break
                await self._idle()
        finally:
            await self._shutdown(helpers)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    def _free(self) -> int:
        return self.concurrency - sum(self._generating.values())

    def _capacity(self, backend: str) -> int:
        return max(1, min(self._slots[backend], self.concurrency))

    def _ready_target(self, backend: str) -> int:
        """Tasks to keep claimed ahead: about PREFETCH_SECONDS of work, within bounds.

        Fast tasks are claimed in large chunks (one write per many tasks); slow
        ones one slot's worth at a time, so no runner hoards work that another
        could start sooner.
        """
        capacity = self._capacity(backend)
        mean = self._mean_duration.get(backend)
        if mean is None:
            return capacity
        per_slot = PREFETCH_SECONDS / max(mean, 1e-4)
        return int(min(MAX_PREFETCH, max(1, capacity * per_slot)))

    def _wants(self) -> dict[str, int]:
        """How many tasks to claim per backend: refill the ready queue once it runs low."""
        if len(self._jobs) - sum(self._generating.values()) > MAX_BACKLOG:
            return {}
        wants: dict[str, int] = {}
        for name in self._backend_order:
            target = self._ready_target(name)
            ready = len(self._ready[name])
            free_slots = max(0, min(self._slots[name] - self._generating[name], self._free()))
            if ready > target // 2 and ready >= free_slots:
                continue
            want = free_slots + target - ready
            if want > 0:
                wants[name] = want
        return wants

    def _observe(self, backend: str, seconds: float) -> None:
        mean = self._mean_duration.get(backend)
        self._mean_duration[backend] = seconds if mean is None else 0.8 * mean + 0.2 * seconds

    def _start_ready(self) -> int:
        """Start ready tasks while there are free slots, rotating between backends."""
        started = 0
        progress = True
        while progress and self._free() > 0:
            progress = False
            self._backend_order.append(self._backend_order.pop(0))
            for name in self._backend_order:
                ready = self._ready[name]
                if ready and self._generating[name] < self._slots[name] and self._free() > 0:
                    self._start(ready.popleft())
                    started += 1
                    progress = True
        return started

    def _start(self, task: ClaimedTask) -> None:
        job = _Job(task, self._clock())
        self._jobs[task.id] = job
        self._generating[task.backend] += 1
        job.job = asyncio.create_task(self._execute(job), name=f"kiln-task-{task.id}")

    async def _claim_and_start(self) -> bool:
        """Start what is ready, refill by claiming; True when anything happened."""
        started = self._start_ready()
        wants = self._wants()
        if not wants:
            return started > 0
        if self._nothing_runnable and not await self._anything_runnable():
            return started > 0
        claimed = await self.db.awrite(
            claim_tasks, self.owner, wants, self.settings.lease_seconds, self.only_batches
        )
        self._nothing_runnable = not claimed
        for task in claimed:
            self._ready[task.backend].append(task)
        return self._start_ready() + started > 0 or bool(claimed)

    async def _anything_runnable(self) -> bool:
        """A read-only look before taking the write lock again after an empty claim."""
        return bool(await self.db.aread(runnable_batch_ids, self._clock(), self.only_batches))

    async def _scope_finished(self) -> bool:
        """True when none of our batches can still make progress here."""
        open_ids = await self.db.aread(unfinished_batch_ids)
        if self.only_batches is not None:
            open_ids = [b for b in open_ids if b in self.only_batches]
        return not open_ids

    # -- one task -----------------------------------------------------------------------------

    async def _execute(self, job: _Job) -> None:
        task = job.task
        try:
            images = await self._generate(task)
        except asyncio.CancelledError:
            if job.lost:  # taken away: nothing to record or give back
                self._jobs.pop(task.id, None)
            raise
        except Exception as exc:
            self._outcomes.put_nowait(self._failure(job, exc))
        else:
            self._observe(task.backend, self._clock() - job.started)
            self._backend_up(task.backend)
            self._outcomes.put_nowait(_Generated(job, images, self._clock() - job.started))
        finally:
            self._generation_over(job)

    async def _generate(self, task: ClaimedTask) -> list[GeneratedImage]:
        """One try on the backend, within the per-task timeout."""
        backend = self.backends[task.backend]
        api_key = await self.user_keys.key_for(task, backend)  # None: the backend's own key
        request = await build_request(self.storage, task, api_key)
        await self._starts.mark(task.id)  # committed before the request goes out
        try:
            images = await asyncio.wait_for(backend.generate(request), self.settings.task_timeout)
        except TimeoutError as exc:
            raise BackendTimeoutError(f"no result within {self.settings.task_timeout:g} s") from exc
        if not images:
            raise ServerError("the backend returned no images")
        return images

    def _generation_over(self, job: _Job) -> None:
        if job.generating:
            job.generating = False
            self._generating[job.task.backend] -= 1
            self._wake.set()

    def _failure(self, job: _Job, exc: BaseException) -> TaskFailure:
        task, now = job.task, self._clock()
        message = retry.describe(exc)
        details: dict[str, Any] = {"error_type": type(exc).__name__}
        if not retry.spends_attempt(exc):  # every server down: wait, it is not the task's fault
            self._backend_down(task)
            return TaskFailure(
                task, message, now + DOWN_WAIT, now - job.started, details, spend_attempt=False
            )
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
                    task.attempts,
                    self.settings.retry_base_delay,
                    self.settings.retry_max_delay,
                    self._rng,
                ),
                retry.minimum_delay(exc),
            )
            return TaskFailure(task, message, now + delay, now - job.started, details)
        return TaskFailure(task, message, None, now - job.started, details)

    # -- backends going down and coming back ----------------------------------------------------

    def _backend_down(self, task: ClaimedTask) -> None:
        self._down.setdefault(task.backend, self._clock())
        key = (task.backend, task.batch_id)
        if key not in self._down_reported:
            self._down_reported.add(key)
            message = (
                f"backend '{task.backend}': every server is down; its tasks wait "
                "and resume when one comes back"
            )
            log.warning(message)
            self._note(events.warning(task.batch_id, message, backend=task.backend))

    def _backend_up(self, backend: str) -> None:
        if self._down.pop(backend, None) is None:
            return
        for name, batch_id in [k for k in self._down_reported if k[0] == backend]:
            self._down_reported.discard((name, batch_id))
            self._note(events.info(batch_id, f"backend '{backend}' is back", backend=backend))

    def _note(self, event: events.PendingEvent) -> None:
        def write(tx: Tx) -> None:
            events.append_event(tx, event)

        task = asyncio.ensure_future(self.db.awrite(write))
        task.add_done_callback(lambda t: t.exception())  # never "exception never retrieved"

    # -- recording, leases, recovery, shutdown --------------------------------------------------

    async def _commit_loop(self) -> None:
        """Record outcomes in groups: whatever finished while the last group was written."""
        while True:
            first = await self._outcomes.get()
            outcomes = [first] if first is not None else []
            while not self._outcomes.empty():
                more = self._outcomes.get_nowait()
                if more is None:
                    first = None
                else:
                    outcomes.append(more)
            if outcomes:
                await self._record(outcomes)
            if first is None:
                return

    async def _record(self, outcomes: list[_Outcome]) -> None:
        """Write the group's image files, then commit its rows: a row never lacks its file."""
        generated = [o for o in outcomes if isinstance(o, _Generated)]
        failures = [o for o in outcomes if isinstance(o, TaskFailure)]
        results: list[TaskResult] = []
        if generated:
            stored = await asyncio.to_thread(self._store_all, generated)
            results = [r for r in stored if isinstance(r, TaskResult)]
            failures += [r for r in stored if isinstance(r, TaskFailure)]
        try:
            await self.db.awrite(record_outcomes, self.owner, results, failures)
        except Exception:
            # the leases lapse and the tasks are recovered and re-run: nothing is lost
            log.exception("could not record %d task outcome(s)", len(outcomes))
        for outcome in outcomes:
            self._jobs.pop(outcome.task.id, None)
        self._wake.set()

    def _store_all(self, generated: list[_Generated]) -> list[TaskResult | TaskFailure]:
        """Write the image files of a group (worker thread); a task that cannot be stored fails."""
        out: list[TaskResult | TaskFailure] = []
        for g in generated:
            if g.job.lost:
                continue  # taken away meanwhile: its files are someone else's to write
            try:
                backend = self.backends.get(g.task.backend)  # the records say what it took
                stored = store_images(self.storage, g.task, g.images, backend)
                out.append(TaskResult(g.task, stored, g.duration))
            except Exception as exc:
                out.append(self._failure(g.job, exc))
        return out

    def _renew_interval(self) -> float:
        return min(2.0, self.settings.lease_seconds / 3)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._renew_interval())
            ids = list(self._jobs) + self._ready_ids()
            if not ids:
                continue
            until = self._clock() + self.settings.lease_seconds
            try:
                held = await self.db.awrite(renew_leases, self.owner, ids, until)
            except Exception:
                log.exception("could not renew leases")
                continue
            # only what we asked about: tasks claimed while the renewal ran are not in `ids`
            self._drop_lost(set(ids) - held)
            for task_id in ids:
                job = self._jobs.get(task_id)
                if job is not None and task_id not in held and job.generating and job.job:
                    job.lost = True  # cancelled elsewhere, or presumed dead: stop working
                    job.job.cancel()

    async def _recover_if_due(self) -> None:
        now = self._clock()
        if now < self._next_recovery:
            return
        self._next_recovery = now + max(1.0, self.settings.lease_seconds / 2)
        owners = await self.db.aread(running_lease_owners)
        dead = dead_local_owners(owners, self.owner)
        recovered = await self.db.awrite(recover_leases, dead)
        if recovered:
            log.info("put back %d task(s) whose runner stopped", recovered)

    async def _shutdown(self, helpers: list[asyncio.Task[None]]) -> None:
        committer, lease_keeper = helpers
        lease_keeper.cancel()
        jobs = [j.job for j in self._jobs.values() if j.job is not None]
        for job in self._jobs.values():
            if job.generating and job.job is not None:
                job.job.cancel()
        await asyncio.gather(*jobs, lease_keeper, return_exceptions=True)
        self._outcomes.put_nowait(None)  # the committer records what was produced, then ends
        await asyncio.gather(committer, return_exceptions=True)
        give_back = [tid for tid, j in self._jobs.items() if not j.lost] + self._ready_ids()
        self._drop_ready(lambda t: True)
        if give_back:
            try:
                await self.db.awrite(release_tasks, self.owner, give_back)
            except Exception:
                log.exception(
                    "could not give back %d task(s); their leases will lapse", len(give_back)
                )
        self._jobs.clear()
