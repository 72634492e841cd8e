"""`kiln gc` as a user runs it: batches made by `kiln run`, aged by moving their timestamps
back, listed by `--dry-run`, removed by `kiln gc`; `kiln serve` then no longer lists their
images, and sweeps an old batch itself at start-up."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import KILN, env, execute, query, serving

CONFIG = """
[[backends]]
name = "placeholder"
type = "placeholder"
options = { reject_if_prompt_contains = "REJECT" }

[scheduler]
poll_interval = 0.05
retry_base_delay = 0.01

[retention]
images_days = 7
"""
DAY = 86_400


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, *args],
        cwd=cwd,
        env={**env(cwd), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_batch(cwd: Path, name: str, *prompts: str) -> int:
    spec = cwd / f"{name}.json"
    tasks = [{"prompt": p, "key": f"k{i}"} for i, p in enumerate(prompts)]
    spec.write_text(
        json.dumps({"name": name, "defaults": {"width": 64, "height": 64}, "tasks": tasks})
    )
    done = kiln(cwd, "run", spec.name, "--quiet")
    assert done.returncode in (0, 1), done.stderr
    return int(query(cwd, "SELECT max(id) FROM batches")[0][0])


def age(cwd: Path, batch_id: int, days: float) -> None:
    ended = time.time() - days * DAY
    execute(
        cwd,
        "UPDATE batches SET finished_at = :ended, created_at = :created WHERE id = :id",
        {"ended": ended, "created": ended - 60, "id": batch_id},
    )


def rows(cwd: Path, sql: str, batch_id: int) -> int:
    """The count of ``sql`` (its ``:id`` the batch's) on the database `kiln` uses in ``cwd``."""
    return int(query(cwd, sql, {"id": batch_id})[0][0])


def image_files(cwd: Path, batch_id: int) -> list[Path]:
    folder = cwd / "kiln-data" / "images" / str(batch_id)
    return sorted(folder.glob("*.png")) if folder.exists() else []


def records(url: str) -> set[int]:
    """The batch ids of every image the API's records list."""
    page = httpx.get(f"{url}/api/v1/images", params={"limit": 100}, timeout=10)
    assert page.status_code == 200, page.text
    return {item["batch_id"] for item in page.json()["items"]}


@pytest.mark.slow
def test_gc_dry_run_lists_then_gc_removes_old_batches_and_the_api_forgets_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    old = run_batch(tmp_path, "old moths", "a moth", "a fox")
    recent = run_batch(tmp_path, "recent herons", "a heron")
    retried = run_batch(tmp_path, "half done", "an owl", "REJECT it")
    for batch_id, days in ((old, 10), (recent, 2), (retried, 10)):
        age(tmp_path, batch_id, days)
    # retried: queued again (kiln retry --no-run), so never touched however old
    assert kiln(tmp_path, "retry", str(retried), "--no-run").returncode == 0
    assert len(image_files(tmp_path, old)) == 2

    dry = kiln(tmp_path, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "old moths" in dry.stdout and "Dry run: nothing was removed" in dry.stdout
    assert "recent herons" not in dry.stdout and "half done" not in dry.stdout
    assert rows(tmp_path, "SELECT count(*) FROM batches WHERE id = :id", old) == 1
    assert len(image_files(tmp_path, old)) == 2

    gc = kiln(tmp_path, "gc")
    assert gc.returncode == 0, gc.stderr
    assert "old moths" in gc.stdout and "Removed 1 batch(es) (2 task(s), 2 image(s))" in gc.stdout
    assert rows(tmp_path, "SELECT count(*) FROM batches WHERE id = :id", old) == 0
    assert rows(tmp_path, "SELECT count(*) FROM tasks WHERE batch_id = :id", old) == 0
    assert rows(tmp_path, "SELECT count(*) FROM images WHERE batch_id = :id", old) == 0
    assert rows(tmp_path, "SELECT count(*) FROM events WHERE batch_id = :id", old) == 0
    assert image_files(tmp_path, old) == []
    assert len(image_files(tmp_path, recent)) == 1 and len(image_files(tmp_path, retried)) == 1
    assert "Nothing is old enough" in kiln(tmp_path, "gc").stdout

    # one more old batch: the server's own pass at start-up removes it
    later = run_batch(tmp_path, "later", "a wren")
    age(tmp_path, later, 30)
    with serving(tmp_path, log_level="info") as url:
        deadline = time.monotonic() + 20  # a deadline for the start-up pass, not a timing claim
        while later in records(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert records(url) == {recent, retried}
    assert image_files(tmp_path, later) == []
    logs = "".join(p.read_text() for p in (tmp_path / "kiln-data" / "logs").glob("serve_*.log"))
    assert "retention: removed 1 batch(es)" in logs


def test_gc_says_when_every_rule_is_off(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(
        "[retention]\nevents_days = 0\nimages_days = 0\nuploads_days = 0\n"
    )
    done = kiln(tmp_path, "gc")
    assert done.returncode == 0 and "Retention is off" in done.stdout
