"""A batch tool's spreadsheet through `kiln`: Chinese headings and a pasted picture in,
`kiln run`, `kiln export --headers zh` out, and the table read again."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
from test_cli import kiln

from tests.sheets import ZH_HEADER, png, sheet_rows, write_workbook

CONFIG = (
    '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n'
    '[backends.options]\nreject_if_prompt_contains = "bad"\n'
)


def test_a_chinese_table_with_a_picture_runs_and_comes_back_with_results(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    rows = [
        ZH_HEADER,
        ["=a fox in snow", "-blurry", "16：9", "1K", None, 2, "fox"],  # noqa: RUF001
        ["a bad lighthouse", None, "1:1", "1k", None, 1, None],
    ]
    # "=a fox" typed as text (a formula's saved value reads the same way)
    write_workbook(tmp_path / "模板.xlsx", rows, {"E2": png(30, 20)}, formulas=False)
    ran = kiln(tmp_path, "run", "模板.xlsx", "--quiet", "--report", "r.json")
    assert ran.returncode == 1, ran.stderr  # the "bad" row is rejected by the backend
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["images"] == 2

    done = kiln(tmp_path, "export", "1", "--to", "out.xlsx", "--headers", "zh")
    assert done.returncode == 0, done.stderr
    header, fox, bad = sheet_rows(tmp_path / "out.xlsx")
    assert set(ZH_HEADER) <= set(header)
    fox_row, bad_row = dict(zip(header, fox, strict=True)), dict(zip(header, bad, strict=True))
    for original, row in ((rows[1], fox_row), (rows[2], bad_row)):
        typed = dict(zip(ZH_HEADER, original, strict=True))
        for column in ("提示词", "负面提示词", "生成数量", "文件名"):
            assert row[column] == typed[column]
    assert (fox_row["图片比例"], fox_row["分辨率"]) == ("16:9", "1K")
    assert (bad_row["图片比例"], bad_row["分辨率"]) == ("1:1", "1K")
    # the pasted picture was stored with the batch and is named by its stored copy
    reference = Path(fox_row["参考示例图"])
    assert reference.is_file() and reference.read_bytes() == png(30, 20)
    # the results: status, error, image files and links, the final prompt
    assert (fox_row["状态"], bad_row["状态"]) == ("succeeded", "failed")
    assert "placeholder rejects" in bad_row["错误信息"] and fox_row["错误信息"] is None
    links = fox_row["图片链接"].split("\n")
    assert len(links) == 2 and all(Path(link).is_file() for link in links)
    assert fox_row["图片文件"].split("\n") == [Path(link).name for link in links]
    assert fox_row["最终提示词"] == "=a fox in snow"
    cell = openpyxl.load_workbook(tmp_path / "out.xlsx").worksheets[0].cell(2, 2)
    assert (cell.value, cell.data_type, cell.quotePrefix) == ("=a fox in snow", "s", True)

    again = kiln(tmp_path, "run", "out.xlsx", "--quiet")
    assert again.returncode == 1, again.stderr
    assert "Batch 2 'out': 2 task(s)" in again.stdout


def test_a_formula_with_no_saved_value_is_named_with_its_row(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    write_workbook(tmp_path / "f.xlsx", [["提示词"], ["a fox"], ['=A2&" at dusk"']])
    done = kiln(tmp_path, "run", "f.xlsx")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "row 3" in err and "cell A3 holds a formula" in err
    assert "formula cells are not supported; paste values" in err
    assert "is required" not in err


def test_a_picture_outside_the_reference_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    write_workbook(tmp_path / "p.xlsx", [ZH_HEADER, ["a fox"], ["a bird"]], {"A3": png()})
    done = kiln(tmp_path, "run", "p.xlsx")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "row 3" in err and "a picture is placed in column A ('提示词')" in err


def test_init_xlsx_writes_a_template_that_runs(tmp_path: Path) -> None:
    done = kiln(tmp_path, "init", "--xlsx", "--headers", "zh")
    assert done.returncode == 0, done.stderr
    header, example = sheet_rows(tmp_path / "batch.xlsx")
    assert header[1:] == ZH_HEADER and example[1] and example[6] == 2
    sheet = openpyxl.load_workbook(tmp_path / "batch.xlsx").worksheets[0]
    assert "16:9" in sheet.cell(1, 4).comment.text
    ran = kiln(tmp_path, "run", "batch.xlsx", "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert kiln(tmp_path, "init", "--xlsx", "--headers", "fr").returncode == 2
