"""Reports of a batch: the facts as a dict (JSON), and as text for a terminal or a log.

>>> report = build_report(db, batch_id)          # doctest: +SKIP
>>> print(render_text(report))                   # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from pixelkiln.db.batches import get_batch
from pixelkiln.db.records import image_sources
from pixelkiln.db.routing import tasks_fallen_back
from pixelkiln.db.tasks import list_tasks
from pixelkiln.db.webhooks import list_deliveries
from pixelkiln.models import Batch, BatchStatus, Task, TaskStatus

#: who sends a delivery still pending when this process is gone
RETRIED_BY = "retried by the next `kiln serve`/`kiln run`/`kiln webhooks deliver`"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def eta_seconds(batch: Batch, now: float | None = None) -> float | None:
    """Remaining seconds at the rate tasks have finished so far; None when unknown."""
    c = batch.counts
    if batch.status.finished or not batch.started_at or not c.done:
        return 0.0 if batch.status.finished else None
    elapsed = (now or time.time()) - batch.started_at
    return (c.total - c.done) * elapsed / c.done


def build_report(conn: Connection, batch_id: int) -> dict[str, Any]:
    """Everything a report shows: time range, totals, rates, per-backend figures, failures."""
    batch = get_batch(conn, batch_id)
    tasks = list_tasks(conn, batch_id)
    c = batch.counts
    end = batch.finished_at or time.time()
    elapsed = end - batch.started_at if batch.started_at else 0.0
    durations = [t.duration for t in tasks if t.status == TaskStatus.SUCCEEDED and t.duration]
    return {
        "batch": {
            "id": batch.id,
            "name": batch.name,
            "status": str(batch.status),
            "source": batch.source,
            "priority": batch.priority,
        },
        "time": {
            "created": _iso(batch.created_at),
            "started": _iso(batch.started_at),
            "finished": _iso(batch.finished_at),
            "elapsed_seconds": round(elapsed, 3),
        },
        "totals": {
            "tasks": c.total,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "cancelled": c.cancelled,
            "pending": c.pending,
            "running": c.running,
            "images": c.images,
            "fell_back": tasks_fallen_back(conn, batch_id),  #: tasks moved to a fallback backend
        },
        "success_rate": round(c.succeeded / c.total, 4) if c.total else 0.0,
        "seconds_per_task": round(elapsed / c.done, 4) if c.done else None,
        "mean_generation_seconds": round(sum(durations) / len(durations), 4) if durations else None,
        "images_per_second": round(c.images / elapsed, 3) if elapsed else None,
        "eta_seconds": eta_seconds(batch),
        "backends": _backends(tasks, image_sources(conn, batch_id)),
        "failures": [
            {
                "key": t.key,
                "position": t.position,
                "status": str(t.status),
                "attempts": t.attempts,
                "error": t.last_error or "",
            }
            for t in tasks
            if t.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
        ],
        "webhook": webhook_facts(conn, batch),
    }


def webhook_facts(conn: Connection, batch: Batch) -> dict[str, Any] | None:
    """The batch's webhook and its deliveries (oldest first, as the API lists them); None
    without a webhook."""
    if batch.webhook is None:
        return None
    from pixelkiln.service.webhooks import delivery_public  # (the webhook sender: only here)

    rows = list_deliveries(conn, batch.id)
    return {
        "url": batch.webhook,
        "deliveries": [delivery_public(d).model_dump(mode="json") for d in rows],
    }


def webhook_line(batch_id: int, status: str, webhook: dict[str, Any] | None) -> str | None:
    """What came of the webhook of the batch's latest end, in words (None: no webhook, or
    the batch has not ended)."""
    if webhook is None or not BatchStatus(status).finished:
        return None
    if not webhook["deliveries"]:
        return f"webhook not delivered yet: not tried; {RETRIED_BY}"
    last = webhook["deliveries"][-1]
    error = last["last_error"] or "-"
    if last["status"] == "delivered":
        return f"webhook delivered ({last['response_code']})"
    if last["status"] == "pending":
        return f"webhook not delivered yet: {error}; {RETRIED_BY}"
    return (
        f"webhook not delivered: {error}; gave up after {_tries(last['attempts'])} "
        f"(see `kiln webhooks list {batch_id}`)"
    )


def _backends(tasks: list[Task], sources: dict[tuple[str, str], int]) -> dict[str, Any]:
    """Per backend: its tasks now, and the images it made (by server). A task rerouted to
    a fallback counts under its current backend; its images under the one that made them."""
    names = sorted({t.backend for t in tasks} | {name for name, _ in sources})
    tasks_of = Counter(t.backend for t in tasks)
    ok = Counter(t.backend for t in tasks if t.status == TaskStatus.SUCCEEDED)
    out: dict[str, Any] = {}
    for name in names:
        servers = {url: n for (b, url), n in sorted(sources.items()) if b == name}
        out[name] = {
            "tasks": tasks_of[name],
            "succeeded": ok[name],
            "images": sum(servers.values()),
            "servers": servers,  # "" = a local generator
        }
    return out


def _tries(count: int) -> str:
    return f"{count} try" if count == 1 else f"{count} tries"


def render_text(report: dict[str, Any], max_failures: int = 20) -> str:
    """The report as a few readable lines (the console summary and `kiln report`)."""
    b, t, tot = report["batch"], report["time"], report["totals"]
    lines = [
        f"Batch {b['id']} '{b['name']}': {b['status']}",
        f"  time      {t['started'] or '-'} → {t['finished'] or '(running)'}"
        f"  ({t['elapsed_seconds']:.1f} s)",
        f"  tasks     {tot['succeeded']} succeeded, {tot['failed']} failed, "
        f"{tot['cancelled']} cancelled, {tot['pending'] + tot['running']} unfinished "
        f"of {tot['tasks']}  (success rate {report['success_rate']:.1%})",
        f"  images    {tot['images']}"
        + (f"  ({report['images_per_second']:.2f}/s)" if report["images_per_second"] else ""),
    ]
    if tot.get("fell_back"):
        ran = ", ".join(f"{n} {v['succeeded']}" for n, v in report["backends"].items())
        lines.append(
            f"  fallback  {tot['fell_back']} task(s) moved to a fallback backend; "
            f"succeeded per backend: {ran}"
        )
    if report["seconds_per_task"] is not None:
        mean = report["mean_generation_seconds"]
        lines.append(
            f"  per task  {report['seconds_per_task']:.3f} s wall"
            + (f", {mean:.3f} s generating" if mean is not None else "")
        )
    for name, figures in report["backends"].items():
        made = ", ".join(f"{url}: {n}" for url, n in figures["servers"].items() if url)
        lines.append(
            f"  backend   {name}: {figures['images']} image(s)" + (f" ({made})" if made else "")
        )
    hook = webhook_line(b["id"], b["status"], report.get("webhook"))
    if hook is not None:
        lines.append(f"  {hook}")
    failures = report["failures"]
    if failures:
        lines.append(f"  failures ({len(failures)}):")
        reasons = Counter(f["error"] or "-" for f in failures)
        if len(reasons) < len(failures):  # a night's worth of one reason reads as one line
            for reason, count in reasons.most_common(5):
                lines.append(f"    {count} × {reason}")
        for f in failures[:max_failures]:
            lines.append(
                f"    #{f['position']} {f['key']}: {f['status']} after "
                f"{f['attempts']} attempt(s): {f['error'] or '-'}"
            )
        if len(failures) > max_failures:
            lines.append(f"    … and {len(failures) - max_failures} more (see the JSON report)")
    return "\n".join(lines)
