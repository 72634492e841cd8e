"""Domain records shared by the engine, the CLI and the API: statuses and read-only views."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    RUNNING = "running"  #: claimed by a runner holding a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    BATCH_UPDATE = "batch_update"  #: the batch changed status
    INFO = "info"
    PROGRESS = "progress"  #: a task finished: {current, total, message, item}
    IMAGE_GENERATED = "image_generated"  #: {item_key, task_id, image: {id, path, width, height}}
    WARNING = "warning"  #: a try failed and will be retried, or work is waiting
    ERROR = "error"  #: a task failed for good: {error, item_key}
    DONE = "done"  #: the batch finished: {status, summary}


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
    source: str  #: cli, api, web, project, schedule
    owner_id: int | None
    max_attempts: int
    counts: BatchCounts
    created_at: float  #: epoch seconds, as every *_at field
    started_at: float | None
    finished_at: float | None
    scheduled_at: float | None
    defaults: dict[str, Any] = field(default_factory=dict)


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
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration: float | None  #: seconds the successful (or last) try took


#: request parameters a generator may take or ignore (``GenerationRequest`` field names);
#: an image records only those its backend took (``Backend.honours``)
GENERATION_PARAMS = ("negative_prompt", "steps", "cfg_scale", "sampler", "seed", "denoise")


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
