"""The statements :mod:`.transitions` runs, built once.

Constructing a SQLAlchemy statement costs more than running it on the hot path
(claim, start, outcomes), so these are module constants with named parameters;
the few that depend on their arguments (recovery, moves of a whole batch) are
small functions. What each move means, and when it runs: :mod:`.transitions`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, bindparam, case, delete, func, insert, select, update

from pixelkiln.db.pacing import LIMIT_COLUMNS
from pixelkiln.db.tables import batches, images, tasks
from pixelkiln.models import BatchStatus, ClaimedTask, TaskStatus
from pixelkiln.storage import StoredImage

PENDING, RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING

#: "running" tested so that no index can serve it: statements that name their task ids
#: must look them up by id, but SQLite without statistics would rather walk the status
#: index through every running task (all those claimed ahead, too)
IS_RUNNING = tasks.c.status.concat("") == RUNNING


def held(prefix: str) -> tuple[ColumnElement[bool], ...]:
    """The tasks ``:{prefix}_ids`` that still run under the lease of ``:{prefix}_owner``:
    a runner moves only tasks it holds (a recovered one may be someone else's by now).
    """
    return (
        tasks.c.id.in_(bindparam(f"{prefix}_ids", expanding=True)),
        IS_RUNNING,
        tasks.c.lease_owner == bindparam(f"{prefix}_owner"),
    )


# -- counters: every move adds its deltas in place, one statement per batch ---------------------

#: batches.n_<key> for each delta key
COUNTED = (*(str(s) for s in TaskStatus), "images")
ADJUST_COUNTS = (
    update(batches)
    .where(batches.c.id == bindparam("k_batch"))
    .values({f"n_{k}": batches.c[f"n_{k}"] + bindparam(f"k_{k}") for k in COUNTED})
    .returning(
        batches.c.id,
        batches.c.status,
        batches.c.started_at,
        batches.c.n_tasks,
        *(batches.c[f"n_{k}"] for k in COUNTED),
    )
)

#: ADJUST_COUNTS through the driver (db.driver) on PostgreSQL and SQLite: it runs in every
#: claim and every record of outcomes. Parameters: a delta per COUNTED key, then the batch
_ADJUST_SET = ", ".join(f"n_{k} = n_{k} + {{p}}" for k in COUNTED)
_ADJUST_TEXT = (
    f"UPDATE batches SET {_ADJUST_SET} WHERE id = {{p}} "
    f"RETURNING id, status, started_at, n_tasks, {', '.join(f'n_{k}' for k in COUNTED)}"
)
ADJUST_COUNTS_TEXT = {
    "postgresql": _ADJUST_TEXT.replace("{p}", "%s"),
    "sqlite": _ADJUST_TEXT.replace("{p}", "?"),
}

# -- batches ------------------------------------------------------------------------------------

START_BATCH = (
    update(batches)
    .where(batches.c.id == bindparam("m_batch"), batches.c.status == BatchStatus.QUEUED)
    .values(
        status=BatchStatus.RUNNING,
        started_at=func.coalesce(batches.c.started_at, bindparam("m_now")),
    )
)


def set_batch(batch_id: int, **values: Any) -> Any:
    return update(batches).where(batches.c.id == batch_id).values(**values)


def _batch_tasks(batch_id: int, source: TaskStatus) -> Any:
    return update(tasks).where(tasks.c.batch_id == batch_id, tasks.c.status == source)


def cancel_tasks(batch_id: int, source: TaskStatus, now: float) -> Any:
    """A batch's tasks in ``source`` → cancelled, their leases void."""
    return _batch_tasks(batch_id, source).values(
        status=TaskStatus.CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None
    )


def retry_tasks(batch_id: int, source: TaskStatus, only: list[int] | None) -> Any:
    """A batch's tasks in ``source`` (or only those of ``only``) → pending, attempts anew."""
    query = _batch_tasks(batch_id, source)
    if only is not None:
        query = query.where(tasks.c.id.in_(only))
    return query.values(**_REQUEUED)


_REQUEUED: dict[str, Any] = {
    "status": PENDING,
    "attempts": 0,
    "next_attempt_at": 0.0,
    "lease_owner": None,
    "lease_expires_at": None,
    "started_at": None,
    "finished_at": None,
}


def regenerate_tasks(batch_id: int, source: TaskStatus, only: list[int]) -> Any:
    """The tasks ``only`` of a batch in ``source`` → pending as their next run, attempts anew."""
    query = _batch_tasks(batch_id, source).where(tasks.c.id.in_(only))
    return query.values(**_REQUEUED, run=tasks.c.run + 1)


# -- claim and start ----------------------------------------------------------------------------

_CLAIMED = ("id", "batch_id", "position", "key", "backend", "prompt", "negative_prompt")


#: the pending tasks a claim takes: one batch's, for one backend, due, in position order
_PICK = (
    select(tasks.c.id)
    .where(
        tasks.c.batch_id == bindparam("c_batch"),
        tasks.c.status == PENDING,
        tasks.c.backend == bindparam("c_backend"),
        tasks.c.next_attempt_at <= bindparam("c_now"),
    )
    .order_by(tasks.c.position)
    .limit(bindparam("c_limit"))
)


def _claim_statement(picked: Any) -> Any:
    """pending → running under a lease for the tasks ``picked``, returning
    models.ClaimedTask's fields in order."""
    return (
        update(tasks)
        .where(tasks.c.id.in_(picked))
        .values(
            status=RUNNING,
            lease_owner=bindparam("c_owner"),
            lease_expires_at=bindparam("c_expires"),
            started_at=None,  # set by START, when generation begins
        )
        .returning(
            *(tasks.c[name] for name in _CLAIMED),
            tasks.c.params,
            tasks.c.inputs,
            (tasks.c.attempts + 1).label("attempts"),  # the try this claim is for
            tasks.c.max_attempts,
            tasks.c.own_key,
            tasks.c.run,
        )
    )


CLAIM = _claim_statement(_PICK.scalar_subquery())
CLAIM_PG = _claim_statement(_PICK.with_for_update(skip_locked=True).scalar_subquery())
#: MySQL, in two steps: it neither takes a LIMIT in an IN subquery nor updates a table
#: by a subquery of itself. The tasks are picked (and locked) with SKIP LOCKED, then
#: CLAIM_PICKED moves the ids ``:c_ids`` (through db.returning: MySQL has no RETURNING)
CLAIM_PICK = _PICK.with_for_update(skip_locked=True)
CLAIM_PICKED = _claim_statement(bindparam("c_ids", expanding=True))

#: batches with limits of their own, read again under a row lock (PostgreSQL, MySQL): two
#: runners claiming at once then count each other's claims (see db.pacing)
BATCH_LIMITS_PG = (
    select(*LIMIT_COLUMNS)
    .where(batches.c.id.in_(bindparam("l_ids", expanding=True)))
    .order_by(batches.c.id)
    .with_for_update()
)
#: a task of each batch with a ``delay`` was claimed to start now
PACED_START = (
    update(batches)
    .where(batches.c.id.in_(bindparam("p_ids", expanding=True)))
    .values(last_start_at=bindparam("p_now"))
)
#: tasks ``:m_ids`` were just marked started: a paced batch's wait runs from that moment
#: (a claim that waited for its request to go out would otherwise shorten the next gap)
PACED_MARKED = (
    update(batches)
    .where(
        batches.c.delay > 0,
        batches.c.id.in_(
            select(tasks.c.batch_id).where(tasks.c.id.in_(bindparam("m_ids", expanding=True)))
        ),
    )
    .values(last_start_at=bindparam("m_now"))
)

#: extend ``:r_owner``'s leases on ``:r_ids`` until ``:r_until``
RENEW = (
    update(tasks)
    .where(*held("r"))
    .values(lease_expires_at=bindparam("r_until"))
    .returning(tasks.c.id)
)

START = (
    update(tasks)
    .where(*held("s"), tasks.c.started_at.is_(None))
    .values(attempts=tasks.c.attempts + 1, started_at=bindparam("s_now"))
    .returning(tasks.c.id)
)


#: starts marked at ``:u_at`` whose requests never went out (a slot take wrote the mark, and
#: its caller was cancelled as the grant arrived): the attempt given back, as if never marked.
#: Only a start of that moment: a later try of the task keeps its own
UNSTART = (
    update(tasks)
    .where(*held("u"), tasks.c.started_at == bindparam("u_at"))
    .values(attempts=tasks.c.attempts - 1, started_at=None)
)


def start_sqlite(n: int) -> str:
    """START as SQLite text for ``n`` ids (parameters: now, *ids, owner).

    A task waits for this write before its request goes out, once per start:
    run through the driver it costs half of what SQLAlchemy adds around it.
    """
    return (
        "UPDATE tasks SET attempts = attempts + 1, started_at = ? "
        f"WHERE id IN ({','.join('?' * n)}) AND status || '' = '{RUNNING}' "
        "AND lease_owner = ? AND started_at IS NULL RETURNING id"
    )


# -- outcomes -----------------------------------------------------------------------------------

HELD = select(tasks.c.id).where(*held("h"))
HELD_PG = HELD.with_for_update()  # no other worker's recovery may slip in before the move
#: (``_PG``: every database with row locks, MySQL too)

#: a try recorded without having been marked started still counts as one
_UNMARKED = case((tasks.c.started_at.is_(None), 1), else_=0)
_TRIED: dict[str, Any] = {
    "lease_owner": None,
    "lease_expires_at": None,
    "duration": bindparam("t_duration"),
    "started_at": func.coalesce(tasks.c.started_at, bindparam("t_now")),
}


def _outcome(**values: Any) -> Any:
    return update(tasks).where(tasks.c.id == bindparam("t_id")).values(**values, **_TRIED)


SUCCEED = _outcome(
    status=TaskStatus.SUCCEEDED,
    finished_at=bindparam("t_now"),
    last_error=None,
    attempts=tasks.c.attempts + _UNMARKED,
)
RETRY_LATER = _outcome(
    status=PENDING,
    next_attempt_at=bindparam("t_at"),
    last_error=bindparam("t_error"),
    attempts=tasks.c.attempts + _UNMARKED - bindparam("t_give_back"),
)
FAIL = _outcome(
    status=TaskStatus.FAILED,
    finished_at=bindparam("t_now"),
    last_error=bindparam("t_error"),
    # a try that only found its backend down (the down_timeout deadline) is no attempt
    attempts=tasks.c.attempts + _UNMARKED - bindparam("t_give_back"),
)
#: the run of an image's task now
_TASK_RUN = select(tasks.c.run).where(tasks.c.id == images.c.task_id).scalar_subquery()
#: images of the tasks ``:d_ids`` made by an earlier try of their current run
DROP_IMAGES = (
    delete(images)
    .where(images.c.task_id.in_(bindparam("d_ids", expanding=True)), images.c.run == _TASK_RUN)
    .returning(images.c.batch_id)
)
#: images of earlier runs of the tasks ``:h_ids``, still shown: now history
SUPERSEDE_IMAGES = (
    update(images)
    .where(
        images.c.task_id.in_(bindparam("h_ids", expanding=True)),
        images.c.run < _TASK_RUN,
        images.c.superseded.is_(False),
    )
    .values(superseded=True)
    .returning(images.c.batch_id)
)
#: every image of earlier runs of the tasks ``:h_ids`` (a regenerate with ``replace``)
DELETE_EARLIER = (
    delete(images)
    .where(images.c.task_id.in_(bindparam("h_ids", expanding=True)), images.c.run < _TASK_RUN)
    .returning(images.c.id, images.c.batch_id, images.c.path, images.c.superseded)
)
INSERT_IMAGES = insert(images).returning(images.c.id, sort_by_parameter_order=True)


def image_row(
    task: ClaimedTask, index: int, image: StoredImage, seed: int, now: float
) -> dict[str, Any]:
    """INSERT_IMAGES' parameters for one stored image of a task."""
    return {
        "task_id": task.id,
        "batch_id": task.batch_id,
        "index": index,
        "path": image.path,
        "width": image.width,
        "height": image.height,
        "bytes": image.bytes,
        "sha256": image.sha256,
        "seed": seed,
        "created_at": now,
        "backend": image.backend or task.backend,  # the backend that ran it (after any fallback)
        "server": image.server,
        "model": image.model,
        "params": image.params,
        "run": task.run,
    }


# -- PostgreSQL through the driver (db.driver): a task's start and its success ---------------------
# The same moves as START, RENEW, HELD_PG, SUCCEED, DROP_IMAGES and INSERT_IMAGES, one text each
# whatever the number of tasks (arrays), for psycopg's own placeholders. The arrays go in
# binary (``%b``): psycopg's text form escapes each element through a regular expression, a
# tenth of a record's CPU with the JSON of images' parameters.

_SUCCEEDED = TaskStatus.SUCCEEDED
START_PG = (
    "UPDATE tasks SET attempts = attempts + 1, started_at = %s "
    f"WHERE id = ANY(%b) AND status = '{RUNNING}' AND lease_owner = %s AND started_at IS NULL "
    "RETURNING id"
)
#: RENEW's move; parameters: until, ids, owner
RENEW_PG = (
    f"UPDATE tasks SET lease_expires_at = %s WHERE id = ANY(%b) AND status = '{RUNNING}' "
    "AND lease_owner = %s RETURNING id"
)
HELD_PG_TEXT = (
    f"SELECT id FROM tasks WHERE id = ANY(%b) AND status = '{RUNNING}' AND lease_owner = %s "
    "FOR UPDATE"
)
#: parameters: now, now, ids, durations
SUCCEED_PG = (
    f"UPDATE tasks AS t SET status = '{_SUCCEEDED}', finished_at = %s, last_error = NULL, "
    "attempts = t.attempts + CASE WHEN t.started_at IS NULL THEN 1 ELSE 0 END, "
    "lease_owner = NULL, lease_expires_at = NULL, duration = v.duration, "
    "started_at = COALESCE(t.started_at, %s) "
    "FROM unnest(%b::integer[], %b::float8[]) AS v(id, duration) WHERE t.id = v.id"
)
#: SUCCEED_PG for the tasks of ``ids`` still under ``owner``'s lease (HELD_PG's test, the rows
#: locked by the update itself), with DROP_IMAGES_PG of those: a group of successes alone is
#: one statement, not three. Parameters: now, now, ids, durations, owner; rows: (id, None) per
#: task moved, (None, batch_id) per image dropped
SUCCEED_HELD_PG = (
    "WITH s AS ("
    + SUCCEED_PG.replace(
        "WHERE t.id = v.id", f"WHERE t.id = v.id AND t.status = '{RUNNING}' AND t.lease_owner = %s"
    )
    + " RETURNING t.id), d AS (DELETE FROM images WHERE task_id IN (SELECT id FROM s) "
    "AND run = (SELECT t.run FROM tasks AS t WHERE t.id = images.task_id) RETURNING batch_id) "
    "SELECT id, NULL::integer FROM s UNION ALL SELECT NULL::integer, batch_id FROM d"
)
DROP_IMAGES_PG = (
    "DELETE FROM images WHERE task_id = ANY(%b) "
    "AND run = (SELECT t.run FROM tasks AS t WHERE t.id = images.task_id) RETURNING batch_id"
)
#: image_row's keys in INSERT_IMAGES_PG's order, with each column's array type
IMAGE_COLUMNS = (
    ("task_id", "integer"),
    ("batch_id", "integer"),
    ("index", "integer"),
    ("path", "text"),
    ("width", "integer"),
    ("height", "integer"),
    ("bytes", "integer"),
    ("sha256", "text"),
    ("seed", "bigint"),
    ("created_at", "float8"),
    ("backend", "text"),
    ("server", "text"),
    ("model", "text"),
    ("params", "json"),  # given as JSON text
    ("run", "integer"),
)
#: one parameter per column, an array each; returns (id, task_id, index) of each row
_IMAGE_NAMES = ", ".join(f'"{name}"' for name, _ in IMAGE_COLUMNS)
_IMAGE_ARRAYS = ", ".join(f"%b::{kind}[]" for _, kind in IMAGE_COLUMNS)
INSERT_IMAGES_PG = (
    f"INSERT INTO images ({_IMAGE_NAMES}) SELECT * FROM unnest({_IMAGE_ARRAYS}) "
    'RETURNING id, task_id, "index"'
)


# -- giving back --------------------------------------------------------------------------------

RELEASE = (
    update(tasks)
    .where(*held("l"))
    .values(
        status=PENDING,
        lease_owner=None,
        lease_expires_at=None,
        attempts=tasks.c.attempts - case((tasks.c.started_at.is_not(None), 1), else_=0),
    )
    .returning(tasks.c.batch_id)
)

_RECOVERED = (tasks.c.id, tasks.c.batch_id, tasks.c.key, tasks.c.started_at)


def lapsed(now: float, dead_owners: list[str]) -> ColumnElement[bool]:
    """Running under a lease that expired, or of a runner known dead."""
    expired = tasks.c.lease_expires_at < now
    if dead_owners:
        expired = expired | tasks.c.lease_owner.in_(dead_owners)
    return (tasks.c.status == RUNNING) & expired


def recover_failed(where: ColumnElement[bool], now: float, error: str) -> Any:
    """Lapsed tasks whose last attempt had started → failed."""
    return (
        update(tasks)
        .where(where, tasks.c.started_at.is_not(None), tasks.c.attempts >= tasks.c.max_attempts)
        .values(
            status=TaskStatus.FAILED,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            last_error=error,
        )
        .returning(*_RECOVERED)
    )


def recover_back(where: ColumnElement[bool], now: float, error: str) -> Any:
    """Lapsed tasks → pending; one that never started keeps its last error."""
    return (
        update(tasks)
        .where(where)
        .values(
            status=PENDING,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=now,
            last_error=case((tasks.c.started_at.is_(None), tasks.c.last_error), else_=error),
        )
        .returning(*_RECOVERED)
    )


# -- refunds ------------------------------------------------------------------------------------


def owed(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """Tasks matching ``condition`` that still hold what they cost."""
    return condition & (tasks.c.cost > 0)


def refunds_due(condition: ColumnElement[bool]) -> Any:
    """What each (owner, batch) is owed for the tasks matching ``condition``."""
    return (
        select(batches.c.owner_id, tasks.c.batch_id, func.sum(tasks.c.cost).label("total"))
        .join(batches, batches.c.id == tasks.c.batch_id)
        .where(owed(condition))
        .group_by(batches.c.owner_id, tasks.c.batch_id)
    )


def zero_costs(condition: ColumnElement[bool]) -> Any:
    return update(tasks).where(owed(condition)).values(cost=0)
