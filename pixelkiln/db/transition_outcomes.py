"""Recording finished tries, the part of :mod:`.transitions` on every task's way out.

A group of outcomes from one runner is recorded in one transaction: successes
with their image rows (and a regenerated task's earlier runs made history),
failures to be tried again later, and failures for good (refunded); then the
counters, the events (images, progress, warnings, errors) and the ends of the
batches that have nothing left open. Only :mod:`.transitions` calls this
module; callers use ``transitions.record_outcomes``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pixelkiln.db import driver, returning
from pixelkiln.db import events as ev
from pixelkiln.db import transition_runs as runs
from pixelkiln.db import transition_sql as sql
from pixelkiln.db.database import Tx
from pixelkiln.db.transition_counts import Counts, Progress, finish_done
from pixelkiln.db.transition_refunds import refund_failed
from pixelkiln.db.transition_runs import DroppedImage
from pixelkiln.models import ClaimedTask, TaskFailure, TaskResult, TaskStatus

PENDING, RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING
SUCCEEDED, FAILED = TaskStatus.SUCCEEDED, TaskStatus.FAILED


def record_outcomes(
    tx: Tx,
    owner: str,
    results: Sequence[TaskResult],
    failures: Sequence[TaskFailure],
    dropped: list[DroppedImage] | None = None,
) -> set[int]:
    """Record a group of finished tries (succeed, retry later, fail); returns the ids accepted.

    A try whose lease ``owner`` lost (presumed dead, or the batch was
    cancelled) changes nothing. Images of earlier runs that a regenerated task's
    success deleted (``replace``) are added to ``dropped``: remove their files
    once this transaction has committed.
    """
    ids = [r.task.id for r in results] + [f.task.id for f in failures]
    if not ids:
        return set()
    gone: list[int] | None = None  # batches of images dropped, when already moved
    if tx.dialect == "postgresql" and not failures:  # successes alone: one statement
        held, gone = _succeed_held_pg(tx, owner, results)
    else:
        held = _held(tx, ids, owner)
    done = [r for r in results if r.task.id in held]
    later = [f for f in failures if f.task.id in held and f.retry_at is not None]
    final = [f for f in failures if f.task.id in held and f.retry_at is None]
    counts = Counts()
    image_ids = iter(_succeed(tx, done, counts, dropped if dropped is not None else [], gone))
    _retry_later(tx, later, counts)
    _fail(tx, final, counts)
    after = counts.apply(tx)
    progress = Progress(after, [t.batch_id for t in _tasks(done) + _tasks(final)])
    events: list[ev.PendingEvent] = []
    for r in done:
        t = r.task
        events.extend(_image_events(r, image_ids))
        events.append(
            progress.event(t.batch_id, t.id, t.key, f"generated {len(r.images)} image(s)")
        )
    # a wait for a down backend (no attempt spent) is noted once by the scheduler instead
    events.extend(_retry_warning(tx, f) for f in later if f.spend_attempt)
    for f in final:
        t = f.task
        events.append(
            ev.error(t.batch_id, t.id, error=f.error, item_key=t.key, error_type=_type(f))
        )
        events.append(progress.event(t.batch_id, t.id, t.key, f"failed: {f.error}"))
    ev.append_events(tx, events)
    finish_done(tx, after.values())
    return held  # every outcome of a task still held was recorded


def _held(tx: Tx, ids: list[int], owner: str) -> set[int]:
    """The tasks of ``ids`` still under ``owner``'s lease, locked until the commit on
    PostgreSQL and MySQL: no other worker's recovery may slip in before the move."""
    if tx.dialect == "postgresql":
        return {r[0] for r in driver.rows(tx, sql.HELD_PG_TEXT, (ids, owner))}
    held_query = sql.HELD if tx.dialect == "sqlite" else sql.HELD_PG
    return set(tx.conn.execute(held_query, {"h_ids": ids, "h_owner": owner}).scalars())


def _succeed_held_pg(
    tx: Tx, owner: str, results: Sequence[TaskResult]
) -> tuple[set[int], list[int]]:
    """running → succeeded for the tasks of ``results`` still under ``owner``'s lease, their
    images of an earlier try of this run dropped (sql.SUCCEED_HELD_PG); (the ids moved, the
    batch of each image dropped)."""
    ids, durations = [r.task.id for r in results], [r.duration for r in results]
    rows = driver.rows(tx, sql.SUCCEED_HELD_PG, (tx.now, tx.now, ids, durations, owner))
    return {r[0] for r in rows if r[0] is not None}, [r[1] for r in rows if r[1] is not None]


def _tasks(outcomes: Sequence[TaskResult] | Sequence[TaskFailure]) -> list[ClaimedTask]:
    return [o.task for o in outcomes]


