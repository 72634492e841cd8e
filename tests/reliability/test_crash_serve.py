"""SIGKILL of `kiln serve` at random points of a paid batch, on SQLite and PostgreSQL.

A user with credits creates a batch through the API; `kiln serve` is killed (SIGKILL,
no chance to clean up) five times at seeded random points of it and started again each
time. Afterwards every task succeeded exactly once, image rows = files = tasks × n, no
temp file is left in the data folder and the credit ledger is the grant less what the
tasks cost. The seed is printed (``KILN_SOAK_SEED`` replays one); so is the batch's
throughput against an undisturbed batch of the same size run by the same server after.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import Soak, Tally
from tests.reliability.faultkit import (
    Poller,
    Serve,
    add_user,
    audit,
    auth,
    create_batch,
    ledger_drift,
    placeholder,
    reached,
    rows,
    until,
    wait_finished,
    write_config,
)

KILLS = 5
N = 2  #: images per task


def database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'kiln-data' / 'kiln.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_of_kiln_serve_mid_batch_loses_and_doubles_nothing(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, soak: Soak, tally: Tally
) -> None:
    area = f"SIGKILL kiln serve ({'SQLite' if kind == 'sqlite' else 'PostgreSQL'})"
    tasks = soak.pick(200, 1000)
    seed = int(os.environ.get("KILN_SOAK_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\n{area}: seed {seed} (KILN_SOAK_SEED={seed} replays it)")
    rng = random.Random(seed)
    # where to kill: after this many tasks succeeded (and a random breath more)
    points = sorted(rng.sample(range(tasks // 10, tasks * 9 // 10), KILLS))
    database_url = database(kind, request, tmp_path)
    data_dir = tmp_path / "kiln-data"
    write_config(tmp_path, database_url, backends=placeholder(latency=0.02), lease_seconds=5)
    grant = 2 * tasks * N
    token = add_user(tmp_path, "alice", grant)

    server = Serve(tmp_path)
    server.start()
    try:
        started = time.monotonic()
        batch_id = create_batch(server.url, token, tasks, n=N, name="night")
        with Poller(server.url, token, [f"/api/v1/batches/{batch_id}", "/healthz"]) as poller:
            for point in points:
                until(reached(database_url, batch_id, point), f"{point} tasks to succeed")
                time.sleep(rng.uniform(0, 0.2))
                server.kill()
                server.start()
            final = wait_finished(server.url, token, batch_id)
        crashed_seconds = time.monotonic() - started
        assert final["status"] == "completed", final

        started = time.monotonic()
        baseline = create_batch(server.url, token, tasks, n=N, name="calm")
        assert wait_finished(server.url, token, baseline)["status"] == "completed"
        calm_seconds = time.monotonic() - started
    finally:
        server.stop()

    found = audit(database_url, data_dir, batch_id, tasks=tasks, n=N, user="alice", grant=grant)
    calm = audit(database_url, data_dir, baseline, tasks=tasks, n=N)
    tally.add(
        area,
        faults=KILLS,
        crashes=KILLS,
        inputs=poller.asked,
        server_errors=poller.server_errors,
        lost=found.lost + calm.lost,
        duplicated=found.duplicated + calm.duplicated,
        drift=found.drift,
    )
    ratio = (tasks / crashed_seconds) / (tasks / calm_seconds)
    print(
        f"{area}: {tasks} tasks × {N} through {KILLS} SIGKILLs in {crashed_seconds:.1f} s, "
        f"undisturbed {calm_seconds:.1f} s: throughput ratio {ratio:.2f}"
    )
    assert poller.errors == [], poller.errors
    assert found.statuses == {"succeeded": tasks}, found
    assert found.image_rows == found.files == tasks * N, found
    assert (found.lost, found.duplicated, found.drift) == (0, 0, 0), found
    assert found.problems == [] and calm.problems == [], (found.problems, calm.problems)
    assert (calm.lost, calm.duplicated) == (0, 0), calm
    assert server.starts == KILLS + 1


def post_batch(url: str, token: str, key: str, tasks: int) -> httpx.Response | None:
    """A create with an ``Idempotency-Key``; None when the server died under it."""
    body = {
        "name": key,
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": f"{key} scene {i}", "key": f"s{i}"} for i in range(tasks)],
    }
    headers = {**auth(token), "Idempotency-Key": key}
    try:
        return httpx.post(f"{url}/api/v1/batches", json=body, headers=headers, timeout=60)
    except httpx.TransportError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_of_kiln_serve_during_creates_charges_each_batch_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, soak: Soak, tally: Tally
) -> None:
    """The server killed while a create is in flight, then the create sent again with its
    ``Idempotency-Key`` (what the Python client does): one batch per key, charged once."""
    area = f"SIGKILL kiln serve ({'SQLite' if kind == 'sqlite' else 'PostgreSQL'})"
    tasks, kills = soak.pick((60, 2), (400, KILLS))  # (a restart costs seconds)
    seed = int(os.environ.get("KILN_SOAK_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\n{area}, during creates: seed {seed}")
    rng = random.Random(seed)
    database_url = database(kind, request, tmp_path)
    write_config(tmp_path, database_url, backends=placeholder(latency=0.01), lease_seconds=5)
    grant = kills * tasks
    token = add_user(tmp_path, "alice", grant)
    keys = [f"order-{i}" for i in range(kills)]
    answers: list[int] = []
    server = Serve(tmp_path)
    server.start()
    try:
        for key in keys:
            first: list[httpx.Response | None] = []
            sender = threading.Thread(
                target=lambda k=key, into=first: into.append(
                    post_batch(server.url, token, k, tasks)
                )
            )
            sender.start()
            time.sleep(rng.uniform(0, 0.25))
            server.kill()
            sender.join(timeout=60)
            server.start()
            again = post_batch(server.url, token, key, tasks)
            assert again is not None and again.status_code in (200, 201), again and again.text
            answers.append(again.status_code)
        ids = [int(b) for (b,) in rows(database_url, "SELECT id FROM batches ORDER BY id")]
        for batch_id in ids:
            wait_finished(server.url, token, batch_id)
    finally:
        server.stop()
    names = [str(n) for (n,) in rows(database_url, "SELECT name FROM batches ORDER BY id")]
    audits = [audit(database_url, tmp_path / "kiln-data", b, tasks=tasks) for b in ids]
    drift = ledger_drift(database_url, "alice", grant)
    charges = rows(database_url, "SELECT COUNT(*) FROM credit_ledger WHERE reason = 'charge'")
    tally.add(
        area,
        faults=kills,
        crashes=kills,
        inputs=2 * kills,
        lost=sum(a.lost for a in audits) + len(set(keys) - set(names)),
        duplicated=sum(a.duplicated for a in audits) + len(names) - len(set(names)),
        drift=drift,
    )
    print(f"{area}, during creates: the creates sent again were answered {answers}")
    assert sorted(names) == keys  # one batch per key: none lost, none doubled
    assert charges == [(kills,)] and drift == 0
    for found in audits:
        assert (found.lost, found.duplicated) == (0, 0), found
        assert found.problems == [], found.problems
