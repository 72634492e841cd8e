"""Bad bearer tokens against a real `kiln serve`, on SQLite and PostgreSQL.

A guesser behind a proxy on this machine (its address in ``X-Forwarded-For``, which
uvicorn believes from loopback) sends 300 different bad tokens (3,000 in full mode):
after ``[auth] failed_limit`` of them (the default, 10) it is answered 429 with
``Retry-After``, its good token too, while a neighbour's good requests, sent in between,
go on; the server logs one WARNING per lock, naming the address and no token; the lock
ends after the window. Never a 5xx. The start-up WARNING about the secret key is checked
on the way: given on the SQLite run (no key configured: it lives in the data folder, by
``kiln serve`` and ``kiln worker``), not on the PostgreSQL run (``secret_key`` set).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.processes import KILN, env, running, serving, stop
from tests.reliability.conftest import Soak, Tally

GUESSER, NEIGHBOUR = "203.0.113.7", "198.51.100.2"
LIMIT = 10  #: [auth] failed_limit's default, which this test runs with
WINDOW = 3.0  #: [auth] failed_window here: short enough to see a lock end
NEIGHBOUR_EVERY = 25  #: one good request of the neighbour per this many guesses
LOCK_LINE = re.compile(r"WARNING .*pixelkiln\.auth: client (\S+): 10 different bad tokens")


def database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'kiln.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def configure(folder: Path, database_url: str, secret_key: str | None) -> None:
    lines = [
        "[storage]",
        'data_dir = "data"',
        f'database_url = "{database_url}"',
        "[auth]",
        "enabled = true",
        f"failed_window = {WINDOW}",
    ]
    if secret_key is not None:
        lines.append(f'secret_key = "{secret_key}"')
    (folder / "kiln.toml").write_text("\n".join(lines) + "\n")


def add_user(folder: Path, name: str) -> str:
    added = subprocess.run(
        [*KILN, "users", "add", name], cwd=folder, env=env(folder), capture_output=True, text=True
    )
    assert added.returncode == 0, added.stderr
    return added.stdout.strip()


def as_from(address: str, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}


def blocks(statuses: list[int]) -> list[tuple[int, int]]:
    """``[401, 401, 429, 429, 429, 401]`` → ``[(401, 2), (429, 3), (401, 1)]``."""
    runs: list[tuple[int, int]] = []
    for status in statuses:
        if runs and runs[-1][0] == status:
            runs[-1] = (status, runs[-1][1] + 1)
        else:
            runs.append((status, 1))
    return runs


def server_logs(folder: Path, prefix: str) -> str:
    return "\n".join(p.read_text() for p in sorted((folder / "data" / "logs").glob(f"{prefix}_*")))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_bad_tokens_are_throttled_per_address_and_logged(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, soak: Soak, tally: Tally
) -> None:
    area = f"bad tokens ({'SQLite' if kind == 'sqlite' else 'PostgreSQL'})"
    guesses = [f"pk_{secrets.token_urlsafe(32)}" for _ in range(soak.pick(300, 3000))]
    secret = Fernet.generate_key().decode() if kind == "postgres" else None
    configure(tmp_path, database(kind, request, tmp_path), secret)
    alice, bob = add_user(tmp_path, "alice"), add_user(tmp_path, "bob")

    statuses: list[int] = []
    waits: list[int] = []
    neighbour: list[int] = []
    with serving(tmp_path) as url, httpx.Client(base_url=url, timeout=30) as http:
        for i, guess in enumerate(guesses):
            r = http.get("/api/v1/me", headers=as_from(GUESSER, guess))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "too_many_requests", r.text
                waits.append(int(r.headers["retry-after"]))
            if i % NEIGHBOUR_EVERY == 0:
                neighbour.append(
                    http.get("/api/v1/me", headers=as_from(NEIGHBOUR, bob)).status_code
                )
        # this machine's own requests are never locked
        assert (
            http.get("/api/v1/me", headers={"Authorization": f"Bearer {alice}"}).status_code == 200
        )
        # once a window has passed with no guess, everything is forgotten: 10 guesses
        # lock the address again, and then its good token is not even checked...
        time.sleep(WINDOW + 0.5)
        again = [f"pk_{secrets.token_urlsafe(32)}" for _ in range(LIMIT)]
        for guess in again:
            assert http.get("/api/v1/me", headers=as_from(GUESSER, guess)).status_code == 401
        locked = http.get("/api/v1/me", headers=as_from(GUESSER, alice))
        assert locked.status_code == 429, locked.text
        # ...until the lock ends, after the window
        time.sleep(int(locked.headers["retry-after"]) + 0.2)
        after = http.get("/api/v1/me", headers=as_from(GUESSER, alice))
        assert after.status_code == 200 and after.json()["name"] == "alice", after.text
        guesses += again

    tally.add(
        area,
        inputs=len(guesses) + len(neighbour) + 4,
        server_errors=sum(s >= 500 for s in statuses + neighbour),
    )
    assert not [s for s in statuses + neighbour if s >= 500]
    # 10 × 401, then 429 until the lock ends, then (only on a machine slow enough for the
    # burst to outlast a window) 10 × 401 again: never an 11th 401 in a row
    runs = blocks(statuses)
    assert runs[0] == (401, LIMIT), runs[:4]
    assert all(status in (401, 429) for status, _ in runs), runs
    assert all(n == LIMIT for status, n in runs[:-1] if status == 401), runs
    assert all(1 <= w <= WINDOW for w in waits)
    assert neighbour == [200] * len(neighbour)

    logged = server_logs(tmp_path, "serve")
    locks = LOCK_LINE.findall(logged)
    assert locks == [GUESSER] * (sum(status == 429 for status, _ in runs) + 1), logged[-2000:]
    console = (tmp_path / "serve.log").read_text()
    for text in (logged, console):
        assert not any(token in text for token in (*guesses, alice, bob))

    key_warning = "the secret key (it encrypts users' provider keys"
    if secret is None:  # auth on, no key set: kiln serve and kiln worker both say so
        assert key_warning in console
        assert re.search(r"WARNING .*pixelkiln\.serve: the secret key", logged)
        with running(tmp_path, "worker", log="worker.log") as worker:
            deadline = time.monotonic() + 60
            while "pixelkiln worker" not in (tmp_path / "worker.log").read_text():
                assert worker.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            assert stop(worker) == 0
        assert key_warning in (tmp_path / "worker.log").read_text()
    else:
        assert key_warning not in console and "the secret key" not in logged
