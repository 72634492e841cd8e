"""Spreadsheets on disk: CSV and XLSX batch files, their rows, headers and bad cells."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from test_inputs import located, the_message, write, write_xlsx

from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import load_batch_file
from pixelkiln.inputs.tabular import COLUMN_NAMES, MAX_PROBLEMS

# --- CSV ---------------------------------------------------------------------------------


def test_csv_happy_path(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "refs" / name).write_bytes(b"png")
    text = (
        " Prompt ,KEY,Negative Prompt,width,height,n,reference_images\n"
        '"a fox, red",fox,blurry,256,256,2,refs/a.png; refs/b.png\n'
        'a bird,,,,,,"refs/c.png\nrefs/a.png"\n'
    )
    batch = load_batch_file(write(tmp_path, "shots.csv", text))
    assert (batch.spec.name, batch.spec.defaults.model_dump(exclude_none=True)) == ("shots", {})
    assert [batch.where(0), batch.where(1)] == ["row 2", "row 3"]
    fox, bird = batch.resolve(default_backend="placeholder")
    assert (fox.prompt, fox.key, fox.negative_prompt, fox.n) == ("a fox, red", "fox", "blurry", 2)
    assert (fox.width, fox.height) == (256, 256)
    assert fox.reference_images == tuple(
        str((tmp_path / "refs" / n).resolve()) for n in ("a.png", "b.png")
    )
    # blank cells take the defaults
    assert (bird.key, bird.n, bird.width, bird.negative_prompt) == ("2", 1, 1024, "")
    assert len(bird.reference_images) == 2


def test_csv_with_bom_and_semicolons(tmp_path: Path) -> None:
    text = "\ufeffprompt;n;cfg_scale\na fox, red;3;7,5\n"  # European Excel: decimal comma
    batch = load_batch_file(write(tmp_path, "excel.csv", text))
    [task] = batch.resolve(default_backend="placeholder")
    assert (task.prompt, task.n, task.cfg_scale) == ("a fox, red", 3, 7.5)


def test_csv_with_tabs(tmp_path: Path) -> None:
    batch = load_batch_file(write(tmp_path, "t.csv", "prompt\tseed\na, b; c\t5\r\n"))
    [task] = batch.resolve(default_backend="placeholder")
    assert (task.prompt, task.seed) == ("a, b; c", 5)


def test_csv_problems_in_all_rows_are_reported_together(tmp_path: Path) -> None:
    text = "prompt,n,aspect_ratio,steps\na,11,1:1,20\nb,2,5:4,20\nc,1,1:1,lots\n,1,,\n"
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.csv", text))
    assert located(exc) == [
        ("row 2", "n"),
        ("row 3", "aspect_ratio"),
        ("row 4", "steps"),
        ("row 5", "prompt"),
    ]


def test_unknown_column_is_reported_once(tmp_path: Path) -> None:
    text = "prompt,Colour,n\na,red,1\nb,blue,1\nc,green,x\n"
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.csv", text))
    assert located(exc) == [("row 1", "Colour"), ("row 4", "n")]
    message = exc.value.problems[0].message
    assert message.startswith("unknown column 'Colour'; known columns are: ")
    assert all(name in message for name in COLUMN_NAMES)


def test_duplicate_and_missing_prompt_columns(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.csv", "n,seed,N\n1,2,3\n"))
    assert located(exc) == [("row 1", "n"), ("row 1", "prompt")]
    assert "appears twice" in exc.value.problems[0].message


def test_values_past_the_header_are_reported_once(tmp_path: Path) -> None:
    text = "prompt,n\na fox, red,1\nb,1\na bird, blue,2\n"  # unquoted commas
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.csv", text))
    problems = exc.value.problems
    assert [(p.where, p.field) for p in problems] == [("row 2", ""), ("row 2", "n"), ("row 4", "n")]
    assert "column C has values but no heading" in problems[0].message
    assert "2 row(s)" in problems[0].message


def test_blank_csv_rows_are_skipped_and_numbering_kept(tmp_path: Path) -> None:
    text = "prompt,backend\n\na,\n , \n,,\nb,gpu\n"
    batch = load_batch_file(write(tmp_path, "b.csv", text))
    assert [batch.where(i) for i in range(2)] == ["row 3", "row 6"]
    with pytest.raises(SpecError) as exc:
        batch.resolve(default_backend="sd", known_backends=["sd"])
    assert located(exc) == [("row 6", "backend")]


def test_problems_are_capped(tmp_path: Path) -> None:
    rows = "".join(f"p{i},0\n" for i in range(MAX_PROBLEMS + 50))
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.csv", "prompt,n\n" + rows))
    problems = exc.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].message == "... and 50 more problems"
    assert (problems[MAX_PROBLEMS - 1].where, problems[MAX_PROBLEMS - 1].field) == ("row 201", "n")


def test_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="header but no task rows"):
        load_batch_file(write(tmp_path, "b.csv", "prompt,n\n\n,\n"))


def test_malformed_csv(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is not valid CSV"):
        load_batch_file(write(tmp_path, "b.csv", "prompt\n" + "x" * 200_000 + "\n"))


# --- XLSX --------------------------------------------------------------------------------


def test_xlsx_happy_path(tmp_path: Path) -> None:
    rows: list[list[Any]] = [
        ["prompt", "Key", "n", "seed", "cfg_scale", "filename_prefix", "width"],
        ["a fox", 17, 3.0, 12345, 6, 2024, 256],  # numbers as Excel stores them
        ["a bird", "b", None, None, None, None, None],
    ]
    batch = load_batch_file(write_xlsx(tmp_path, rows), name="from excel")
    assert (batch.spec.name, batch.where(1)) == ("from excel", "row 3")
    fox, bird = batch.resolve(default_backend="placeholder")
    assert (fox.key, fox.n, fox.seed, fox.cfg_scale) == ("17", 3, 12345, 6.0)
    assert (fox.filename_prefix, fox.width) == ("2024", 256)
    assert (bird.key, bird.n, bird.width) == ("b", 1, 1024)


def test_xlsx_reads_the_first_sheet(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    first = workbook.active
    assert first is not None
    first.append(["prompt"])
    first.append(["from the first sheet"])
    other = workbook.create_sheet("notes")
    other.append(["not a header"])
    workbook.active = 1
    path = tmp_path / "two.xlsx"
    workbook.save(path)
    [task] = load_batch_file(path).resolve(default_backend="placeholder")
    assert task.prompt == "from the first sheet"


def test_xlsx_5000_rows_with_two_errors(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["prompt", "key", "aspect_ratio", "n", "seed", "filename_prefix"]]
    for number in range(2, 5_002):
        rows.append([f"prompt {number}", f"k{number}", "16:9", 2, number, "big"])
    rows[17 - 1][3] = 11  # n out of range in row 17
    rows[4_321 - 1][2] = "5:4"  # unknown aspect ratio in row 4,321
    path = write_xlsx(tmp_path, rows)
    with pytest.raises(SpecError) as exc:  # how fast: bench, not a timing assertion here
        load_batch_file(path)
    assert located(exc) == [("row 17", "n"), ("row 4321", "aspect_ratio")]


def test_xlsx_5000_rows_load(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["prompt", "n"]]
    rows += [[f"prompt {i}", 1 + i % 10] for i in range(5_000)]
    batch = load_batch_file(write_xlsx(tmp_path, rows))
    assert len(batch.spec.tasks) == 5_000
    assert batch.where(4_999) == "row 5001"


def test_blank_xlsx_rows_are_skipped_and_numbering_kept(tmp_path: Path) -> None:
    rows: list[list[Any]] = [
        [],
        ["prompt", "n"],
        ["a", 1],
        [None, None],
        ["   ", None],
        ["b", 0],
    ]
    with pytest.raises(SpecError) as exc:
        load_batch_file(write_xlsx(tmp_path, rows))
    assert located(exc) == [("row 6", "n")]
    rows[5][1] = 2
    batch = load_batch_file(write_xlsx(tmp_path, rows))
    assert [batch.where(0), batch.where(1)] == ["row 3", "row 6"]


def test_xlsx_unknown_column_once(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["prompt", "size"], *[["a", 3]] * 50]
    with pytest.raises(SpecError) as exc:
        load_batch_file(write_xlsx(tmp_path, rows))
    assert located(exc) == [("row 1", "size")]


def test_empty_xlsx(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="the table is empty"):
        load_batch_file(write_xlsx(tmp_path, []))


@pytest.mark.parametrize("kind", ["not a zip", "zip without a workbook", "truncated"])
def test_corrupt_xlsx(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.xlsx"
    if kind == "not a zip":
        path.write_text("prompt,n\na,1\n")
    elif kind == "zip without a workbook":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("hello.txt", "hi")
    else:
        good = write_xlsx(tmp_path, [["prompt"], ["a"]], name="good.xlsx").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    assert "is not a readable .xlsx workbook" in the_message(exc)


# --- partial tables ------------------------------------------------------------------


def test_a_partial_table_reports_values_and_files_by_spreadsheet_row(tmp_path: Path) -> None:
    text = "prompt,n,init_image\n\na,0,\nb,1,gone.png\nc,2,\n"
    batch = load_batch_file(write(tmp_path, "rows.csv", text), partial=True)
    assert [(p.where, p.field) for p in batch.spec.problems] == [("row 3", "n")]
    with pytest.raises(SpecError) as exc:
        batch.resolve(default_backend="placeholder")
    assert located(exc) == [("row 3", "n"), ("row 4", "init_image")]
    assert {p.source for p in exc.value.problems} == {str(tmp_path / "rows.csv")}


def test_a_partial_xlsx_names_rows_and_its_file_as_asked(tmp_path: Path) -> None:
    rows = [["prompt", "colour", "init_image"], ["a", "red", "gone.png"], [None, None, None]]
    path = write_xlsx(tmp_path, [*rows, ["b", "blue", None]])
    batch = load_batch_file(path, partial=True, source="upload.xlsx")
    with pytest.raises(SpecError) as exc:
        batch.resolve(default_backend="placeholder")
    assert located(exc) == [("row 1", "colour"), ("row 2", "init_image")]
    assert {p.source for p in exc.value.problems} == {"upload.xlsx"}


def test_a_table_without_a_prompt_column_stops_at_the_header(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.csv", "n,init_image\n1,gone.png\n"), partial=True)
    assert located(exc) == [("row 1", "prompt")]
