"""Batch files on disk: every format, every kind of bad file, and the shipped samples."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from pixelkiln import config, inputs
from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import SUPPORTED_EXTENSIONS, LoadedBatch, load_batch_file
from pixelkiln.inputs.tabular import COLUMN_NAMES, MAX_PROBLEMS

REPO = Path(__file__).resolve().parents[2]
SAMPLES = Path(inputs.__file__).resolve().parent.parent / "samples"


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def write_xlsx(folder: Path, rows: list[list[Any]], name: str = "batch.xlsx") -> Path:
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("tasks")
    for row in rows:
        sheet.append(row)
    path = folder / name
    workbook.save(path)
    return path


def located(exc: pytest.ExceptionInfo[SpecError]) -> list[tuple[str, str]]:
    return [(p.where, p.field) for p in exc.value.problems]


def the_message(exc: pytest.ExceptionInfo[SpecError]) -> str:
    [problem] = exc.value.problems
    return problem.message


# --- structured files ---------------------------------------------------------------------

SPEC = {
    "name": "demo",
    "defaults": {"width": 256, "height": 256, "n": 2},
    "tasks": [{"prompt": "a red fox", "key": "fox"}, {"prompt": "a blue bird", "n": 1}],
}


def test_json_happy_path(tmp_path: Path) -> None:
    path = write(tmp_path, "demo.json", json.dumps(SPEC))
    batch = load_batch_file(path)
    assert (batch.source, batch.base_dir, batch.where(1)) == (str(path), tmp_path, "task 2")
    first, second = batch.resolve(default_backend="placeholder")
    assert (first.key, first.width, first.n) == ("fox", 256, 2)
    assert (second.key, second.n) == ("2", 1)


def test_yaml_happy_path(tmp_path: Path) -> None:
    text = """
    defaults: {aspect_ratio: 16:9, resolution: 1K}   # unquoted ratio: text, not base-60
    tasks:
      - prompt: "a lighthouse: at dusk"
        key: light
      - prompt: a cabin
        aspect_ratio: 1:1
    """
    batch = load_batch_file(write(tmp_path, "night.yml", text))
    assert batch.spec.name == "night"  # the file stem names a batch without a name
    first, second = batch.resolve(default_backend="placeholder")
    assert (first.width, first.height, first.prompt) == (1344, 768, "a lighthouse: at dusk")
    assert (second.width, second.height) == (1024, 1024)


def test_toml_happy_path(tmp_path: Path) -> None:
    text = """
    name = "toml batch"
    [defaults]
    steps = 12
    [[tasks]]
    prompt = "a koi"
    [[tasks]]
    prompt = "a whale"
    cfg_scale = 4.5
    """
    batch = load_batch_file(write(tmp_path, "b.toml", text))
    koi, whale = batch.resolve(default_backend="placeholder")
    assert batch.spec.name == "toml batch"
    assert (koi.steps, whale.steps, whale.cfg_scale) == (12, 12, 4.5)


def test_name_argument_names_a_batch_without_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, "x.json", json.dumps({"tasks": [{"prompt": "a"}]}))
    assert load_batch_file(path, name="tonight").spec.name == "tonight"
    named = write(tmp_path, "y.json", json.dumps(SPEC))
    assert load_batch_file(named, name="tonight").spec.name == "demo"


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, "UPPER.YAML", "tasks: [{prompt: a}]")
    assert load_batch_file(path).spec.tasks[0].prompt == "a"


def test_json_with_bom_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.json", "\ufeff" + json.dumps(SPEC))
    assert load_batch_file(path).spec.name == "demo"


def test_invalid_values_are_located_by_task(tmp_path: Path) -> None:
    data = {"tasks": [{"prompt": "a"}, {"prompt": "b", "n": 12, "size": 3}]}
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, "b.json", json.dumps(data)))
    assert sorted(located(exc)) == [("task 2", "n"), ("task 2", "size")]
    assert {p.source for p in exc.value.problems} == {str(tmp_path / "b.json")}


def test_resolve_problems_are_located_by_task(tmp_path: Path) -> None:
    data = {"tasks": [{"prompt": "a"}, {"prompt": "b", "init_image": "gone.png"}]}
    batch = load_batch_file(write(tmp_path, "b.json", json.dumps(data)))
    with pytest.raises(SpecError) as exc:
        batch.resolve(default_backend="placeholder")
    assert located(exc) == [("task 2", "init_image")]


def test_malformed_json_says_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path, "bad.json", '{\n  "tasks": [\n    {"prompt": "a"}\n    {"prompt": "b"}\n]}'
    )
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    assert the_message(exc).startswith("is not valid JSON (line 4, column 5)")


def test_malformed_yaml_says_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "tasks:\n  - prompt: a cat: sitting\n")
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    message = the_message(exc)
    assert message.startswith("is not valid YAML (line 2, column ")
    assert "quotes" in message


def test_malformed_toml_says_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", 'name = "x"\n[[tasks]]\nprompt = a fox\n')
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    assert the_message(exc).startswith("is not valid TOML")
    assert "line 3" in the_message(exc)


@pytest.mark.parametrize("name", ["e.json", "e.yaml", "e.toml", "e.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, name, "  \n\n"))
    assert the_message(exc) == "the file is empty"


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("list.json", '[{"prompt": "a"}]', "a list"),
        ("comments.yaml", "# nothing yet\n", "nothing"),
        ("scalar.yaml", "just a prompt", "str"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, name: str, text: str, found: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, name, text))
    assert "top level must be a mapping" in the_message(exc)
    assert found in the_message(exc)


@pytest.mark.parametrize(("name", "head"), [("d.json", ""), ("d.yaml", ""), ("d.toml", "a = ")])
def test_absurd_nesting_is_a_spec_error(tmp_path: Path, name: str, head: str) -> None:
    path = write(tmp_path, name, head + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpecError, match="nested too deeply"):
        load_batch_file(path)


# --- files that cannot be read ----------------------------------------------------------


@pytest.mark.parametrize("name", ["gone.json", "gone.yaml", "gone.toml", "gone.csv", "gone.xlsx"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_batch_file(tmp_path / name)
    [problem] = exc.value.problems
    assert (problem.source, problem.message) == (str(tmp_path / name), "file not found")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(SpecError, match="is a folder"):
        load_batch_file(tmp_path / "dir.yaml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.json", json.dumps(SPEC))
    path.chmod(0)
    with pytest.raises(SpecError, match="cannot read the file"):
        load_batch_file(path)


@pytest.mark.parametrize("name", ["x.yaml", "x.csv", "x.xlsx"])
def test_path_through_a_file_cannot_be_read(tmp_path: Path, name: str) -> None:
    parent = write(tmp_path, "plain.txt", "not a folder")
    with pytest.raises(SpecError, match="cannot read the file: Not a directory"):
        load_batch_file(parent / name)


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.csv", "prompt\ncafé au lait\n", encoding="latin-1")
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    assert "is not UTF-8" in the_message(exc)
    assert "CSV UTF-8" in the_message(exc)


@pytest.mark.parametrize("name", ["b.txt", "b.xls", "batch"])
def test_unknown_extension_names_the_supported_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_batch_file(write(tmp_path, name, "prompt\na\n"))
    assert "unsupported file type" in the_message(exc)
    assert ".json, .yaml, .yml, .toml, .csv, .xlsx" in the_message(exc)
    assert SUPPORTED_EXTENSIONS == (".json", ".yaml", ".yml", ".toml", ".csv", ".xlsx")


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
    started = time.perf_counter()
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    elapsed = time.perf_counter() - started
    assert located(exc) == [("row 17", "n"), ("row 4321", "aspect_ratio")]
    assert elapsed < 10  # about 0.3 s on a laptop; generous for slow CI machines


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


# --- LoadedBatch ------------------------------------------------------------------------


def test_loaded_batch_is_frozen(tmp_path: Path) -> None:
    batch = load_batch_file(write(tmp_path, "b.json", json.dumps(SPEC)))
    assert isinstance(batch, LoadedBatch)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.source = "other"  # type: ignore[misc]


def test_relative_path_gives_absolute_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "b.yaml", "tasks: [{prompt: a, init_image: in.png}]")
    (tmp_path / "in.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    batch = load_batch_file(Path("b.yaml"))
    assert (batch.source, batch.base_dir) == ("b.yaml", tmp_path)
    [task] = batch.resolve(default_backend="placeholder")
    assert task.init_image == str((tmp_path / "in.png").resolve())


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


def test_a_partial_structured_file_names_tasks(tmp_path: Path) -> None:
    text = "tasks:\n  - {prompt: a, n: 0}\n  - {prompt: b, init_image: gone.png}\n"
    batch = load_batch_file(write(tmp_path, "b.yaml", text), partial=True)
    with pytest.raises(SpecError) as exc:
        batch.resolve(default_backend="placeholder")
    assert located(exc) == [("task 1", "n"), ("task 2", "init_image")]


# --- shipped samples and examples --------------------------------------------------------


def test_sample_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KILN_"):
            monkeypatch.delenv(name)
    settings = config.load_settings(SAMPLES / "kiln.toml")
    assert [(b.name, b.type) for b in settings.backends] == [("placeholder", "placeholder")]
    assert settings.default_backend() == "placeholder"


@pytest.mark.parametrize(
    "model",
    [
        config.StorageSettings,
        config.SchedulerSettings,
        config.LogSettings,
        config.BackendSettings,
    ],
)
def test_sample_config_shows_every_setting(model: type[Any]) -> None:
    text = (SAMPLES / "kiln.toml").read_text()
    missing = [name for name in model.model_fields if f"{name} =" not in text]
    assert missing == []


def test_sample_batch_loads_and_resolves() -> None:
    batch = load_batch_file(SAMPLES / "batch.yaml")
    tasks = batch.resolve(default_backend="placeholder", known_backends=["placeholder"])
    assert 4 <= len(tasks) <= 6
    assert {task.backend for task in tasks} == {"placeholder"}
    assert any(task.n > 1 for task in tasks)
    assert any(task.negative_prompt for task in tasks)
    assert max(task.width * task.height for task in tasks) <= 512 * 512


@pytest.mark.parametrize(("name", "count"), [("quickstart.yaml", 12), ("rows.csv", 8)])
def test_examples_load_and_resolve(name: str, count: int) -> None:
    batch = load_batch_file(REPO / "examples" / name)
    tasks = batch.resolve(default_backend="placeholder", known_backends=["placeholder"])
    assert len(tasks) == count
    assert len({task.key for task in tasks}) == count


def test_every_example_batch_file_loads() -> None:
    files = [p for p in (REPO / "examples").iterdir() if p.suffix in SUPPORTED_EXTENSIONS]
    assert len(files) >= 2
    for path in files:
        load_batch_file(path).resolve(default_backend="placeholder")
