"""The scheduler's committer: outcomes written in groups, files first, and never given up lightly.

Whatever finished while the last group was written forms the next group: its
image files are written in one thread hop, then its rows (task states, image
rows, events, fallback moves) commit in one transaction, so a row never
lacks its file. While other tasks are still generating, a group waits for
their outcomes before it is written: tasks started together (a slow
generator's slots, filled at once) finish within milliseconds of each other,
and one write for them costs the writer a fraction of one each. How long is
the scheduler's to say (``gather_wait``): not while a request is about to go
out (sending comes first), then as engine.dispatch.outcomes_wait says (the
rest of a round; a slow round's records once the next round has gone out; a
stream of fast outcomes 20 ms). The last task running is recorded at once.
A write that fails (disk full, database gone) is backed off and tried again
while the scheduler keeps the tasks' leases, so nothing is lost or done twice;
only at shutdown does a failing group give up (the leases lapse and the tasks
are recovered).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Mapping

from pixelkiln.backends.base import Backend
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.db.routing import move_tasks
from pixelkiln.db.tasks import TaskFailure, TaskResult, record_outcomes
from pixelkiln.db.transitions import DroppedImage
from pixelkiln.engine.outcomes import Generated, Job, Moved, Outcome
from pixelkiln.engine.supervisor import Supervision
from pixelkiln.engine.task_io import store_images
from pixelkiln.models import EventType
from pixelkiln.storage import Storage

log = logging.getLogger("pixelkiln.engine")

#: storage errors that are the machine's, not the task's: the group is written again later
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class Recorder:
    """Records outcomes put to it until :meth:`close`; see the module docstring."""

    def __init__(
        self,
        *,
        db: Database,
        storage: Storage,
        backends: Mapping[str, Backend],
        owner: str,
        supervision: Supervision,
        failure_for: Callable[[Job, Exception], TaskFailure | Moved],
        recorded: Callable[[list[Outcome]], None],
        pause: Callable[[float], Awaitable[None]],
        batch_ended: Callable[[], None] | None = None,
        gather_wait: Callable[[float], float] | None = None,
    ) -> None:
        self.db = db
        self.storage = storage
        self.backends = backends  #: the records say what each backend took
        self.owner = owner
        self.supervision = supervision
        self.stopping = False  #: at shutdown a failing group is dropped, not retried
        #: a group could not be recorded and waits to be tried again (a full disk): the
        #: scheduler starts and claims nothing meanwhile, so that it does not generate (pay
        #: for) images that could not be stored and only wait in memory
        self.failing = False
        self._failure_for = failure_for
        self._recorded = recorded
        self._pause = pause
        #: called (on the loop) after a group that ended a batch committed: its webhook is due
        self._batch_ended = batch_ended
        #: seconds a group should wait still, given how long it waited (0: write it now)
        self._gather_wait = gather_wait or (lambda waited: 0.0)
        self._queue: asyncio.Queue[Outcome | None] = asyncio.Queue()

    def put(self, outcome: Outcome) -> None:
        self._queue.put_nowait(outcome)

    def close(self) -> None:
        """Record what is queued, then end :meth:`run`."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """Record outcomes in groups: whatever finished while the last group was written."""
        while True:
            first = await self._queue.get()
            if first is not None:
                await self._gather()
            outcomes = [first] if first is not None else []
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    first = None
                else:
                    outcomes.append(more)
            if outcomes:
                await self._record(outcomes)
            if first is None:
                return

    async def _gather(self) -> None:
        """Wait as long as the scheduler says the group should (see the module), asking
        again after each wait."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not self.stopping:
            wait = self._gather_wait(loop.time() - began)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _record(self, outcomes: list[Outcome]) -> None:
        generated = [o for o in outcomes if isinstance(o, Generated)]
        moved = [o for o in outcomes if isinstance(o, Moved)]
        failures = [o for o in outcomes if isinstance(o, TaskFailure)]
        failures += [m.failure for m in moved]
        moves = [(m.task, m.target, m.why) for m in moved]
        stored: tuple[list[TaskResult], list[TaskFailure]] | None = None
        while True:
            try:
                # the files once: a retried write (the database was full) does not rewrite them
                if stored is None:
                    stored = (
                        await asyncio.to_thread(self._store_all, generated)
                        if generated
                        else ([], [])
                    )
                results, more = stored
                dropped, ended = await self.db.awrite(self._write, results, failures + more, moves)
            except Exception as exc:
                if self.stopping:
                    log.exception("could not record %d task outcome(s)", len(outcomes))
                    break
                self.failing = True
                await self._pause(self.supervision.failed("recording", exc))
                continue
            self.failing = False
            self.supervision.ok("recording")
            if dropped:  # after the commit: a row never lacks its file
                await asyncio.to_thread(self._remove_files, dropped)
            if ended and self._batch_ended is not None:
                self._batch_ended()
            break
        self._recorded(outcomes)

    def _write(
        self,
        tx: Tx,
        results: list[TaskResult],
        failures: list[TaskFailure],
        moves: list[tuple[ClaimedTask, str, str]],
    ) -> tuple[list[DroppedImage], bool]:
        """Record the group; returns the images of earlier runs a regenerate replaced, and
        whether a batch ended."""
        dropped: list[DroppedImage] = []
        accepted = record_outcomes(tx, self.owner, results, failures, dropped)
        if moves:  # in the same transaction: a task is never pending on the wrong backend
            move_tasks(tx, [m for m in moves if m[0].id in accepted])
        return dropped, any(e.type == EventType.DONE for e in tx.events)

    def _remove_files(self, dropped: list[DroppedImage]) -> None:
        """Delete the files of replaced images (worker thread); one that cannot be is logged:
        its row is gone already, so it is only disk space."""
        for image in dropped:
            try:
                self.storage.delete_image(image.path, image.batch_id, image.id)
            except OSError as exc:
                log.warning("could not delete the replaced image %s: %s", image.path, exc)

    def _store_all(self, generated: list[Generated]) -> tuple[list[TaskResult], list[TaskFailure]]:
        """Write the image files of a group (worker thread); a task that cannot be stored fails.

        A full disk is not the task's fault: it raises, and the group is written again later.
        """
        results: list[TaskResult] = []
        failures: list[TaskFailure] = []
        for g in generated:
            if g.job.lost:
                continue  # taken away meanwhile: its files are someone else's to write
            try:
                backend = self.backends.get(g.task.backend)
                stored = store_images(self.storage, g.task, g.images, backend)
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
                    raise
                outcome = self._failure_for(g.job, exc)
                assert isinstance(outcome, TaskFailure)  # a storage error never moves a task
                failures.append(outcome)
            else:
                results.append(TaskResult(g.task, stored, g.duration))
        return results, failures
