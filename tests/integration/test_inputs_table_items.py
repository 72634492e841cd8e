"""Tables whose rows are items: a template makes each row's prompt from its columns.

Slides as a CSV and as an XLSX (Chinese headings too), ids from an ``id`` / ``编号``
column or the row's position, parameters still set by their columns, pictures still
read, and every problem named by its spreadsheet row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import TableTemplate, load_batch_file
from tests.sheets import png, workbook_bytes

SLIDES = TableTemplate("{style}. Slide {page_num}, {title}: {visual_desc}", {"style": "flat"})


def _problems(path: Path, template: TableTemplate) -> dict[tuple[str, str], str]:
    with pytest.raises(SpecError) as exc:
        load_batch_file(path, template=template)
    return {(p.where, p.field): p.message for p in exc.value.problems}


def test_csv_rows_become_items_keyed_by_id(tmp_path: Path) -> None:
    path = tmp_path / "slides.csv"
    path.write_text(
        "id,Page Num,title,Visual Desc,aspect_ratio,n\n"
        "cover,1,Q3 review,a rising line,16：9,2\n"  # noqa: RUF001 (a Chinese keyboard's colon)
        "\n"
        "growth,2,Growth,a young tree,,\n",
        encoding="utf-8",
    )
    batch = load_batch_file(path, template=SLIDES)
    cover, growth = batch.resolve(default_backend="placeholder")
    assert (cover.key, growth.key) == ("cover", "growth")
    assert cover.prompt == "flat. Slide 1, Q3 review: a rising line"
    assert growth.prompt == "flat. Slide 2, Growth: a young tree"
    # parameter columns still set the task's values, converted as in any table
    assert (cover.width, cover.height, cover.n) == (1344, 768, 2)
    assert growth.n == 1
    # the item is the row as typed, headings normalised like parameter names
    assert cover.item == {
        "id": "cover",
        "page_num": "1",
        "title": "Q3 review",
        "visual_desc": "a rising line",
        "aspect_ratio": "16:9",
        "n": "2",
    }
    assert batch.where(1) == "row 4"  # the blank row counts
    assert (batch.spec.template, batch.spec.vars) == (SLIDES.text, {"style": "flat"})


def test_xlsx_with_chinese_headings_and_a_picture(tmp_path: Path) -> None:
    rows = [
        ["编号", "标题", "提示词", "图片比例", "参考示例图", "页码"],
        ["s1", "开场", "城市天际线", "16:9", None, 1],
        ["s2", "增长", "一棵小树", None, None, 2.0],
    ]
    path = tmp_path / "幻灯片.xlsx"
    path.write_bytes(workbook_bytes(rows, {"E3": png(30, 20)}))
    template = TableTemplate("{风格}: 第{页码}页 {标题}, {提示词}", {"风格": "水彩"})
    batch = load_batch_file(path, template=template, pictures_dir=lambda: tmp_path)
    first, second = batch.resolve(default_backend="placeholder")
    assert (first.key, second.key) == ("s1", "s2")
    # with a template the prompt column is a field; an XLSX 2.0 is written as 2
    assert first.prompt == "水彩: 第1页 开场, 城市天际线"
    assert second.prompt == "水彩: 第2页 增长, 一棵小树"
    assert (first.width, first.height) == (1344, 768)
    # the picture is the row's reference; the item keeps what the row says
    [reference] = second.reference_images
    assert Path(reference).read_bytes() == png(30, 20)
    assert "reference_images" not in (second.item or {})
    # the prompt column sets no prompt but is a field: by its name, and by the heading
    # the template calls it
    assert second.item == {
        "id": "s2",
        "标题": "增长",
        "prompt": "一棵小树",
        "页码": 2,
        "提示词": "一棵小树",
    }


def test_without_an_id_column_a_row_is_keyed_by_its_position(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("title\nDawn\nDusk\n", encoding="utf-8")
    tasks = load_batch_file(path, template=TableTemplate("{title}")).resolve(
        default_backend="placeholder"
    )
    assert [(t.key, t.prompt) for t in tasks] == [("1", "Dawn"), ("2", "Dusk")]


def test_every_problem_is_named_by_its_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,title,visual_desc,n\n"
        "a,Dawn,,1\n"  # visual_desc missing
        ",Dusk,a sky,2\n"  # no id
        "c,Noon,the sun,0\n"  # n out of range
        "a,Again,twice,1\n",  # the id again
        encoding="utf-8",
    )
    problems = _problems(path, SLIDES)
    assert "'visual_desc'" in problems[("row 2", "prompt")]
    assert "'page_num'" in problems[("row 2", "prompt")]
    assert "is required" in problems[("row 3", "id")]
    assert "greater than or equal to 1" in problems[("row 4", "n")]
    assert "'a' is also the id of item number 1" in problems[("row 5", "id")]


def test_header_problems_with_a_template(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,编号,title,title\nx,y,a,b\n", encoding="utf-8")
    problems = _problems(path, TableTemplate("{title}"))
    assert "columns 'id' and '编号' both hold the items' ids" in problems[("row 1", "key")]
    assert "column 'title' appears twice" in problems[("row 1", "title")]
    bad = _problems(tmp_path / "h.csv", TableTemplate("{title!r}"))
    assert "conversions ('!')" in bad[("", "template")]


def test_without_a_template_other_columns_are_refused_as_before(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("prompt,title\na fox,Dawn\n", encoding="utf-8")
    with pytest.raises(SpecError) as exc:
        load_batch_file(path)
    [problem] = exc.value.problems
    assert problem.message.startswith("unknown column 'title'")
    assert "with a template, the other columns are the fields" in problem.message


def test_a_template_for_a_structured_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("name: b\ntasks: [{prompt: a fox}]\n", encoding="utf-8")
    problems = _problems(path, TableTemplate("{title}"))
    assert "holds its own 'template' and 'vars'" in problems[("", "")]
