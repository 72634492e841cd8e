"""The batch img2img service's shapes: its envelope, queues, tasks, presets and statuses.

The service (a Node.js/Express back end with a MySQL ``batch_queues`` /
``batch_tasks`` / ``preset_prompts`` schema) answers ``{"success": true, "data": …}``
and ``{"success": false, "error": …}``; rows are its table rows as JSON, with
timestamps as ISO 8601 strings. A queue is one of our batches, a task one of
our tasks; its statuses are fewer than ours, so they are mapped here, once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse

from pixelkiln.api.views import ImageLinks
from pixelkiln.db.presets import Preset
from pixelkiln.models import Batch, BatchStatus, ImageRecord, Task, TaskStatus

#: our batch status → the service's queue status (pending processing completed failed cancelled)
QUEUE_STATUS = {
    BatchStatus.QUEUED: "pending",
    BatchStatus.PAUSED: "pending",
    BatchStatus.RUNNING: "processing",
    BatchStatus.COMPLETED: "completed",
    BatchStatus.PARTIAL: "completed",  # the service: "failed" only when every image failed
    BatchStatus.FAILED: "failed",
    BatchStatus.CANCELLED: "cancelled",
}
#: our task status → the service's (pending processing completed failed); it marks the
#: tasks of a cancelled queue failed with a message, and so do we
TASK_STATUS = {
    TaskStatus.PENDING: "pending",
    TaskStatus.RUNNING: "processing",
    TaskStatus.SUCCEEDED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}
CANCELLED_MESSAGE = "cancelled"


def ok(data: Any = None, **fields: Any) -> dict[str, Any]:
    """``{"success": true, "data": …}`` plus top-level fields (the create answer has some)."""
    body: dict[str, Any] = {"success": True}
    if data is not None:
        body["data"] = data
    return {**body, **fields}


def render_error(status: int, error: dict[str, Any]) -> JSONResponse:
    """Our error in the service's envelope; ``message`` too, which its front end also shows."""
    message = str(error.get("message", "error"))
    body: dict[str, Any] = {
        "success": False,
        "error": message,
        "message": message,
        "code": error.get("code", "error"),
    }
    if error.get("field"):
        body["field"] = error["field"]
    if error.get("problems"):
        body["problems"] = error["problems"]
    return JSONResponse(body, status_code=status)


def timestamp(epoch: float | None) -> str | None:
    """Epoch seconds → ``2025-01-31T12:00:00.000Z``, as the service's JSON has its dates."""
    if epoch is None:
        return None
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def queue_row(batch: Batch, username: str | None = None) -> dict[str, Any]:
    """A ``batch_queues`` row for one of our batches."""
    counts, defaults = batch.counts, batch.defaults
    row: dict[str, Any] = {
        "id": batch.id,
        "user_id": batch.owner_id,
        "batch_name": batch.name,
        "prompt": defaults.get("prompt", ""),
        "model": defaults.get("model") or defaults.get("backend"),
        "total_images": counts.total,
        "completed_images": counts.succeeded,
        "failed_images": counts.failed + counts.cancelled,
        "status": QUEUE_STATUS[batch.status],
        "created_at": timestamp(batch.created_at),
        "updated_at": timestamp(batch.finished_at or batch.started_at or batch.created_at),
        "completed_at": timestamp(batch.finished_at),
    }
    if username is not None:
        row["username"] = username
    return row


def task_row(
    task: Task, user_id: int | None, images: list[ImageRecord], links: ImageLinks
) -> dict[str, Any]:
    """A ``batch_tasks`` row: the newest image is ``generated_image_url``. The URLs are
    signed when auth is on, so the service's front end shows them in ``<img src>``."""
    first = images[0] if images else None
    error = task.last_error if task.status != TaskStatus.SUCCEEDED else None
    if task.status == TaskStatus.CANCELLED:
        error = error or CANCELLED_MESSAGE
    return {
        "id": task.id,
        "queue_id": task.batch_id,
        "user_id": user_id,
        "original_filename": task.key,
        "original_image_url": links.input(first.id) if first else None,
        "prompt": task.prompt,
        "model": task.params.get("model") or task.backend,
        "generated_image_url": links.file(first.id) if first else None,
        "generated_images": [links.file(i.id) for i in images],
        "status": TASK_STATUS[task.status],
        "error_message": error,
        "retry_count": max(0, task.attempts - 1),
        "created_at": timestamp(task.created_at),
        "started_at": timestamp(task.started_at),
        "completed_at": timestamp(task.finished_at),
    }


def preset_row(preset: Preset) -> dict[str, Any]:
    """A ``preset_prompts`` row."""
    return {
        "id": preset.id,
        "title": preset.title,
        "content": preset.content,
        "negative_prompt": preset.negative_prompt,
        "category": preset.category,
        "sort_order": preset.position,
        "is_active": 1 if preset.active else 0,
        "created_at": timestamp(preset.created_at),
        "updated_at": timestamp(preset.updated_at),
    }
