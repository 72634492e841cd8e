"""Domain records shared by the engine, the CLI and the API: statuses and read-only views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelkiln.storage import StoredImage


class BatchStatus(StrEnum):
    QUEUED = "queued"  #: waiting for its first task to start (or its scheduled time)
    RUNNING = "running"
    PAUSED = "paused"  #: no new task starts until resumed
    COMPLETED = "completed"  #: every task succeeded
    PARTIAL = "partial"  #: some tasks succeeded, some failed or were cancelled
    FAILED = "failed"  #: no task succeeded
    CANCELLED = "cancelled"  #: stopped by a user

    @property
    def finished(self) -> bool:
        return self in FINISHED_BATCH


FINISHED_BATCH = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.PARTIAL, BatchStatus.FAILED, BatchStatus.CANCELLED}
)


class TaskStatus(StrEnum):
    PENDING = "pending"  #: waiting to be claimed (maybe until next_attempt_at)
    RUNNING = "running"  #: claimed under a lease; generating once started_at is set
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    """What an event reports; its fields: ``db.events.PAYLOADS`` (and docs/api.md)."""

    BATCH_UPDATE = "batch_update"  #: the batch changed status
    INFO = "info"
    PROGRESS = "progress"  #: a task finished
    IMAGE_GENERATED = "image_generated"  #: an image was stored
    WARNING = "warning"  #: a try failed and will be retried, or work is waiting
    ERROR = "error"  #: a task failed for good
    DONE = "done"  #: the batch finished


@dataclass(frozen=True)
class BatchCounts:
    """How many tasks of a batch are in each state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    images: int = 0  #: images written so far

    @property
    def done(self) -> int:
        """Tasks in a final state."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        """Share of tasks in a final state, 0–1."""
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class Batch:
    """A batch as stored."""

    id: int
    name: str
    status: BatchStatus
    priority: int
    source: str  #: cli, api, web, project, schedule; img2img, slides (drop-in APIs)
    owner_id: int | None
    max_attempts: int
    counts: BatchCounts
    created_at: float  #: epoch seconds, as every *_at field
    started_at: float | None
    finished_at: float | None
    scheduled_at: float | None
    defaults: dict[str, Any] = field(default_factory=dict)
    max_workers: int | None = None  #: at most this many of its tasks generate at once
    delay: float | None = None  #: seconds between starting two of its tasks
    webhook: str | None = None  #: URL POSTed the batch summary when it ends
    extra: dict[str, Any] = field(default_factory=dict)  #: what a face keeps (compat APIs)
    run_id: int | None = None  #: the run it belongs to (a project run's batch)


@dataclass(frozen=True)
class Task:
    """A task as stored."""

    id: int
    batch_id: int
    position: int  #: 1-based order in the batch
    key: str
    status: TaskStatus
    backend: str
    prompt: str
    negative_prompt: str
    params: dict[str, Any]  #: model, width, height, steps, cfg_scale, sampler, seed, n, ...
    inputs: dict[str, Any]  #: init_image / reference_images as asset paths
    attempts: int  #: tries that started generating (a claim alone spends none)
    max_attempts: int
    last_error: str | None
    created_at: float
    started_at: float | None  #: when the current (or last) try started generating
    finished_at: float | None
    duration: float | None  #: seconds the successful (or last) try took
    item: dict[str, Any] | None = None  #: the item it was made from (storyboard item, slide)
    run: int = 0  #: times it was regenerated; its images of earlier runs are history
    axes: dict[str, Any] | None = None  #: a sweep task's value per axis {"x": {"cfg_scale": 7}}


#: request parameters a generator may take or ignore (``GenerationRequest`` field names);
#: an image records only those its backend took (``Backend.honours``)
GENERATION_PARAMS = ("negative_prompt", "steps", "cfg_scale", "sampler", "seed", "denoise")


@dataclass(frozen=True)
class ClaimedTask:
    """A task a runner now holds a lease on: what it needs to run it."""

    id: int
    batch_id: int
    position: int
    key: str
    backend: str
    prompt: str
    negative_prompt: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    attempts: int  #: the number of this try (counted once it starts)
    max_attempts: int
    own_key: bool = False  #: runs on its owner's own provider key (see engine.credentials)
    run: int = 0  #: the task's run (0 = first; each regenerate adds 1): its images' ``run``
    #: its batch has a ``delay``: claimed into a slot free now, it starts at once, and its
    #: start (not its claim) is when the batch's wait for its next start begins
    paced: bool = False


@dataclass(frozen=True)
class TaskResult:
    """A successful try: the images already written to storage."""

    task: ClaimedTask
    images: Sequence[tuple[StoredImage, int]]  #: (file record, seed)
    duration: float


@dataclass(frozen=True)
class TaskFailure:
    """A failed try. ``retry_at`` None means the task fails for good."""

    task: ClaimedTask
    error: str
    retry_at: float | None
    duration: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  #: error_type
    spend_attempt: bool = True  #: False when the task only waited (every server down)


@dataclass(frozen=True)
class ImageRecord:
    """One generated image file, and who made it with what."""

    id: int
    task_id: int
    batch_id: int
    index: int  #: 0-based within its task
    path: str  #: relative to the data folder
    width: int  #: as the generator returned it (read from the file, not the request)
    height: int
    bytes: int
    sha256: str
    seed: int
    created_at: float
    backend: str = ""  #: name of the backend that made it
    server: str = ""  #: URL of the server that made it, without credentials; "" if local
    model: str = ""  #: the model used: the generator's word, else what was sent
    #: the GENERATION_PARAMS the generator took, as sent; None for images recorded
    #: before migration 0005 (their task's parameters stand in)
    params: dict[str, Any] | None = None
    run: int = 0  #: the task's run that made it (0 = first; each regenerate adds 1)
    superseded: bool = False  #: a newer run of its task replaced it: kept as history

    @property
    def seed_sent(self) -> int | None:
        """The seed, if the generator took one (OpenAI-compatible APIs take none)."""
        return self.seed if self.params is None or "seed" in self.params else None


@dataclass(frozen=True)
class Event:
    """One appended event; ``id`` is increasing and feeds SSE ``Last-Event-ID``."""

    id: int
    batch_id: int
    task_id: int | None
    type: EventType
    data: dict[str, Any]
    created_at: float


#: the largest row id: ids and offsets are 64-bit integers in every database we use
MAX_ID = 2**63 - 1


def parse_id(text: str, *, low: int = 1) -> int | None:
    """``text`` as an integer in low…MAX_ID, or None: for ids that arrive as free text.

    ``str.isdigit()`` alone is not enough: it accepts "²", which int() refuses.
    """
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(MAX_ID)):  # also spares int() a 4,300-digit string
        return None
    number = int(digits)
    return number if low <= number <= MAX_ID else None
