"""``/metrics`` in the Prometheus text format (version 0.0.4), written by hand.

Four families the issue asks for: queue depth, tasks by state, a task
duration histogram per backend, backend errors (failed tasks and retries),
plus whether each backend is marked down and the scheduler's concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from pixelkiln.db.stats import (
    DURATION_BUCKETS,
    BackendFigures,
    backend_figures,
    queue_depth,
    task_counts,
)
from pixelkiln.engine.scheduler import SchedulerStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Snapshot:
    depth: int
    counts: dict[str, int]
    backends: dict[str, BackendFigures]


def snapshot(conn: Connection) -> Snapshot:
    return Snapshot(queue_depth(conn), task_counts(conn), backend_figures(conn))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snap: Snapshot, backends: list[str], status: SchedulerStatus | None) -> str:
    lines = [
        "# HELP kiln_queue_depth Tasks waiting to run in unfinished batches.",
        "# TYPE kiln_queue_depth gauge",
        f"kiln_queue_depth {snap.depth}",
        "# HELP kiln_tasks Tasks by state.",
        "# TYPE kiln_tasks gauge",
        *(f'kiln_tasks{{state="{s}"}} {n}' for s, n in snap.counts.items()),
    ]
    lines += _histogram(snap.backends)
    lines += [
        "# HELP kiln_backend_failed_tasks_total Tasks that failed for good, per backend.",
        "# TYPE kiln_backend_failed_tasks_total counter",
        *(
            f'kiln_backend_failed_tasks_total{{backend="{_label(b)}"}} {f.failed}'
            for b, f in snap.backends.items()
        ),
        "# HELP kiln_backend_retries_total Failed tries that were retried, per backend.",
        "# TYPE kiln_backend_retries_total counter",
        *(
            f'kiln_backend_retries_total{{backend="{_label(b)}"}} {f.retries}'
            for b, f in snap.backends.items()
        ),
    ]
    if status is not None:
        lines += [
            "# HELP kiln_backend_up 0 while every server of the backend is down.",
            "# TYPE kiln_backend_up gauge",
            *(
                f'kiln_backend_up{{backend="{_label(b)}"}} {int(b not in status.backends_down)}'
                for b in backends
            ),
            "# HELP kiln_concurrency Global limit of tasks running at once.",
            "# TYPE kiln_concurrency gauge",
            f"kiln_concurrency {status.concurrency}",
            "# HELP kiln_generating Tasks being generated now, per backend.",
            "# TYPE kiln_generating gauge",
            *(
                f'kiln_generating{{backend="{_label(b)}"}} {n}'
                for b, n in status.generating.items()
            ),
        ]
    return "\n".join(lines) + "\n"


def _histogram(figures: dict[str, BackendFigures]) -> list[str]:
    lines = [
        "# HELP kiln_task_duration_seconds Generation time of successful tasks.",
        "# TYPE kiln_task_duration_seconds histogram",
    ]
    for backend, f in figures.items():
        name = _label(backend)
        for bound, count in zip(DURATION_BUCKETS, f.buckets, strict=True):
            lines.append(
                f'kiln_task_duration_seconds_bucket{{backend="{name}",le="{bound:g}"}} {count}'
            )
        lines += [
            f'kiln_task_duration_seconds_bucket{{backend="{name}",le="+Inf"}} {f.succeeded}',
            f'kiln_task_duration_seconds_sum{{backend="{name}"}} {f.duration_sum:.6f}',
            f'kiln_task_duration_seconds_count{{backend="{name}"}} {f.succeeded}',
        ]
    return lines
