"""Runs: several batches started one after another and reported as one (a nightly project run).

A run is a row in ``runs`` and its batches (``batches.run_id``). What it runs is
decided when it is created and stored in ``config`` (each project's batch spec,
or why it cannot run); which projects have started is the set of its batches.
So a process that dies mid-run loses nothing: the next one that takes the run
starts the projects that have no batch yet and never a second batch for one.

One process drives a run at a time: it holds a lease (``lease_owner``,
``lease_expires_at``) taken with a conditional UPDATE and renewed while it works
(:func:`claim_run`, :func:`renew_run`). A lease that lapses (the process died)
lets another take it (:func:`orphan_runs`).

>>> run_id = db.write(create_run, NewRun("nightly", "projects", "cli", config))  # doctest: +SKIP
>>> db.write(claim_run, run_id, "host:123", 30.0)                               # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, or_, select, update

from pixelkiln.db import returning
from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.tables import batches, runs
from pixelkiln.exceptions import NotFoundError


class RunStatus(StrEnum):
    RUNNING = "running"  #: created, or being driven; not every project has ended
    COMPLETED = "completed"  #: every project succeeded
    PARTIAL = "partial"  #: some projects succeeded, some failed
    FAILED = "failed"  #: no project succeeded
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not RunStatus.RUNNING


@dataclass(frozen=True)
class NewRun:
    """A run about to be stored."""

    name: str
    kind: str  #: projects
    source: str  #: cli, schedule, api
    config: dict[str, Any]  #: what it runs, resolved (paths absolute)
    owner_id: int | None = None
    schedule_id: int | None = None  #: the schedule that started it
    lease_owner: str | None = None  #: the process that drives it from the start (the CLI)
    lease_seconds: float = 0.0


@dataclass(frozen=True)
class Run:
    """A stored run."""

    id: int
    owner_id: int | None
    name: str
    kind: str
    source: str
    status: RunStatus
    config: dict[str, Any] = field(repr=False)
    report: dict[str, Any] | None = field(repr=False)  #: the run report, once it ended
    schedule_id: int | None
    lease_owner: str | None
    lease_expires_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class RunBatch:
    """A batch of a run, as the run driver sees it."""

    id: int
    name: str  #: the project id
    status: str
    started_at: float | None
    finished_at: float | None
    created_at: float


def _run(row: Row[Any]) -> Run:
    return Run(
        row.id,
        row.owner_id,
        row.name,
        row.kind,
        row.source,
        RunStatus(row.status),
        dict(row.config),
        dict(row.report) if row.report is not None else None,
        row.schedule_id,
        row.lease_owner,
        row.lease_expires_at,
        row.created_at,
        row.started_at,
        row.finished_at,
    )


def create_run(tx: Tx, new: NewRun) -> int:
    leased = new.lease_owner is not None
    run_id: int = returning.execute(
        tx.conn,
        insert(runs)
        .values(
            owner_id=new.owner_id,
            name=new.name[:200],
            kind=new.kind,
            source=new.source,
            status=str(RunStatus.RUNNING),
            config=new.config,
            schedule_id=new.schedule_id,
            lease_owner=new.lease_owner,
            lease_expires_at=tx.now + new.lease_seconds if leased else None,
            created_at=tx.now,
        )
        .returning(runs.c.id),
    ).scalar_one()
    return run_id


def get_run(conn: Connection, run_id: int, owner_id: int | None = None) -> Run:
    """One run; NotFoundError when missing or (with ``owner_id``) someone else's."""
    query = select(runs).where(runs.c.id == run_id)
    if owner_id is not None:
        query = query.where(runs.c.owner_id == owner_id)
    return _run(one_row(conn, query, f"no run {run_id}"))


