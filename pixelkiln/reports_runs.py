"""The report of a run (a nightly project run), in the studio's shape: JSON facts and text.

Each project's figures come from its batch's own report (:func:`pixelkiln.reports.build_report`);
a project that never had a batch (missing files, an unknown channel) is failed with
its reason. Times are local ISO 8601, as a person reading the night's log expects.

>>> report = db.read(build_run_report, run_id)      # doctest: +SKIP
>>> print(render_run_text(report))                  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pixelkiln.db.runs import RunStatus, get_run, run_batches
from pixelkiln.models import BatchStatus
from pixelkiln.reports import build_report

#: what a task's error says when it failed because every server of its backend was down
ALL_DOWN = "every server down"


def local_iso(ts: float | None) -> str | None:
    """``ts`` as local time with its offset: ``2026-05-01T00:00:03+08:00``."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else None


def build_run_report(
    conn: Connection,
    run_id: int,
    files: dict[str, str] | None = None,
    ending: tuple[RunStatus, float] | None = None,
) -> dict[str, Any]:
    """Everything the run report shows; see docs/projects.md#the-run-report.

    ``ending`` (status, finished at): the report of the run as it is about to end
    with that status at that time (its driver writes it with the end).
    """
    run = get_run(conn, run_id)
    if ending is not None:
        run = replace(run, status=ending[0], finished_at=ending[1])
    batches = {b.name: b for b in run_batches(conn, run_id)}
    projects = [_project(conn, p, batches.get(p["pid"])) for p in run.config.get("projects", [])]
    ended = [p for p in projects if p["status"] in ("succeeded", "failed")]
    succeeded = [p for p in projects if p["status"] == "succeeded"]
    start = run.started_at or run.created_at
    end = run.finished_at or time.time()
    return {
        "run": {
            "id": run.id,
            "name": run.name,
            "description": run.config.get("description", ""),
            "status": str(run.status),
            "source": run.source,
            "config": run.config.get("file", ""),
            "schedule_id": run.schedule_id,
        },
        "time_range": {"start": local_iso(start), "end": local_iso(run.finished_at)},
        "total_duration_seconds": round(end - start, 3),
        "projects_total": len(projects),
        "projects_succeeded": len(succeeded),
        "projects_failed": len(ended) - len(succeeded),
        "projects_unfinished": len(projects) - len(ended),
        "success_rate": round(len(succeeded) / len(projects), 4) if projects else 0.0,
        "images_total": sum(p["images"] for p in projects),
        "images_per_project": {p["pid"]: p["images"] for p in projects},
        "seconds_per_project": {p["pid"]: p["seconds"] for p in projects},
        "failed_projects": [
            {"pid": p["pid"], "reason": p["reason"], "missing": p["missing"]}
            for p in projects
            if p["status"] == "failed"
        ],
        "projects": projects,
        "files": dict(files or run.config.get("files", {})),
    }


def _project(conn: Connection, plan: dict[str, Any], batch: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "pid": plan["pid"],
        "status": "pending",
        "batch_id": None,
        "tasks": len((plan.get("spec") or {}).get("tasks", [])),
        "succeeded": 0,
        "failed": 0,
        "images": 0,
        "seconds": 0.0,
        "started": None,
        "finished": None,
        "reason": "",
        "missing": list(plan.get("missing", [])),
    }
    if plan.get("problem"):
        return facts | {"status": "failed", "reason": plan["problem"]}
    if batch is None:
        return facts
    report = build_report(conn, batch.id)
    totals = report["totals"]
    status = BatchStatus(report["batch"]["status"])
    facts |= {
        "batch_id": batch.id,
        "tasks": totals["tasks"],
        "succeeded": totals["succeeded"],
        "failed": totals["failed"] + totals["cancelled"],
        "images": totals["images"],
        "seconds": report["time"]["elapsed_seconds"],
        "started": local_iso(batch.started_at),
        "finished": local_iso(batch.finished_at),
    }
    if not status.finished:
        return facts | {"status": "running"}
    if status == BatchStatus.COMPLETED:
        return facts | {"status": "succeeded"}
    return facts | {"status": "failed", "reason": failure_reason(report)}


def failure_reason(report: dict[str, Any]) -> str:
    """Why a project's batch failed, in a few words, from its tasks' errors."""
    failures = report["failures"]
    if report["batch"]["status"] == str(BatchStatus.CANCELLED) and not any(
        f["status"] == "failed" for f in failures
    ):
        return "cancelled"
    errors = [f["error"] for f in failures if f["status"] == "failed"]
    if errors and all(ALL_DOWN in e for e in errors):
        return f"all servers down ({errors[0]})"
    common = Counter(errors).most_common(1)
    count, total = len(failures), report["totals"]["tasks"]
    return f"{count} of {total} task(s) failed" + (f": {common[0][0]}" if common else "")


def render_run_text(report: dict[str, Any]) -> str:
    """The run report as the console summary (and the log's last lines)."""
    run, span = report["run"], report["time_range"]
    lines = [
        f"Run {run['id']} '{run['name']}': {run['status']}",
        f"  time      {span['start'] or '-'} → {span['end'] or '(running)'}"
        f"  ({report['total_duration_seconds']:.1f} s)",
        f"  projects  {report['projects_succeeded']} succeeded, {report['projects_failed']} "
        f"failed of {report['projects_total']}  (success rate {report['success_rate']:.1%})",
        f"  images    {report['images_total']}",
    ]
    for p in report["projects"]:
        mark = {"succeeded": "ok", "failed": "FAILED"}.get(p["status"], p["status"])
        batch = f" batch {p['batch_id']}" if p["batch_id"] else ""
        lines.append(
            f"    {p['pid']}: {mark}, {p['images']} image(s), {p['seconds']:.1f} s{batch}"
            + (f" - {p['reason']}" if p["reason"] else "")
        )
    for name, path in report["files"].items():
        lines.append(f"  {name:<9} {path}")
    return "\n".join(lines)
