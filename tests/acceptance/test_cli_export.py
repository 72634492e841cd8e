"""`kiln export --to FILE.xlsx|FILE.csv`: a table per task that `kiln run` reads back."""

from __future__ import annotations

import csv
from pathlib import Path

import openpyxl
import pytest
from test_cli import kiln

from pixelkiln.export import TABLE_COLUMNS
from pixelkiln.inputs.tabular import COLUMN_NAMES, RESULT_COLUMNS


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A folder where batch 1 ran: one task succeeded (2 images), one failed."""
    (tmp_path / "kiln.toml").write_text(
        '[scheduler]\nretry_base_delay = 0.01\n[[backends]]\nname = "placeholder"\n'
        'type = "placeholder"\n[backends.options]\nreject_if_prompt_contains = "bad"\n'
    )
    (tmp_path / "b.yaml").write_text(
        "name: mixed\ndefaults: {width: 64, height: 64, seed: 7}\ntasks:\n"
        "  - {prompt: '=1+1 a fox', negative_prompt: '-blurry', key: a, n: 2}\n"
        "  - {prompt: bad one, key: b}\n"
    )
    assert kiln(tmp_path, "run", "b.yaml", "--quiet").returncode == 1
    return tmp_path


def test_every_exported_column_is_read_back_or_passed_over() -> None:
    assert set(TABLE_COLUMNS) - set(RESULT_COLUMNS) <= set(COLUMN_NAMES)


def test_export_to_xlsx_writes_a_workbook_that_runs_again(finished: Path) -> None:
    done = kiln(finished, "export", "mixed", "--to", "out.xlsx")
    assert done.returncode == 0, done.stderr
    assert "Exported 2 task(s) to out.xlsx" in done.stdout
    assert (finished / "out.xlsx").is_file()
    sheet = openpyxl.load_workbook(finished / "out.xlsx").worksheets[0]
    header, first, second = ([c.value for c in row] for row in sheet.iter_rows())
    assert header == list(TABLE_COLUMNS)
    row = dict(zip(header, first, strict=True))
    assert (row["key"], row["prompt"], row["negative_prompt"]) == ("a", "=1+1 a fox", "-blurry")
    assert sheet.cell(2, 2).data_type == "s"  # text, not a formula
    assert (row["width"], row["seed"], row["n"], row["status"]) == (64, 7, 2, "succeeded")
    assert row["aspect_ratio"] is None  # 64×64 is no named size: width and height stand
    links = row["links"].split("\n")
    assert len(links) == 2 and all(Path(p).is_file() for p in links)
    assert row["images"].split("\n") == [Path(p).name for p in links]
    assert row["final_prompt"] == "=1+1 a fox"
    failed = dict(zip(header, second, strict=True))
    assert failed["status"] == "failed" and "placeholder rejects" in failed["error"]
    assert failed["images"] is None and failed["links"] is None

    again = kiln(finished, "run", "out.xlsx", "--quiet")
    assert again.returncode == 1  # the same two tasks: one succeeds, one is rejected again
    assert "Batch 2 'out': 2 task(s)" in again.stdout


def test_export_to_csv_guards_formulas_and_reads_back(finished: Path) -> None:
    done = kiln(finished, "export", "1", "--to", "out.csv")
    assert done.returncode == 0, done.stderr
    with (finished / "out.csv").open(encoding="utf-8-sig", newline="") as f:
        header, first, _ = list(csv.reader(f))
    row = dict(zip(header, first, strict=True))
    assert (row["prompt"], row["negative_prompt"]) == ("'=1+1 a fox", "'-blurry")
    again = kiln(finished, "run", "out.csv", "--quiet")
    assert again.returncode == 1
    tasks = kiln(finished, "export", "2", "--to", "again.xlsx")
    assert tasks.returncode == 0
    sheet = openpyxl.load_workbook(finished / "again.xlsx").worksheets[0]
    assert sheet.cell(2, 2).value == "=1+1 a fox"  # the quote was taken off on reading


def test_export_to_an_unknown_suffix_is_refused(finished: Path) -> None:
    done = kiln(finished, "export", "1", "--to", "out.txt")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())  # the console wraps long lines
    assert "give a folder, or a file ending in .zip, .xlsx or .csv" in err
    assert not (finished / "out.txt").exists()
    (finished / "v1.0").mkdir()  # an existing folder is a folder, whatever its name
    assert kiln(finished, "export", "1", "--to", "v1.0").returncode == 0
    assert (finished / "v1.0" / "manifest.json").is_file()