def list_runs(conn: Connection, *, owner_id: int | None = None, limit: int = 20) -> list[Run]:
    """Newest first."""
    query = select(runs).order_by(runs.c.id.desc()).limit(limit)
    if owner_id is not None:
        query = query.where(runs.c.owner_id == owner_id)
    return [_run(row) for row in conn.execute(query)]


def run_batches(conn: Connection, run_id: int) -> list[RunBatch]:
    """The run's batches, oldest first."""
    query = (
        select(
            batches.c.id,
            batches.c.name,
            batches.c.status,
            batches.c.started_at,
            batches.c.finished_at,
            batches.c.created_at,
        )
        .where(batches.c.run_id == run_id)
        .order_by(batches.c.id)
    )
    return [RunBatch(*row) for row in conn.execute(query)]


def _free(now: float) -> Any:
    return or_(runs.c.lease_owner.is_(None), runs.c.lease_expires_at < now)


def claim_run(
    tx: Tx, run_id: int, owner: str, lease_seconds: float, dead: str | None = None
) -> bool:
    """Take the run's lease if it is unfinished and free, lapsed or already ``owner``'s
    (or held by ``dead``, a process known to be gone)."""
    holders = [owner] if dead is None else [owner, dead]
    claimed = tx.conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id,
            runs.c.status == str(RunStatus.RUNNING),
            or_(_free(tx.now), runs.c.lease_owner.in_(holders)),
        )
        .values(lease_owner=owner, lease_expires_at=tx.now + lease_seconds)
    )
    return bool(claimed.rowcount)


def renew_run(tx: Tx, run_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend ``owner``'s lease; False when it is not theirs any more (or the run ended)."""
    renewed = tx.conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id,
            runs.c.lease_owner == owner,
            runs.c.status == str(RunStatus.RUNNING),
        )
        .values(lease_expires_at=tx.now + lease_seconds)
    )
    return bool(renewed.rowcount)


def release_run(tx: Tx, run_id: int, owner: str) -> None:
    """Give the lease up now (the process stops): another process may take the run at once."""
    tx.conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


def orphan_runs(conn: Connection, now: float, kind: str = "projects") -> list[int]:
    """Unfinished runs no live process holds, oldest first."""
    query = (
        select(runs.c.id)
        .where(and_(runs.c.status == str(RunStatus.RUNNING), runs.c.kind == kind, _free(now)))
        .order_by(runs.c.id)
    )
    return [row.id for row in conn.execute(query)]


def mark_started(tx: Tx, run_id: int) -> None:
    tx.conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.started_at.is_(None))
        .values(started_at=tx.now)
    )


def set_project_problem(tx: Tx, run_id: int, owner: str, index: int, why: str) -> None:
    """Record why project ``index`` of the run cannot run (refused at its start), as the
    run's lease holder; NotFoundError when the lease is not ``owner``'s.

    The config is read and written back in this one transaction, so what another
    project learnt before is kept (never a copy read earlier written over it).
    """
    found = tx.conn.execute(
        select(runs.c.config).where(runs.c.id == run_id, runs.c.lease_owner == owner)
    ).first()
    if found is None:
        raise NotFoundError(f"run {run_id} is not held by {owner}")
    config = dict(found.config)
    projects = list(config["projects"])
    projects[index] = {**projects[index], "problem": why}
    tx.conn.execute(
        update(runs).where(runs.c.id == run_id).values(config={**config, "projects": projects})
    )


def finish_run(
    tx: Tx,
    run_id: int,
    owner: str,
    status: RunStatus,
    report: dict[str, Any],
    finished_at: float,
) -> bool:
    """End the run, as its lease holder, with its ``report`` (made beforehand, in a read,
    as of ``finished_at``: the writer is not held while it is built); False when the
    lease was lost (nothing written)."""
    ended = tx.conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id,
            runs.c.lease_owner == owner,
            runs.c.status == str(RunStatus.RUNNING),
        )
        .values(
            status=str(status),
            finished_at=finished_at,
            report=report,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return bool(ended.rowcount)
