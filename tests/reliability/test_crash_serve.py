"""SIGKILL of `kiln serve` at random points of a paid batch, on SQLite and PostgreSQL.

A user with credits creates a batch through the API; `kiln serve` is killed (SIGKILL,
no chance to clean up) five times at seeded random points of it and started again each
time. Each kill also lands while a create is in flight, which is sent again with its
``Idempotency-Key`` once the server is back (what the Python client does). Afterwards
every task succeeded exactly once, image rows = files = tasks × n, no temp file is left
in the data folder, there is one batch per key, each charged once, and the credit ledger
is the grant less what the tasks cost. The seed is printed (``KILN_SOAK_SEED`` replays
one); so is the batch's throughput against an undisturbed batch of the same size run by
the same server after.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.processes import connected
from tests.reliability.conftest import Soak, Tally
from tests.reliability.faultkit import (
    Poller,
    Serve,
    add_user,
    audit,
    auth,
    create_batch,
    kiln,
    placeholder,
    reached,
    rows,
    until,
    wait_finished,
    write_config,
)

KILLS = 5
N = 2  #: images per task
ORDER = 5  #: tasks of each batch whose create is in flight at a kill
ORDERS = "SELECT id, name FROM batches WHERE name LIKE 'order-%' ORDER BY id"


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
    grant = 2 * tasks * N + KILLS * ORDER
    token = add_user(tmp_path, "alice", grant)
    keys = [f"order-{i}" for i in range(KILLS)]
    answers: list[int] = []

    server = Serve(tmp_path)
    server.start()
    restarts = 0.0  # seconds spent starting the server again
    try:
        started = time.monotonic()
        batch_id = create_batch(server.url, token, tasks, n=N, name="night")
        with Poller(server.url, token, [f"/api/v1/batches/{batch_id}", "/healthz"]) as poller:
            for point, key in zip(points, keys, strict=True):
                until(reached(database_url, batch_id, point), f"{point} tasks to succeed")
                sender = threading.Thread(target=post_batch, args=(server.url, token, key))
                sender.start()  # a create in flight when the server dies (or just done)
                time.sleep(rng.uniform(0, 0.2))
                server.kill()
                sender.join(timeout=60)
                restarting = time.monotonic()
                server.start()
                restarts += time.monotonic() - restarting
                again = post_batch(server.url, token, key)
                assert again is not None and again.status_code in (200, 201), again
                answers.append(again.status_code)
            final = wait_finished(server.url, token, batch_id)
        crashed_seconds = time.monotonic() - started
        assert final["status"] == "completed", final
        ordered = {str(n): int(b) for b, n in rows(database_url, ORDERS)}
        for order in ordered.values():
            wait_finished(server.url, token, order)

        started = time.monotonic()
        baseline = create_batch(server.url, token, tasks, n=N, name="calm")
        assert wait_finished(server.url, token, baseline)["status"] == "completed"
        calm_seconds = time.monotonic() - started
    finally:
        server.stop()

    found = audit(database_url, data_dir, batch_id, tasks=tasks, n=N, user="alice", grant=grant)
    calm = audit(database_url, data_dir, baseline, tasks=tasks, n=N)
    orders = [audit(database_url, data_dir, b, tasks=ORDER) for b in ordered.values()]
    named = [str(n) for (_, n) in rows(database_url, ORDERS)]
    [(charges,)] = rows(database_url, "SELECT COUNT(*) FROM credit_ledger WHERE reason = 'charge'")
    everything = [found, calm, *orders]
    tally.add(
        area,
        faults=KILLS,
        crashes=KILLS,
        inputs=poller.asked + 2 * KILLS,
        server_errors=poller.server_errors,
        lost=sum(a.lost for a in everything) + len(set(keys) - set(named)),
        duplicated=sum(a.duplicated for a in everything) + len(named) - len(set(named)),
        drift=found.drift,
    )
    ratio = calm_seconds / crashed_seconds
    running = calm_seconds / max(crashed_seconds - restarts, 1e-9)
    print(
        f"{area}: {tasks} tasks × {N} through {KILLS} SIGKILLs in {crashed_seconds:.1f} s, "
        f"undisturbed {calm_seconds:.1f} s: throughput ratio {ratio:.2f} "
        f"({running:.2f} leaving out the {restarts:.1f} s of restarts)"
    )
    print(f"{area}: the creates in flight, sent again, were answered {answers}")
    assert poller.errors == [], poller.errors
    assert found.statuses == {"succeeded": tasks}, found
    assert found.image_rows == found.files == tasks * N, found
    assert (found.lost, found.duplicated, found.drift) == (0, 0, 0), found
    assert sorted(named) == keys  # one batch per key: none lost, none doubled
    assert charges == 1 + KILLS + 1  # the night, one per key, the calm one
    for each in everything:
        assert (each.lost, each.duplicated) == (0, 0), each
        assert each.problems == [], each.problems
    assert server.starts == KILLS + 1


def post_batch(url: str, token: str, key: str) -> httpx.Response | None:
    """A create with an ``Idempotency-Key``; None when the server died under it."""
    body = {
        "name": key,
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": f"{key} scene {i}", "key": f"s{i}"} for i in range(ORDER)],
    }
    headers = {**auth(token), "Idempotency-Key": key}
    try:
        return httpx.post(f"{url}/api/v1/batches", json=body, headers=headers, timeout=60)
    except httpx.TransportError:
        return None


def test_the_audit_sees_what_a_crash_could_leave(tmp_path: Path) -> None:
    """The checks above can fail: a batch run to the end, then a file gone, a stray file,
    a temp file and a ledger entry no task explains are each seen."""
    database_url = f"sqlite:///{tmp_path / 'kiln-data' / 'kiln.db'}"
    write_config(tmp_path, database_url, backends=placeholder(latency=0), paying=False)
    spec = {
        "name": "seen",
        "tasks": [{"prompt": f"p{i}", "width": 64, "height": 64} for i in range(4)],
    }
    (tmp_path / "seen.json").write_text(json.dumps(spec))
    done = kiln(tmp_path, "run", "seen.json", "--quiet")
    assert done.returncode == 0, done.stderr
    add_user(tmp_path, "alice", 10)
    data_dir = tmp_path / "kiln-data"
    clean = audit(database_url, data_dir, 1, tasks=4, user="alice", grant=10)
    assert (clean.lost, clean.duplicated, clean.drift, clean.problems) == (0, 0, 0, [])

    first, second, *_ = sorted((data_dir / "images" / "1").glob("*.png"))
    first.unlink()  # a row without its file
    shutil.copy(second, second.with_name("stray.png"))  # a file no row names
    (second.parent / f".{second.name}.tmp").write_bytes(b"half")  # a write cut short
    with connected(tmp_path, data_dir=data_dir) as conn:  # credits no task explains
        conn.execute(
            text(
                "INSERT INTO credit_ledger (user_id, delta, reason, note, created_at) "
                "VALUES (1, 1, 'grant', 'stray', 0)"
            )
        )
        conn.commit()
    found = audit(database_url, data_dir, 1, tasks=5, user="alice", grant=10)
    assert found.lost == 1  # five expected, four stored
    assert found.duplicated == 1 and found.drift == 1
    assert any("without their file" in p for p in found.problems), found.problems
    assert found.temp_files == [f"images/1/.{second.name}.tmp"]
