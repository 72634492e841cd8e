"""A disk that fills up under `kiln serve` while it writes images and its SQLite database,
and then gets its space back: a small tmpfs is the data folder (database included), and
a filler file takes all but a little of it, several times in one batch.

While the disk is full the scheduler stalls and says why (/healthz answers 503 naming the
full disk), the API answers no 500, the database passes ``PRAGMA integrity_check`` and
every image file under its final name is a whole PNG. Once the filler goes, the server
goes on by itself and the batch completes: each task succeeded once, image rows = files =
tasks × n, no temp file left, the ledger exact.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.reliability.conftest import Soak, Tally
from tests.reliability.faultkit import (
    Poller,
    add_user,
    audit,
    create_batch,
    ledger_drift,
    placeholder,
    rows,
    serve,
    sqlite_integrity,
    until,
    wait_finished,
    write_config,
)

N = 2
CONCURRENCY = 4  #: faultkit's configuration
#: seconds per generation: past the scheduler's claim-ahead, so that what a stalled
#: scheduler holds is what it started, not a prefetched queue
LATENCY = 0.3
#: bytes the filler leaves free, round by round: none for an image (its write fails
#: first), then room for a few images but not for the batch (the database fails first)
ROOMS = (8 * 1024, 192 * 1024)
STALLED = """
stall_seconds = 1
"""


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not permitted'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(data_dir: Path, room: int) -> Path:
    """A filler file that leaves ``room`` bytes free (or none, where the server wrote
    meanwhile: a full disk either way)."""
    filler = data_dir / "filler"
    left = max(0, shutil.disk_usage(data_dir).free - room)
    chunk = b"\0" * (1 << 20)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while left:
            left -= os.write(fd, chunk[: min(left, len(chunk))])
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        answer = httpx.get(f"{url}/healthz", timeout=10)
    except httpx.TransportError:
        return 0, {}
    return answer.status_code, answer.json()


def torn_images(data_dir: Path) -> list[str]:
    """Image files under their final names that are not whole PNGs."""
    torn = []
    for path in sorted((data_dir / "images").rglob("*.png")):
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError) as exc:
            torn.append(f"{path.name}: {exc}")
    return torn


@pytest.mark.slow
@pytest.mark.parametrize("full", ["database and images", "images"])
def test_a_full_disk_stalls_kiln_serve_cleanly_and_it_goes_on_when_space_returns(
    full: str, tmp_path: Path, soak: Soak, tally: Tally
) -> None:
    """``full``: what the small disk holds (the database elsewhere, only the images fill
    it: their writes fail, not the database's)."""
    tasks, rounds = soak.pick((30, 2), (100, 6))  # tasks per round
    with tmpfs(tmp_path / "data", "24m") as data_dir:
        database = (data_dir if full != "images" else tmp_path) / "kiln.db"
        write_config(
            tmp_path,
            f"sqlite:///{database}",
            data_dir=data_dir,
            backends=placeholder(latency=LATENCY),
        )
        config = tmp_path / "kiln.toml"
        config.write_text(config.read_text().replace("[scheduler]\n", "[scheduler]" + STALLED))
        grant = rounds * tasks * N
        token = add_user(tmp_path, "alice", grant)
        reasons: set[str] = set()
        finals: list[dict[str, Any]] = []
        held: list[int] = []  #: tasks claimed (running) a second into each stall
        with serve(tmp_path) as server:
            paths = ["/api/v1/batches/1", "/api/v1/batches", "/api/v1/me/credits", "/healthz"]
            with Poller(server.url, token, paths) as poller:
                batch_ids: list[int] = []
                for i in range(rounds):
                    # a batch of its own each round: a stalled scheduler generates ahead
                    # (up to its backlog), so a batch may end in the round that filled up
                    batch_ids.append(
                        create_batch(server.url, token, tasks, n=N, name=f"full{i}", size=512)
                    )
                    filler = fill(data_dir, ROOMS[i % len(ROOMS)])
                    reasons.add(wait_stalled(server.url))
                    time.sleep(1)  # what the stalled scheduler does meanwhile
                    held.append(running_tasks(database))
                    assert sqlite_integrity(database) == "ok"
                    assert torn_images(data_dir) == []
                    filler.unlink()
                    finals.append(wait_finished(server.url, token, batch_ids[-1]))
                    until(lambda: health(server.url)[0] == 200, "/healthz to recover")
        audits = [audit(f"sqlite:///{database}", data_dir, b, tasks=tasks, n=N) for b in batch_ids]
        drift = ledger_drift(f"sqlite:///{database}", "alice", grant)
        integrity = sqlite_integrity(database)
        written = full_disk_errors(data_dir / "logs")
        torn = torn_images(data_dir)
    tally.add(
        "disk full (SQLite)",
        faults=rounds,
        crashes=rounds,
        inputs=poller.asked,
        server_errors=poller.server_errors,
        lost=sum(a.lost for a in audits),
        duplicated=sum(a.duplicated for a in audits),
        drift=drift,
    )
    print(f"\ndisk full of {full}: {rounds} rounds; the scheduler said: {sorted(reasons)}")
    print(f"disk full of {full}: the server logged {written}; tasks held in each stall {held}")
    assert poller.errors == [], poller.errors
    assert all("disk is full" in r or "No space left" in r for r in reasons), reasons
    assert [f["status"] for f in finals] == ["completed"] * rounds, finals
    for found in audits:
        assert found.image_rows == found.files == tasks * N, found
        assert (found.lost, found.duplicated) == (0, 0), found
        assert found.problems == [], found.problems
    assert drift == 0
    assert integrity == "ok" and torn == []
    # nothing more is claimed (and generated, on a generator that may be paid for) while
    # nothing can be stored: what ran when the disk filled, and what it had claimed
    assert max(held) <= 3 * CONCURRENCY, held
    if full == "images":  # what failed was the images' writes, and it was said
        assert written["image write"] > 0, written


def wait_stalled(url: str) -> str:
    """Until /healthz says the scheduler cannot go on; its last error."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, body = health(url)
        if status == 503:
            scheduler = body.get("scheduler", {})
            return str(scheduler.get("last_error"))
        time.sleep(0.1)
    raise AssertionError("the disk filled up but /healthz never said so")


def running_tasks(database: Path) -> int:
    return int(
        rows(f"sqlite:///{database}", "SELECT COUNT(*) FROM tasks WHERE status = 'running'")[0][0]
    )


def full_disk_errors(logs: Path) -> dict[str, int]:
    """Lines of the server's logs that name a full disk, by what failed (an image's write,
    the database)."""
    found = {"image write": 0, "database": 0}
    for log in logs.glob("*.log"):
        for line in log.read_text().splitlines():
            if "No space left" in line:
                found["image write"] += 1
            elif "database or disk is full" in line:
                found["database"] += 1
    return found
