"""Slides in a spreadsheet through `kiln run --template`: rows made items, their prompts
rendered, `kiln export` writing their fields back, and the table run again as it is."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from test_cli import kiln

from tests.sheets import sheet_rows, write_workbook

CONFIG = '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n'
TEMPLATE = "{style}. Slide {page_num}, {title}: {visual_desc}"
SLIDES = (
    "id,page_num,title,visual_desc,aspect_ratio\n"
    "cover,1,Q3 review,a rising line over a city,16:9\n"
    "growth,2,Growth,a young tree with coins for leaves,\n"
    "team,3,Team,five chairs around a table,1:1\n"
)


def _rows(path: Path) -> list[dict[str, object]]:
    header, *rows = sheet_rows(path)
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_a_csv_of_slides_runs_exports_and_runs_again(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    (tmp_path / "slides.csv").write_text(SLIDES, encoding="utf-8")
    options = ("--template", TEMPLATE, "--var", "style=flat vector")
    ran = kiln(tmp_path, "run", "slides.csv", *options, "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "Batch 1 'slides': 3 task(s)" in ran.stdout

    done = kiln(tmp_path, "export", "1", "--to", "out.xlsx")
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "out.xlsx")
    assert [r["key"] for r in rows] == ["cover", "growth", "team"]
    # the item's fields come back as columns (from tasks.item), the prompt made in final_prompt
    assert [(r["title"], r["page_num"]) for r in rows] == [
        ("Q3 review", "1"),
        ("Growth", "2"),
        ("Team", "3"),
    ]
    assert rows[0]["final_prompt"] == "flat vector. Slide 1, Q3 review: a rising line over a city"
    assert rows[0]["prompt"] is None  # the rows had no prompt of their own
    assert (rows[0]["aspect_ratio"], rows[2]["aspect_ratio"]) == ("16:9", "1:1")
    assert all(r["status"] == "succeeded" and r["images"] for r in rows)

    # the exported table runs again with the same template: same keys, prompts and seeds
    again = kiln(tmp_path, "run", "out.xlsx", *options, "--quiet")
    assert again.returncode == 0, again.stderr
    assert kiln(tmp_path, "export", "2", "--to", "again.csv").returncode == 0
    text = (tmp_path / "again.csv").read_text(encoding="utf-8-sig")
    second = list(csv.DictReader(io.StringIO(text)))
    for before, after in zip(rows, second, strict=True):
        for column in ("key", "title", "visual_desc", "final_prompt", "seed", "aspect_ratio"):
            assert str(before[column]) == after[column], column

    # without the template its columns are not parameters: refused, the way out named
    bare = kiln(tmp_path, "run", "out.xlsx")
    assert bare.returncode == 2
    assert "with a template, the other columns are the fields" in " ".join(bare.stderr.split())


def test_an_xlsx_with_chinese_headings(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    rows = [
        ["编号", "标题", "画面描述", "图片比例", "生成数量"],
        ["s1", "开场", "城市天际线上升起的曲线", "16:9", 2],
        ["s2", "增长", "一棵长着金币叶子的小树", None, 1],
    ]
    write_workbook(tmp_path / "幻灯片.xlsx", rows)
    template = "{风格}。{标题}：{画面描述}"  # noqa: RUF001
    ran = kiln(tmp_path, "run", "幻灯片.xlsx", "--template", template, "--var", "风格=水彩")
    assert ran.returncode == 0, ran.stderr
    done = kiln(tmp_path, "export", "1", "--to", "out.xlsx", "--headers", "zh")
    assert done.returncode == 0, done.stderr
    first, second = _rows(tmp_path / "out.xlsx")
    assert (first["编号"], first["标题"], first["生成数量"]) == ("s1", "开场", 2)
    assert first["最终提示词"] == "水彩。开场：城市天际线上升起的曲线"  # noqa: RUF001
    assert len(first["图片文件"].split("\n")) == 2 and second["状态"] == "succeeded"


def test_problems_are_named_by_row_and_bad_options_refused(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    (tmp_path / "bad.csv").write_text(
        "id,title,visual_desc\na,Dawn,a sky\nb,Dusk,\n", encoding="utf-8"
    )
    done = kiln(tmp_path, "run", "bad.csv", "--template", "{title}: {visual_desc}")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "bad.csv, row 3, field 'prompt': template field 'visual_desc' is missing" in err
    assert "row 2" not in err

    odd = kiln(tmp_path, "run", "bad.csv", "--template", "{title}", "--var", "style")
    assert odd.returncode == 2 and "'style' is not NAME=VALUE" in odd.stderr
    lone = kiln(tmp_path, "run", "bad.csv", "--var", "style=ink")
    assert lone.returncode == 2 and "a --var is a field of --template" in lone.stderr
