"""`kiln run` with bad input: exit 2 and every problem in one message, nothing stored."""

from __future__ import annotations

from pathlib import Path

from test_cli import kiln

from tests.processes import count


def test_every_problem_of_a_batch_file_is_listed_at_once(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: bad\n"
        "defaults: {width: 64, height: 64}\n"
        "tasks:\n"
        "  - {prompt: a fox, n: 0}\n"
        "  - {prompt: a cat, aspect_ratio: '5:7', width: null, height: null}\n"
        "  - {prompt: a dog, init_image: missing.png}\n"
    )
    done = kiln(tmp_path, "run", "bad.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())  # the console wraps long lines
    assert "Invalid input (3 problem(s))" in err
    assert "bad.yaml, task 1, field 'n'" in err
    assert "bad.yaml, task 2, field 'aspect_ratio': must be one of" in err
    assert "bad.yaml, task 3, field 'init_image': file not found: missing.png" in err
    assert "Traceback" not in done.stderr
    assert count(tmp_path, "batches") == 0


def test_a_wrong_top_level_key_lists_the_top_level_keys(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text('{"name": "x", "task": [{"prompt": "a"}]}')
    done = kiln(tmp_path, "run", "b.json")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "field 'task': unknown key 'task'; known keys are: name, defaults, " in err
    assert "items, tasks" in err
    assert "field 'tasks': a batch needs at least one task, in 'tasks' or 'items'" in err
    assert "negative_prompt" not in err


def test_a_table_names_spreadsheet_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("prompt,n,init_image\na,0,\n\nb,1,gone.png\n")
    done = kiln(tmp_path, "run", "rows.csv")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "rows.csv, row 2, field 'n'" in err
    assert "rows.csv, row 4, field 'init_image': file not found: gone.png" in err
    assert count(tmp_path, "batches") == 0
