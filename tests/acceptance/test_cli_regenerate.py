"""`kiln regenerate` as a user runs it: a storyboard's chosen shots made again, history kept."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.test_cli import kiln, query


def _config(folder: Path, reject: str) -> None:
    """One placeholder backend that rejects prompts containing ``reject``."""
    (folder / "kiln.toml").write_text(
        f"""
[scheduler]
retry_base_delay = 0.01
poll_interval = 0.05

[[backends]]
name = "placeholder"
type = "placeholder"
options = {{ reject_if_prompt_contains = "{reject}" }}
"""
    )


def _storyboard(folder: Path) -> Path:
    tasks = [
        {"key": f"s{i}", "prompt": f"shot {i}" + (" FLAKY" if i in (3, 5) else "")}
        for i in range(1, 7)
    ]
    path = folder / "storyboard.json"
    path.write_text(
        json.dumps({"name": "story", "defaults": {"width": 64, "height": 64}, "tasks": tasks})
    )
    return path


def test_regenerate_a_failed_and_a_succeeded_shot_keeps_the_old_file(tmp_path: Path) -> None:
    _config(tmp_path, "FLAKY")
    first = kiln(tmp_path, "run", str(_storyboard(tmp_path)), "--quiet")
    assert first.returncode == 1 and "partial" in first.stdout  # s3 and s5 failed
    images = tmp_path / "kiln-data" / "images" / "1"
    assert (images / "s2_0002_0.png").exists() and not (images / "s3_0003_0.png").exists()

    _config(tmp_path, "NEVER")  # the generator was fixed
    again = kiln(tmp_path, "regenerate", "1", "--keys", "s3,s2", "--quiet")
    assert again.returncode == 1, again.stderr  # s5 still failed: the batch ends partial
    assert "Batch 1: 2 task(s) back in the queue." in again.stdout
    assert "partial" in again.stdout
    assert {p.name for p in images.glob("s[23]_*.png")} == {
        "s2_0002_0.png",  # the old image, kept as history
        "s2_0002_0_r1.png",
        "s3_0003_0_r1.png",
    }
    rows = query(tmp_path, "SELECT run, superseded FROM images ORDER BY task_id, run")
    assert sorted(rows).count((0, 1)) == 1 and len(rows) == 6
    assert query(tmp_path, "SELECT n_images, n_succeeded FROM batches") == [(5, 5)]

    replaced = kiln(tmp_path, "regenerate", "story", "--tasks", "1", "--replace", "--quiet")
    assert replaced.returncode == 1, replaced.stderr
    assert not (images / "s1_0001_0.png").exists() and (images / "s1_0001_0_r1.png").exists()
    assert query(tmp_path, "SELECT n_images FROM batches") == [(5,)]


def test_regenerate_refuses_unknown_keys_and_bad_options_with_exit_2(tmp_path: Path) -> None:
    _config(tmp_path, "FLAKY")
    kiln(tmp_path, "run", str(_storyboard(tmp_path)), "--quiet")
    unknown = kiln(tmp_path, "regenerate", "1", "--keys", "s1,nope")
    assert unknown.returncode == 2 and "no task with key 'nope'" in unknown.stderr
    neither = kiln(tmp_path, "regenerate", "1")
    assert neither.returncode == 2 and "give either --keys or --tasks" in neither.stderr
    words = kiln(tmp_path, "regenerate", "1", "--tasks", "1,two")
    assert words.returncode == 2 and "'two'" in words.stderr
    missing = kiln(tmp_path, "regenerate", "9", "--keys", "s1")
    assert missing.returncode == 2 and "no batch" in missing.stderr
    for done in (unknown, neither, words, missing):
        assert "Traceback" not in done.stderr
    assert query(tmp_path, "SELECT max(run) FROM tasks") == [(0,)]
