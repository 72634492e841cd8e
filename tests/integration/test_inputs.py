"""Batch files on disk: every format, every kind of bad file, and the shipped samples."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from pixelkiln import config, inputs
from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import SUPPORTED_EXTENSIONS, LoadedBatch, load_batch_file

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
