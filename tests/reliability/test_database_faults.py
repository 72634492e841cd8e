"""The database going away under `kiln serve` mid-batch: SQLite held locked by another
connection for seconds at a time, repeatedly; PostgreSQL's connections of the server all
terminated (``pg_terminate_backend``, what a restart does to them), repeatedly.

Meanwhile a poller asks the API about the batch and /healthz, and a small batch is
created during each fault: a 503 with a message is acceptable while the database is
away, a 500 is not. Afterwards every batch that was created completed with each task
succeeded once and the ledger exact.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_ADMIN_URL
from tests.reliability.conftest import Soak, Tally
from tests.reliability.faultkit import (
    Audit,
    Poller,
    add_user,
    audit,
    auth,
    clear_503,
    create_batch,
    named,
    placeholder,
    reached,
    serve,
    until,
    wait_finished,
    write_config,
)

SMALL = 3  #: tasks of each batch created during a fault


class Creates:
    """Small batches created during faults, each in a thread of its own (a create waits for
    a locked database): their ids, and the answers that were neither 201 nor a clear 503."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.ids: list[int] = []
        self.bad: list[str] = []
        self.refused = 0  #: clear 503s: nothing created
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        thread = threading.Thread(target=self._create, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _create(self) -> None:
        body = {
            "name": "during",
            "defaults": {"width": 64, "height": 64},
            "tasks": [{"prompt": f"during {i}"} for i in range(SMALL)],
        }
        try:
            answer = httpx.post(
                f"{self.url}/api/v1/batches", json=body, headers=auth(self.token), timeout=90
            )
        except httpx.TransportError as exc:
            self.bad.append(f"no answer: {exc!r}")
            return
        if answer.status_code == 201:
            self.ids.append(int(answer.json()["id"]))
        elif clear_503(answer):
            self.refused += 1
        else:
            self.bad.append(f"{answer.status_code}: {answer.text[:300]}")

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=120)

    @property
    def tried(self) -> int:
        return len(self._threads)


def check_all(
    database_url: str, data_dir: Path, batch_id: int, tasks: int, creates: Creates, grant: int
) -> tuple[Audit, list[Audit]]:
    main = audit(database_url, data_dir, batch_id, tasks=tasks, user="alice", grant=grant)
    small = [audit(database_url, data_dir, b, tasks=SMALL) for b in creates.ids]
    return main, small


def record_and_assert(
    tally: Tally, area: str, faults: int, poller: Poller, creates: Creates, audits: list[Audit]
) -> None:
    main = audits[0]
    tally.add(
        area,
        faults=faults,
        crashes=faults,
        inputs=poller.asked + creates.tried,
        server_errors=poller.server_errors + len(creates.bad),
        lost=sum(a.lost for a in audits),
        duplicated=sum(a.duplicated for a in audits),
        drift=main.drift,
    )
    print(
        f"{area}: {faults} faults; answers {dict(poller.answers)}; "
        f"creates answered 503: {creates.refused}"
    )
    assert poller.errors == [], poller.errors
    assert creates.bad == [], creates.bad
    for found in audits:
        assert found.lost == found.duplicated == 0, found
        assert found.problems == [], found.problems
    assert main.drift == 0, main


@pytest.mark.slow
def test_sqlite_locked_by_another_connection_in_bursts(
    tmp_path: Path, soak: Soak, tally: Tally
) -> None:
    tasks, bursts, hold = soak.pick((150, 4, 3.0), (1000, 12, 10.0))
    data_dir = tmp_path / "kiln-data"
    database = data_dir / "kiln.db"
    database_url = f"sqlite:///{database}"
    write_config(tmp_path, database_url, backends=placeholder(latency=0.02))
    grant = tasks + bursts * SMALL
    token = add_user(tmp_path, "alice", grant)
    with serve(tmp_path) as server:
        batch_id = create_batch(server.url, token, tasks, name="locked")
        creates = Creates(server.url, token)
        with Poller(server.url, token, [f"/api/v1/batches/{batch_id}", "/healthz"]) as poller:
            step = tasks // (bursts + 2)
            for i in range(1, bursts + 1):
                until(reached(database_url, batch_id, i * step), f"{i * step} tasks to succeed")
                locker = sqlite3.connect(database, timeout=30, isolation_level=None)
                try:
                    locker.execute("BEGIN EXCLUSIVE")
                    creates.start()  # waits for the lock, like every writer of the server
                    time.sleep(hold)
                    locker.execute("COMMIT")
                finally:
                    locker.close()
            creates.join()
            wait_finished(server.url, token, batch_id)
            for created in creates.ids:
                wait_finished(server.url, token, created)
    audits = check_all(database_url, data_dir, batch_id, tasks, creates, grant)
    record_and_assert(
        tally, "database locked (SQLite)", bursts, poller, creates, [audits[0], *audits[1]]
    )
    integrity = create_engine(database_url).connect()
    try:
        assert integrity.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    finally:
        integrity.close()


def terminate(application_name: str) -> int:
    """Terminate every PostgreSQL backend of ``application_name``: how many there were."""
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": application_name},
            )
            return len(found.all())
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgresql_connections_terminated_mid_batch(
    tmp_path: Path, postgres_url: str, soak: Soak, tally: Tally
) -> None:
    tasks, kills = soak.pick((150, 5), (1000, 15))
    seed = random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    print(f"\nPostgreSQL restart: seed {seed}")
    application_name = f"kiln_crash_{secrets.token_hex(4)}"
    data_dir = tmp_path / "kiln-data"
    write_config(
        tmp_path, named(postgres_url, application_name), backends=placeholder(latency=0.02)
    )
    grant = tasks + kills * SMALL
    token = add_user(tmp_path, "alice", grant)
    terminated = 0
    with serve(tmp_path) as server:
        batch_id = create_batch(server.url, token, tasks, name="restarted")
        creates = Creates(server.url, token)
        with Poller(server.url, token, [f"/api/v1/batches/{batch_id}", "/healthz"]) as poller:
            points = sorted(rng.sample(range(tasks // 10, tasks * 9 // 10), kills))
            for point in points:
                until(reached(postgres_url, batch_id, point), f"{point} tasks to succeed")
                time.sleep(rng.uniform(0, 0.2))
                ended = terminate(application_name)
                assert ended > 0, "kiln serve held no connection to terminate"
                terminated += ended
                creates.start()  # on a pool whose connections were all just cut
            creates.join()
            wait_finished(server.url, token, batch_id)
            for created in creates.ids:
                wait_finished(server.url, token, created)
    print(f"PostgreSQL restart: {terminated} connections terminated in {kills} rounds")
    main, extra = check_all(postgres_url, data_dir, batch_id, tasks, creates, grant)
    record_and_assert(tally, "PostgreSQL restart", kills, poller, creates, [main, *extra])