def _succeed(
    tx: Tx,
    done: Sequence[TaskResult],
    counts: Counts,
    dropped: list[DroppedImage],
    gone: list[int] | None = None,
) -> list[int]:
    """running → succeeded with the image rows; returns the new image ids in order.

    ``gone``: the tasks were moved already (:func:`_succeed_held_pg`), their earlier
    images of this run dropped from these batches."""
    if not done:
        return []
    if gone is None:
        gone = _move_succeeded(tx, done)
    # a re-run after a crash overwrote the same files; never keep two rows for them
    for batch_id in gone:
        counts.deltas[batch_id]["images"] -= 1
    for batch_id, k in runs.supersede(tx, [r.task for r in done if r.task.run], dropped).items():
        counts.deltas[batch_id]["images"] -= k
    counts.moved((r.task.batch_id for r in done), RUNNING, SUCCEEDED)
    for r in done:
        counts.deltas[r.task.batch_id]["images"] += len(r.images)
    images = [
        sql.image_row(r.task, i, img, seed, tx.now)
        for r in done
        for i, (img, seed) in enumerate(r.images)
    ]
    if not images:
        return []
    if tx.dialect == "postgresql":  # through the driver: see db.driver
        return _insert_images_pg(tx, images)
    return list(returning.execute(tx.conn, sql.INSERT_IMAGES, images).scalars())


def _move_succeeded(tx: Tx, done: Sequence[TaskResult]) -> list[int]:
    """running → succeeded; the batch of each image of an earlier try of this run, dropped."""
    task_ids = [r.task.id for r in done]
    if tx.dialect == "postgresql":  # through the driver: see db.driver
        durations = [r.duration for r in done]
        driver.rows(tx, sql.SUCCEED_PG, (tx.now, tx.now, task_ids, durations))
        return [r[0] for r in driver.rows(tx, sql.DROP_IMAGES_PG, (task_ids,))]
    rows = [{"t_id": r.task.id, "t_duration": r.duration, "t_now": tx.now} for r in done]
    tx.conn.execute(sql.SUCCEED, rows)
    return list(returning.execute(tx.conn, sql.DROP_IMAGES, {"d_ids": task_ids}).scalars())


def _insert_images_pg(tx: Tx, images: list[dict[str, Any]]) -> list[int]:
    """INSERT_IMAGES as one statement of arrays; the new ids in the order of ``images``."""
    arrays = [
        [json.dumps(row[name]) for row in images]  # as SQLAlchemy's JSON: None is 'null'
        if kind == "json"
        else [row[name] for row in images]
        for name, kind in sql.IMAGE_COLUMNS
    ]
    rows = driver.rows(tx, sql.INSERT_IMAGES_PG, arrays)
    made = {(task_id, index): image_id for image_id, task_id, index in rows}
    return [made[(row["task_id"], row["index"])] for row in images]


def _image_events(result: TaskResult, image_ids: Iterable[int]) -> list[ev.PendingEvent]:
    t, ids = result.task, iter(image_ids)
    return [
        ev.image_generated(
            t.batch_id,
            t.id,
            item_key=t.key,
            image={
                "id": next(ids),
                "index": i,
                "path": im.path,
                "width": im.width,
                "height": im.height,
                "backend": im.backend or t.backend,
                "server": im.server,
                "model": im.model,
            },
        )
        for i, (im, _seed) in enumerate(result.images)
    ]


def _retry_later(tx: Tx, failures: Sequence[TaskFailure], counts: Counts) -> None:
    """running → pending until ``retry_at``; a wait for a down backend gives its attempt back."""
    if not failures:
        return
    rows = [{**_failure_row(tx, f), "t_at": f.retry_at} for f in failures]
    tx.conn.execute(sql.RETRY_LATER, rows)
    counts.moved((f.task.batch_id for f in failures), RUNNING, PENDING)


def _failure_row(tx: Tx, f: TaskFailure) -> dict[str, Any]:
    """A failed try's parameters; a try that only found its backend down gives its attempt back."""
    return {
        "t_id": f.task.id,
        "t_error": f.error,
        "t_duration": f.duration,
        "t_give_back": 0 if f.spend_attempt else 1,
        "t_now": tx.now,
    }


def _retry_warning(tx: Tx, f: TaskFailure) -> ev.PendingEvent:
    return ev.warning(
        f.task.batch_id,
        f"attempt {f.task.attempts} of {f.task.max_attempts} failed; retrying",
        task_id=f.task.id,
        item_key=f.task.key,
        error=f.error,
        error_type=_type(f),
        attempt=f.task.attempts,
        retry_in=round(max(0.0, (f.retry_at or tx.now) - tx.now), 3),
    )


def _type(f: TaskFailure) -> str | None:
    error_type = f.details.get("error_type")
    return None if error_type is None else str(error_type)


def _fail(tx: Tx, failures: Sequence[TaskFailure], counts: Counts) -> None:
    """running → failed for good, refunded."""
    if not failures:
        return
    tx.conn.execute(sql.FAIL, [_failure_row(tx, f) for f in failures])
    refund_failed(tx, [f.task.id for f in failures])
    counts.moved((f.task.batch_id for f in failures), RUNNING, FAILED)
