"""Spreadsheets as batch-tool users make them: Chinese headings, values as typed,
formulas without a saved value, and pictures pasted into cells."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import load_batch_file
from pixelkiln.storage import read_input_image
from tests.sheets import ZH_HEADER, png, with_media, workbook_bytes, wps_cell_picture


def test_chinese_headings_and_values_as_typed(tmp_path: Path) -> None:
    rows = [
        [" 编号 ", *ZH_HEADER],
        ["狐狸", "雪地里的红狐狸", "模糊", "16\uff1a9", "2k", None, 2, "fox"],
        ["塔", "悬崖上的灯塔", None, datetime.time(9, 16), "1K", None, 1.0, None],
    ]
    path = tmp_path / "模板.xlsx"
    path.write_bytes(workbook_bytes(rows))
    batch = load_batch_file(path)
    fox, tower = batch.resolve(default_backend="placeholder")
    assert (fox.key, fox.prompt, fox.negative_prompt) == ("狐狸", "雪地里的红狐狸", "模糊")
    assert (fox.width, fox.height, fox.n, fox.filename_prefix) == (2688, 1536, 2, "fox")
    # Excel turns "9:16" typed into a cell into the time 09:16; it still means 9:16
    assert (tower.width, tower.height, tower.n) == (768, 1344, 1)


def test_a_bad_value_under_a_chinese_heading_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "b.xlsx"
    path.write_bytes(workbook_bytes([["提示词", "图片比例"], ["a", "5:4"]]))
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert (problem.where, problem.field) == ("row 2", "aspect_ratio")
    assert "5:4" in problem.message


def test_an_unknown_heading_lists_the_chinese_words_too(tmp_path: Path) -> None:
    path = tmp_path / "b.xlsx"
    path.write_bytes(workbook_bytes([["提示词", "风格"], ["a", "x"]]))
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert "unknown column '风格'" in problem.message and "参考示例图" in problem.message


def test_a_formula_without_a_saved_value_is_reported_as_a_formula(tmp_path: Path) -> None:
    # openpyxl, like any program, saves formulas without a value: only Excel computes them
    rows = [["prompt", "negative_prompt", "n"], ["a fox", "blurry", 1], ['=A2&" at dusk"', None, 1]]
    path = tmp_path / "f.xlsx"
    path.write_bytes(workbook_bytes(rows))
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert (problem.where, problem.field) == ("row 3", "prompt")
    assert problem.message == (
        'cell A3 holds a formula (=A2&" at dusk"): formula cells are not supported; '
        "paste values (copy the cells, then Paste Special > Values)"
    )


def test_a_picture_in_the_reference_cell_is_that_rows_reference(tmp_path: Path) -> None:
    picture = png(48, 32)
    rows = [ZH_HEADER, ["a fox", None, "1:1", "1K", "refs/typed.png", 1, None], ["a bird"]]
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "typed.png").write_bytes(png(8, 8))
    path = tmp_path / "p.xlsx"
    path.write_bytes(workbook_bytes(rows, {"E2": picture}))
    folder = tmp_path / "pictures"
    folder.mkdir()
    batch = load_batch_file(path, pictures_dir=lambda: folder)
    [written] = batch.pictures
    assert Path(written).parent == folder and Path(written).read_bytes() == picture
    fox, bird = batch.resolve(default_backend="placeholder")
    assert fox.reference_images == (str((tmp_path / "refs" / "typed.png").resolve()), written)
    assert bird.reference_images == ()
    assert read_input_image(Path(written).read_bytes()).width == 48


def test_a_picture_in_the_init_image_cell_is_the_init_image(tmp_path: Path) -> None:
    path = tmp_path / "p.xlsx"
    path.write_bytes(workbook_bytes([["prompt", "原图"], ["make it snow", None]], {"B2": png()}))
    [task] = load_batch_file(path).resolve(default_backend="placeholder")
    assert task.init_image is not None and Path(task.init_image).read_bytes() == png()


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("A2", "a picture is placed in column A ('提示词'); pictures are read only in"),
        ("H2", "a picture is placed in column H; pictures are read only in"),
        ("E4", "a picture is placed on a row with no task (column E ('参考示例图'))"),
    ],
)
def test_a_picture_elsewhere_is_refused_naming_its_row(
    tmp_path: Path, cell: str, message: str
) -> None:
    path = tmp_path / "p.xlsx"
    path.write_bytes(workbook_bytes([ZH_HEADER, ["a fox"]], {cell: png()}))
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert problem.where == f"row {cell[1:]}"
    assert message in problem.message


def test_a_damaged_picture_is_refused_naming_its_row(tmp_path: Path) -> None:
    path = tmp_path / "p.xlsx"
    data = workbook_bytes([ZH_HEADER, ["a fox"], ["a bird"]], {"E3": png()})
    path.write_bytes(with_media(data, b"\x89PNG but not really"))
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert (problem.where, problem.field) == ("row 3", "reference_images")
    assert problem.message.startswith("the picture in this cell cannot be used: ")


@pytest.mark.parametrize("saved", [True, False], ids=["as-wps-saves-it", "no-saved-value"])
def test_a_wps_picture_embedded_in_a_cell_is_read(tmp_path: Path, saved: bool) -> None:
    picture = png(24, 24, (1, 2, 3))
    rows = [["prompt", "参考示例图"], ["a fox", '=DISPIMG("ID_1A2B",1)']]
    path = tmp_path / "wps.xlsx"
    path.write_bytes(wps_cell_picture(rows, picture, formulas=not saved))
    [task] = load_batch_file(path).resolve(default_backend="placeholder")
    [reference] = task.reference_images
    assert Path(reference).read_bytes() == picture


def test_a_wps_picture_missing_from_the_file_is_refused(tmp_path: Path) -> None:
    rows = [["prompt", "参考示例图"], ["a fox", '=DISPIMG("ID_GONE",1)']]
    path = tmp_path / "wps.xlsx"
    path.write_bytes(wps_cell_picture(rows, png()))
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert (problem.where, problem.field) == ("row 2", "reference_images")
    assert "missing from the file" in problem.message
