"""The scheduler: claims tasks, runs them on backends within limits, records outcomes.

One scheduler per process, built by :mod:`pixelkiln.engine.assembly`. Its
loop claims as many tasks as there are free generator slots (globally and per
backend, see engine.limits), and some ahead, into ready queues
(engine.dispatch), runs each as an asyncio job, and hands outcomes to a
committer that records them in groups (engine.recorder). A lease keeper
renews the leases of held tasks every few seconds; a task missing from the
renewal was cancelled or taken away, and its job is cancelled. Recovery of
expired leases (a runner that died), moves of waiting tasks to a fallback
backend (engine.routing) and an admin's new limits run inside the loop; a
backend outside its active hours (engine.hours) gets no new task meanwhile.

Nothing stops it quietly: a step that fails is logged, backed off and tried
again, and a helper that dies is started again (engine.supervisor).

>>> scheduler = Scheduler(db=db, storage=storage, backends=backends,
...                       settings=settings.scheduler, user_keys=UserKeys(db, keys),
...                       only_batches=[batch_id])
>>> await scheduler.run(until_done=True)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from pixelkiln.backends.base import Backend, GeneratedImage
from pixelkiln.config import SchedulerSettings
from pixelkiln.db.batches import unfinished_batch_ids
from pixelkiln.db.database import Database
from pixelkiln.db.leases import (
    Claim,
    ClaimedTask,
    claim,
    lease_look,
    outlook,
    recover_leases,
    release_tasks,
    renew_leases,
)
from pixelkiln.db.notify import STATE_POLL
from pixelkiln.db.settings_store import stored_concurrency
from pixelkiln.db.tasks import TaskFailure
from pixelkiln.engine.credentials import UserKeys
from pixelkiln.engine.dispatch import CLAIM_GATHER, GATHER_LOOK, RECORD_GATHER, Dispatch
from pixelkiln.engine.hours import Hours
from pixelkiln.engine.limits import BackendLimit, Limits, idle_timeout
from pixelkiln.engine.outcomes import Generated, Job, Moved, Outcome, judge
from pixelkiln.engine.owners import dead_local_owners, new_owner_id
from pixelkiln.engine.recorder import Recorder
from pixelkiln.engine.routing import Routes
from pixelkiln.engine.sending import send
from pixelkiln.engine.shared_limits import SharedLimits
from pixelkiln.engine.starts import StartMarks
from pixelkiln.engine.supervisor import Companion, HealthReport, Supervision
from pixelkiln.engine.task_io import build_request
from pixelkiln.exceptions import ServerError
from pixelkiln.storage import Storage

log = logging.getLogger("pixelkiln.engine")

#: tasks finished generating but not yet recorded, at most, before claiming pauses
MAX_BACKLOG = 256
#: seconds between looks at the concurrency an admin stored (``follow_settings``); while
#: changes are announced (LISTEN/NOTIFY, db.notify.STATE) only every STATE_POLL seconds
SETTINGS_INTERVAL = 2.0
#: seconds between an idle scheduler's looks for work while other processes' new work is
#: announced (LISTEN/NOTIFY): the look only finds what no announcement covers (a batch's
#: scheduled start, a task retried by another process coming due)
LISTENING_POLL = 5.0


def _never() -> bool:
    return False


@runtime_checkable
class Wakeable(Protocol):
    """A companion that wants to hear when a batch ended here (the webhook deliverer)."""

    def poke(self) -> None: ...


@dataclass
class SchedulerStatus:
    """A snapshot for progress displays and the API."""

    concurrency: int
    generating: dict[str, int]
    held: int
    backends_down: dict[str, float] = field(default_factory=dict)  #: name → down since
    backends: dict[str, BackendLimit] = field(default_factory=dict)  #: limits, servers up
    health: HealthReport | None = None
    draining: bool = False  #: claims nothing more; ends once what runs is recorded (drain)
    tally: Tally | None = None  #: what its tries came to so far


@dataclass
class Tally:
    """What this scheduler's tries came to since it started (a worker's ``/metrics``)."""

    generated: int = 0  #: tries that brought images back (to be recorded)
    retried: int = 0  #: failed tries to be tried again (or moved to, or waiting on, a backend)
    failed: int = 0  #: tasks that failed for good
    given_back: int = 0  #: tasks handed back to the queue untried (shutdown, drain)

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Generated):
            self.generated += 1
        elif isinstance(outcome, Moved) or outcome.retry_at is not None:
            self.retried += 1
        else:
            self.failed += 1


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
        chains: Mapping[str, Sequence[str]] | None = None,
        stop_when_stalled: bool = False,
        follow_settings: bool = False,
        owner: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.db = db
        self.storage = storage
        self.backends = dict(backends)
        self.settings = settings
        self.only_batches = set(only_batches) if only_batches is not None else None
        self.user_keys = user_keys
        self.owner = owner or new_owner_id()
        self._starts = StartMarks(db, self.owner)  # attempts are spent when a request goes out
        #: slots, rpm, the stored global cap and circuits shared with every process on the
        #: database (None: ``shared_limits`` off, or no server pool)
        self._shared = SharedLimits.build(db, self.owner, self.backends, settings, clock)
        #: stop with SchedulerStalledError after ``stall_seconds`` without progress (kiln run);
        #: otherwise retry for ever and let /healthz tell (kiln serve)
        self.stop_when_stalled = stop_when_stalled
        #: apply the concurrency an admin stores in the database while running (kiln serve)
        self.follow_settings = follow_settings
        #: live limit changes so far: a stored-settings read that started before one of
        #: them is stale and must not put the old limits back
        self._live_changes = 0
        self.limits = Limits(settings.concurrency, self.backends)
        #: backends' active/quiet hours: a closed backend's tasks wait (engine.hours)
        self.hours = Hours.of(
            (n, b.settings.active_hours, b.settings.quiet_hours) for n, b in self.backends.items()
        )
        self.routes = Routes(self.backends, chains or {}, settings.down_timeout, db, self.hours)
        self.supervision = Supervision(settings.stall_seconds)
        self._rng = rng or random.Random()
        self._clock = clock
        self._dispatch = Dispatch(self.limits, self.backends)  # slots and ready queues
        self._jobs: dict[int, Job] = {}
        self._nothing_runnable = False
        #: when a batch waiting out its ``delay`` may start its next task (db.pacing)
        self._wake_at: float | None = None
        #: a claim for freed slots waits for the rest of their round until then, at the
        #: latest (engine.dispatch.CLAIM_GATHER); None: no claim is waiting
        self._gather_deadline: float | None = None
        #: the next look of a claim waiting for its round, or for a slot's lead to begin
        self._claim_at: float | None = None
        self._recorder = Recorder(
            db=db,
            storage=storage,
            backends=self.backends,
            owner=self.owner,
            supervision=self.supervision,
            failure_for=self._failure,
            recorded=self._recorded,
            pause=self._pause,
            batch_ended=self._batch_ended,
            gather_wait=self._gather_wait,
        )
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()  # cuts a back-off pause short
        self._stopping = False
        #: set by :meth:`drain`: nothing more is claimed or started
        self._draining = False
        self._drain_deadline: asyncio.TimerHandle | None = None
        self.tally = Tally()
        self._next_recovery = 0.0
        self._next_settings = 0.0
        #: the earliest time a task this scheduler put back to retry later comes due
        self._retry_at: float | None = None
        #: whether new work is announced to this process (PostgreSQL LISTEN/NOTIFY, set by
        #: the process that listens: ``Kiln.listening``): an idle scheduler then looks for
        #: work every LISTENING_POLL seconds instead of every ``poll_interval``
        self.listening: Callable[[], bool] = _never
        #: parts run beside the scheduler, kept alive like its helpers (webhook deliveries)
        self._companions = tuple(companions)

    # -- control ------------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """The global limit now."""
        return self.limits.overall

    def wake(self) -> None:
        """Look for work now (a batch was submitted or resumed)."""
        self._nothing_runnable = False
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; running tasks are cancelled and given back untried."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()

    def drain(self, seconds: float) -> None:
        """Stop claiming and starting now, and end :meth:`run` once nothing is held.

        Tasks claimed ahead go back to the queue at once; running ones get
        ``seconds`` to finish and be recorded, then :meth:`stop` gives back what
        still runs, untried (no attempt spent). Call it on the scheduler's loop
        (a signal handler, ``call_soon_threadsafe``): SIGTERM of ``kiln worker``.
        """
        if self._draining or self._stopping:
            return
        self._draining = True
        self._drain_deadline = asyncio.get_running_loop().call_later(seconds, self.stop)
        self._wake.set()

    def set_concurrency(self, value: int) -> None:
        """Change the global limit at run time; takes effect at the next claim."""
        self.limits.overall = max(1, value)
        self._live_changes += 1
        self._wake.set()

    def set_backend_concurrency(self, backend: str, per_url: int | None) -> bool:
        """Change a backend's per-URL limit at run time (None: back to the configured one)."""
        known = self.limits.set_backend(backend, per_url)
        self._live_changes += 1
        self._wake.set()
        return known

    def slots_freed(self) -> None:
        """Another process gave back server slots (a NOTIFY): waiters look again now."""
        if self._shared is not None:
            self._shared.changed()

    def state_changed(self) -> None:
        """Another process stored limits or found a server down or back (a NOTIFY): read
        them again at the next step, which comes now."""
        self._next_settings = 0.0
        if self._shared is not None:
            self._shared.refresh_soon()
        self._wake.set()

    def cancel_batch(self, batch_id: int) -> int:
        """Stop this process's running tasks of a batch now (after the DB cancel)."""
        stopped = self._dispatch.drop(lambda t: t.batch_id == batch_id)
        for job in list(self._jobs.values()):
            if job.task.batch_id == batch_id and job.take_away():
                stopped += 1
        return stopped

    def status(self) -> SchedulerStatus:
        held = len(self._jobs) + len(self._dispatch.ready_ids())
        generating = self._dispatch.generating
        return SchedulerStatus(
            self.limits.overall,
            dict(generating),
            held,
            dict(self.routes.down),
            self.limits.snapshot(generating),
            self.supervision.report(),
            self._draining,
            replace(self.tally),
        )

    # -- main loop ----------------------------------------------------------------------------

    async def run(self, *, until_done: bool = False) -> None:
        """Run until :meth:`stop`; with ``until_done``, also stop when the batches end.

        A failing step is logged, backed off and tried again (see
        engine.supervisor); with ``stop_when_stalled`` the run ends with
        :class:`SchedulerStalledError` once it has made no progress for
        ``stall_seconds``.
        """
        helpers: dict[str, asyncio.Task[None]] = {}
        if self._shared is not None:
            self._shared.attach()
        try:
            while not self._stopping:
                # cleared before looking, not after: a wake-up that arrives while we
                # look (a task finishing during the claim) must not be lost
                self._wake.clear()
                self._keep_helpers(helpers)
                try:
                    if await self._step(until_done):
                        break
                except Exception as exc:
                    delay = self.supervision.failed("scheduling", exc)
                    if self.stop_when_stalled:
                        self.supervision.raise_if_stalled()
                    await self._pause(delay)
                    continue
                self.supervision.ok("scheduling")
                self.supervision.beat()
                if self.stop_when_stalled:
                    self.supervision.raise_if_stalled()
        finally:
            await self._shutdown(helpers)
            self.supervision.stopped()

    async def _step(self, until_done: bool) -> bool:
        """One pass of the loop; True when every batch in scope has ended (``until_done``)."""
        self._claim_at = None  # a claim still waiting for its round says so again below
        if self._draining:
            return await self._drain_step()
        await self._housekeeping()
        if await self._claim_and_start():
            return False
        idle = not self._jobs and not self._dispatch.has_ready()
        if until_done and idle and await self._scope_finished():
            return True
        await self._idle()
        return False

    async def _drain_step(self) -> bool:
        """Give back what waits in the ready queues; True once nothing runs any more."""
        ready = self._dispatch.ready_ids()
        if ready:  # given back before being forgotten: a failed write is tried again
            await self.db.awrite(release_tasks, self.owner, ready)
            self._dispatch.drop(lambda t: True)
            self.tally.given_back += len(ready)
        if not self._jobs:
            return True
        await self._idle()
        return False

    def _keep_helpers(self, helpers: dict[str, asyncio.Task[None]]) -> None:
        """Start the committer, the lease keeper and the companions, and again should one
        have died."""
        own = (("commit", self._recorder.run), ("leases", self._lease_loop))
        for name, make in (*own, *((c.name, c.run) for c in self._companions)):
            task = helpers.get(name)
            if task is not None and task.done():
                failure = None if task.cancelled() else task.exception()
                log.error(
                    "scheduler: the %s helper stopped; starting it again", name, exc_info=failure
                )
                self.supervision.restarts += 1
                task = None
            if task is None:
                helpers[name] = asyncio.create_task(make(), name=f"kiln-{name}")

    async def _pause(self, seconds: float) -> None:
        """Back off after a failure; :meth:`stop` cuts it short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _idle(self) -> None:
        """Wait for a wake-up, the next poll, a paced batch's next start or a backend's window
        opening, what comes first."""
        now = self._clock()
        wake_at = self._wake_at
        # a backend whose window opens may have tasks to start then
        opening = self.hours.next_opening(now) if self.hours else None
        if opening is not None and (wake_at is None or wake_at <= now or opening < wake_at):
            wake_at = opening
        timeout = idle_timeout(self.idle_poll(now), wake_at, now)
        if self._claim_at is not None:  # a claim waiting for its round, or a slot's lead
            timeout = min(timeout, max(0.0, self._claim_at - now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def idle_poll(self, now: float) -> float:
        """Seconds until an idle scheduler looks for work again by itself.

        ``poll_interval``, unless new work is announced (``listening``): then longer,
        but never past what only this loop notices (its own retries coming due, the
        next recovery of dead runners' tasks, an admin's stored limits), nor while a
        backend is in trouble (its waiting tasks may move to a fallback).
        """
        base = self.settings.poll_interval
        if not self.listening() or self.routes.troubled:
            return base
        if self._retry_at is not None and self._retry_at <= now:
            self._retry_at = None  # due: this pass's claim took it
        due = [self._next_recovery]
        if self._retry_at is not None:
            due.append(self._retry_at)
        if self.follow_settings:
            due.append(self._next_settings)
        return max(base, min(LISTENING_POLL, *(at - now for at in due)))

    def _wants(self, ending: Mapping[str, int]) -> dict[str, int]:
        """How many tasks to claim per backend (``ending``: slots about to free); none
        while too many wait to be recorded."""
        if len(self._jobs) - self._dispatch.running() > MAX_BACKLOG:
            return {}
        troubled, now = self.routes.troubled, self._clock()
        closed = self._dispatch.closed  # outside its hours: its tasks wait in the queue
        return self._dispatch.wants(
            lambda name: name in closed or (troubled and self.routes.holds_back(name, now)),
            ending,
        )

    def _gather_wait(self, waited: float) -> float:
        """Seconds the recorder's next group still waits, ``waited`` in (engine.recorder):
        while a request is about to go out (its slot taken and its start marked, or its
        start waiting for the rest of its round; RECORD_GATHER at most), then as
        engine.dispatch.outcomes_wait says. Recording is on no task's way to its generator,
        sending is: on a box of few cores, records written as the next round went out
        delayed it (their file writes and rows, and other workers' too)."""
        if waited < RECORD_GATHER and (
            any(job.generating and not job.out for job in self._jobs.values())
            or self._dispatch.startable()
        ):
            return GATHER_LOOK
        return self._dispatch.outcomes_wait(self._running(), self._clock(), waited)

    def _running(self) -> Iterator[tuple[str, float]]:
        """(backend, start) of each job generating now: what a round is made of
        (engine.dispatch)."""
        return ((job.task.backend, job.started) for job in self._jobs.values() if job.generating)

    def _ending(self) -> dict[str, int]:
        """Slots about to free (engine.dispatch.ending), their tasks claimed now; the loop
        wakes for the next ones' lead (``_claim_at``)."""
        if self._stopping or not self._dispatch.slow:  # nothing to look at: a job each
            return {}
        ending, next_at = self._dispatch.ending(self._running(), self._clock())
        if next_at is not None:
            self._claim_at = next_at if self._claim_at is None else min(self._claim_at, next_at)
        return ending

    def _start_ready(self) -> int:
        """Start ready tasks while there are free slots, turning between backends. A slow
        backend's freed slots wait for the rest of their round (:meth:`_gathering`), so
        that one start write serves the round, as one claim does (engine.dispatch)."""
        # only slow backends wait for a round (and a look at it passes over every job)
        waiting = self._dispatch.startable() & self._dispatch.slow
        hold = waiting if waiting and self._gathering(waiting) else ()
        taken = self._dispatch.take(hold)
        for task in taken:
            self._start(task)
        return len(taken)

    def _start(self, task: ClaimedTask) -> None:
        job = Job(task, self._clock())
        self._jobs[task.id] = job
        job.job = asyncio.create_task(self._execute(job), name=f"kiln-task-{task.id}")
        job.job.add_done_callback(lambda _: self._job_ended(job))

    def _job_ended(self, job: Job) -> None:
        """A job's asyncio task is done. One cancelled before its first step (a cancel or a
        lost lease arriving in the same turn as its start) ran none of :meth:`_execute`, not
        even its ``finally``: it is forgotten and its slot freed here, or this backend would
        keep one slot less for good."""
        if job.lost:
            self._forget(job.task)
        self._generation_over(job)

    def _forget(self, task: ClaimedTask) -> None:
        """Drop the job of this claim of ``task`` from the running jobs, unless the task is
        already held by a newer claim's job (cancelled, retried and claimed again
        meanwhile): each claim is a ClaimedTask of its own."""
        job = self._jobs.get(task.id)
        if job is not None and job.task is task:
            del self._jobs[task.id]

    async def _claim_and_start(self) -> bool:
        """Start what is ready, refill by claiming; True when anything happened. Nothing
        starts while recording fails: its images could not be stored (a full disk)."""
        if self._recorder.failing:
            return False
        started = self._start_ready()
        ending = self._ending()
        wants = self._wants(ending)
        if not wants:
            return started > 0
        if self._nothing_runnable and not await self._anything_runnable():
            return started > 0
        if not ending and self._gathering(wants):  # a lead claim serves its round already
            return started > 0
        free = {name: self._dispatch.free_on(name) for name in wants}
        got: Claim = await self.db.awrite(
            claim, self.owner, wants, self.settings.lease_seconds, self.only_batches, free
        )
        self._wake_at = got.wake_at
        self._nothing_runnable = not got.tasks
        # paced: into a slot free now; pending: what is left, counted near the end
        self._dispatch.add(got.tasks, first=got.paced, pending=got.pending)
        if self._draining or self._stopping:
            # drain() or stop() came while the claim was being written: what it brought
            # waits in the ready queues, which the next step (or the shutdown) gives back
            return started > 0 or bool(got.tasks)
        return self._start_ready() + started > 0 or bool(got.tasks)

    def _gathering(self, backends: Collection[str]) -> bool:
        """Whether the claim or the start of tasks of ``backends`` waits a moment for the
        other tasks of the round that freed the slots (engine.dispatch.gather_until): True
        until they end, or the gather's deadline passes."""
        now = self._clock()
        running = ((b, started) for b, started in self._running() if b in backends)
        until = None if self._stopping else self._dispatch.gather_until(running, now)
        if until is None or (self._gather_deadline is not None and now >= self._gather_deadline):
            self._gather_deadline = None
            return False
        if self._gather_deadline is None:
            self._gather_deadline = now + CLAIM_GATHER
        look = min(until, self._gather_deadline)
        self._claim_at = look if self._claim_at is None else min(self._claim_at, look)
        return True

    async def _anything_runnable(self) -> bool:
        """A read-only look before taking the write lock again after an empty claim."""
        look = await self.db.aread(outlook, self._clock(), self.only_batches)
        self._wake_at = look.wake_at
        return look.runnable

    async def _scope_finished(self) -> bool:
        """True when none of our batches can still make progress here."""
        open_ids = await self.db.aread(unfinished_batch_ids)
        if self.only_batches is not None:
            open_ids = [b for b in open_ids if b in self.only_batches]
        return not open_ids

    # -- one task -----------------------------------------------------------------------------

    async def _execute(self, job: Job) -> None:
        task = job.task
        try:
            images = await self._generate(job)
        except asyncio.CancelledError:
            if job.lost:  # taken away: nothing to record or give back
                self._forget(task)
            raise
        except Exception as exc:
            self._recorder.put(self._failure(job, exc))
        else:
            self._dispatch.observe(task.backend, self._clock() - job.started)
            self.routes.back_up(task.backend)
            self._recorder.put(Generated(job, images, self._clock() - job.started))
        finally:
            self._generation_over(job)

    async def _generate(self, job: Job) -> list[GeneratedImage]:
        """One try on the backend, within the per-task timeout."""
        task = job.task
        known = self.routes.refuse_early(task.backend, self._clock(), task.own_key)
        if known is not None:
            raise known  # nothing to ask: every server is down, or the account is empty
        backend = self.backends[task.backend]
        api_key = await self.user_keys.key_for(task, backend)  # None: the backend's own key
        request = await build_request(self.storage, task, api_key)
        if self._shared is not None:  # the global cap an admin stored, across processes
            await self._shared.take_global(task.id)
        # the start is marked (an attempt spent) and the timeout runs from when the request
        # goes out, not while the pool waits for a server slot (engine.sending)
        images = await send(
            self._starts, task, backend, request, self.settings.task_timeout, job.went_out
        )
        if not images:
            raise ServerError("the backend returned no images")
        return images

    def _generation_over(self, job: Job) -> None:
        if job.generating:
            job.generating = False
            if self._shared is not None:
                self._shared.task_over(job.task.id)
            self._dispatch.finished(job.task.backend)
            self._wake.set()

    def _failure(self, job: Job, exc: BaseException) -> TaskFailure | Moved:
        return judge(job, exc, self._clock(), self.settings, self._rng, self.routes)

    # -- recording, leases, recovery, shutdown --------------------------------------------------

    def _recorded(self, outcomes: list[Outcome]) -> None:
        now = self._clock()
        for outcome in outcomes:
            self._forget(outcome.task)
            self.tally.add(outcome)
            retry_at = outcome.retry_at if isinstance(outcome, TaskFailure) else None
            if retry_at is not None and retry_at > now:
                self._retry_at = min(retry_at, self._retry_at or retry_at)
        self._wake.set()

    def _batch_ended(self) -> None:
        """A batch ended here: companions that wait for that (webhooks) look now."""
        for companion in self._companions:
            if isinstance(companion, Wakeable):
                companion.poke()

    def _renew_interval(self) -> float:
        return min(2.0, self.settings.lease_seconds / 3)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._renew_interval())
            try:
                await self._renew()
            except Exception as exc:
                self.supervision.failed("lease renewal", exc)

    async def _renew(self) -> None:
        """Extend the leases of everything held; stop work on what was taken away.

        Only the jobs and ready tasks asked about are dropped, and before anything else is
        awaited: a task cancelled, retried and claimed again while the renewal was written
        is held again, by a newer job or ready entry, which must be left alone.
        """
        jobs = dict(self._jobs)
        ready = self._dispatch.ready_tasks()
        ids = [*jobs, *(t.id for t in ready)]
        until = self._clock() + self.settings.lease_seconds
        held = await self._renew_writes(ids, until)
        lost = {id(t) for t in ready if t.id not in held}
        if lost:
            self._dispatch.drop(lambda t: id(t) in lost)
        for task_id, job in jobs.items():
            if task_id not in held and self._jobs.get(task_id) is job:
                job.take_away()  # cancelled elsewhere, or presumed dead: stop working
        self.supervision.ok("lease renewal")

    async def _renew_writes(self, ids: list[int], until: float) -> set[int]:
        """The tasks' leases and the server slots' (shared limits), submitted together so
        that the writer commits them as one transaction; the tasks still held."""
        slots = [self._shared.renew(until)] if self._shared is not None else []
        if not ids:  # nothing held: no task write at all
            await asyncio.gather(*slots)
            return set()
        held = asyncio.ensure_future(self.db.awrite(renew_leases, self.owner, ids, until))
        await asyncio.gather(held, *slots)
        return held.result()

    async def _housekeeping(self) -> None:
        """Backends' hours, recovery of dead runners' tasks, fallback moves and admins'
        limits, when due."""
        now = self._clock()
        if self.hours:
            await self._close_hours(now)
        if self._shared is not None:  # servers others found down, the stored global cap
            await self._shared.refresh(now, announced=self.listening())
        if self.routes.troubled and await self.routes.sweep(now, self.only_batches):
            self.wake()  # waiting tasks moved to a fallback that is up
        if now >= self._next_recovery:
            # a read first: the write only when there is something to recover
            look = await self.db.aread(lease_look, time.time())
            dead = dead_local_owners(look.owners, self.owner)
            recovered = 0
            if dead or look.lapsed:
                # our own leases first: after writes failed for a while (full disk) they
                # may have lapsed, and recovering our own running tasks would run them twice
                await self._renew()
                recovered = await self.db.awrite(recover_leases, dead)
            if self._shared is not None:
                await self._shared.forget(dead)
            self._next_recovery = now + max(1.0, self.settings.lease_seconds / 2)
            if recovered:
                log.info("put back %d task(s) whose runner stopped", recovered)
        if self.follow_settings and now >= self._next_settings:
            changes = self._live_changes
            stored = await self.db.aread(stored_concurrency)
            if changes == self._live_changes:  # else read before a live change: stale
                self.limits.apply(*stored)
            self._next_settings = now + (STATE_POLL if self.listening() else SETTINGS_INTERVAL)

    async def _close_hours(self, now: float) -> None:
        """Backends outside their hours start nothing; tasks claimed ahead for one that just
        closed go back to the queue (another process, or a fallback, may take them)."""
        closed = self.hours.closed(now)
        newly = closed - self._dispatch.closed
        self._dispatch.closed = closed
        ids = [t.id for name in newly for t in self._dispatch.ready.get(name, ())]
        if ids:
            self._dispatch.drop(lambda t: t.backend in newly)
            await self.db.awrite(release_tasks, self.owner, ids)

    async def _shutdown(self, helpers: dict[str, asyncio.Task[None]]) -> None:
        self._stopping = self._recorder.stopping = True
        if self._drain_deadline is not None:
            self._drain_deadline.cancel()
        self._stop_event.set()
        lease_keeper = helpers.get("leases")
        committer = helpers.get("commit")
        if committer is None or committer.done():
            committer = asyncio.create_task(self._recorder.run(), name="kiln-commit")
        if lease_keeper is not None:
            lease_keeper.cancel()
        jobs = [j.job for j in self._jobs.values() if j.job is not None]
        for job in self._jobs.values():
            if job.generating and job.job is not None:
                job.job.cancel()
        await asyncio.gather(
            *jobs, *([lease_keeper] if lease_keeper else []), return_exceptions=True
        )
        self._recorder.close()  # the committer records what was produced, then ends
        await asyncio.gather(committer, return_exceptions=True)
        give_back = [tid for tid, j in self._jobs.items() if not j.lost]
        give_back += self._dispatch.ready_ids()
        self._dispatch.drop(lambda t: True)
        if give_back:
            try:
                await self.db.awrite(release_tasks, self.owner, give_back)
                self.tally.given_back += len(give_back)
            except Exception:
                log.exception(
                    "could not give back %d task(s); their leases will lapse", len(give_back)
                )
        self._jobs.clear()
        if self._shared is not None:
            await self._shared.close()
        await self._finish_companions(helpers)

    async def _finish_companions(self, helpers: dict[str, asyncio.Task[None]]) -> None:
        """Once the last outcomes are committed and the tasks given back (a batch's end is
        in the database): each companion's last, bounded work, then it is stopped."""
        for companion in self._companions:
            running = helpers.get(companion.name)
            await companion.finish()
            if running is not None:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
