"""Tables as a user trial found them: nested item fields in dotted columns, the workbook's
table sheet (not its instructions), CSVs saved by Chinese Excel, and WebUI's Chinese
headings for steps, CFG, sampler, denoise and backend."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import TableTemplate, load_batch_file
from pixelkiln.inputs.headers import column_name, heading

SHOTS = TableTemplate("{style}. Shot {id}, {camera}: {setting.place}, {setting.time}; {shots.1}")


def _messages(path: Path, template: TableTemplate | None = None) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_batch_file(path, template=template)
    return [str(p) for p in exc.value.problems]


# -- nested fields --------------------------------------------------------------------------


def test_dotted_columns_make_nested_fields_again(tmp_path: Path) -> None:
    path = tmp_path / "shots.csv"
    path.write_text(
        "id,camera,setting.place,Setting.Time,shots.0,shots.1,style,No.\n"
        "s01,wide shot,inside the lighthouse,at dusk,a,b,ink,7\n",
        encoding="utf-8",
    )
    (task,) = load_batch_file(path, template=SHOTS).resolve(default_backend="placeholder")
    assert task.prompt == "ink. Shot s01, wide shot: inside the lighthouse, at dusk; b"
    assert task.item == {
        "id": "s01",
        "camera": "wide shot",
        "setting": {"place": "inside the lighthouse", "time": "at dusk"},
        "shots": ["a", "b"],
        "style": "ink",
        "no.": "7",  # a heading with an empty part is a plain field, as it always was
    }


def test_chinese_dotted_columns_in_a_workbook(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.worksheets[0]
    sheet.append(["编号", "画面.描述", "画面.镜头", "图片比例"])
    sheet.append(["s1", "灯塔里的楼梯", "远景", "16:9"])
    book.save(tmp_path / "分镜.xlsx")
    template = TableTemplate("{画面.镜头}：{画面.描述}")  # noqa: RUF001
    (task,) = load_batch_file(tmp_path / "分镜.xlsx", template=template).resolve(
        default_backend="placeholder"
    )
    assert task.prompt == "远景：灯塔里的楼梯"  # noqa: RUF001
    assert task.item is not None
    assert task.item["画面"] == {"描述": "灯塔里的楼梯", "镜头": "远景"}


def test_a_dotted_column_beside_its_plain_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clash.csv"
    path.write_text("id,setting,Setting.Place\na,x,y\n", encoding="utf-8")
    (message,) = _messages(path, TableTemplate("{setting}"))
    assert "clash.csv, row 1, field 'setting.place': " in message
    assert "columns 'setting' and 'Setting.Place' clash" in message


# -- which sheet of a workbook ----------------------------------------------------------------


def _workbook(path: Path, sheets: dict[str, list[list[object]]], active: int) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.worksheets[0])
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    book.active = active
    book.save(path)
    return path


INSTRUCTIONS = [["使用说明"], ["每行一个任务，提示词必填。"]]  # noqa: RUF001
TABLE = [["提示词", "生成数量"], ["一只红色的狐狸", 2], ["雪中的小屋", 1]]


def test_the_active_table_sheet_is_read_not_the_instructions(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "模板.xlsx", {"说明": INSTRUCTIONS, "任务": TABLE}, active=1)
    tasks = load_batch_file(path).resolve(default_backend="placeholder")
    assert [(t.prompt, t.n) for t in tasks] == [("一只红色的狐狸", 2), ("雪中的小屋", 1)]
    assert load_batch_file(path).where(1) == "row 3"


def test_a_table_sheet_is_found_when_the_workbook_opens_on_instructions(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "b.xlsx", {"说明": INSTRUCTIONS, "任务": TABLE}, active=0)
    assert len(load_batch_file(path).resolve(default_backend="placeholder")) == 2


def test_no_table_sheet_names_the_sheet_read_and_the_others(tmp_path: Path) -> None:
    notes = [["notes"], ["nothing here"]]
    path = _workbook(tmp_path / "c.xlsx", {"说明": INSTRUCTIONS, "notes": notes}, active=1)
    messages = " ".join(_messages(path))
    assert "the header has no 'prompt' column" in messages
    assert "read the sheet 'notes' (the one the workbook opens on)" in messages
    assert "its other sheets: '说明'" in messages


# -- CSVs in GBK ------------------------------------------------------------------------------


def test_a_csv_saved_by_chinese_excel_reads(tmp_path: Path) -> None:
    path = tmp_path / "任务.csv"
    path.write_bytes("提示词,负面提示词,生成数量\r\n一只红色的狐狸,模糊,2\r\n".encode("gbk"))
    (task,) = load_batch_file(path).resolve(default_backend="placeholder")
    assert (task.prompt, task.negative_prompt, task.n) == ("一只红色的狐狸", "模糊", 2)


@pytest.mark.parametrize(
    "data",
    [
        "prompt,n\ncafé crème,1\n".encode("cp1252"),  # English headings: not a Chinese file
        "标题,n\n狐狸,1\n".encode("gbk"),  # no Chinese heading of ours: not proven Chinese
    ],
)
def test_other_code_pages_are_still_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(data)
    (message,) = _messages(path)
    assert "is not UTF-8 text" in message and "save as 'CSV UTF-8'" in message


# -- WebUI's Chinese headings -----------------------------------------------------------------


def test_webui_chinese_headings_read_and_are_written(tmp_path: Path) -> None:
    path = tmp_path / "webui.csv"
    path.write_text(
        "提示词,迭代步数,提示词引导系数 (CFG Scale),采样方法,重绘幅度,后端,种子\n"
        "a fox,30,6.5,Euler a,0.4,placeholder,7\n",
        encoding="utf-8",
    )
    (task,) = load_batch_file(path).resolve(default_backend="none")
    assert (task.steps, task.cfg_scale, task.sampler, task.denoise) == (30, 6.5, "Euler a", 0.4)
    assert (task.backend, task.seed) == ("placeholder", 7)
    aliases = {
        "步数": "steps",
        "CFG": "cfg_scale",
        "采样器": "sampler",
        "提示词相关性": "cfg_scale",
    }
    assert {word: column_name(word) for word in aliases} == aliases
    written = [heading(c, "zh") for c in ("backend", "steps", "cfg_scale", "sampler", "denoise")]
    assert written == ["后端", "迭代步数", "提示词引导系数", "采样方法", "重绘幅度"]
    assert [column_name(word) for word in written] == [
        "backend",
        "steps",
        "cfg_scale",
        "sampler",
        "denoise",
    ]
