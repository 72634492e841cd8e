"""Workbooks as people make them, built for tests: Chinese headings, pasted pictures, WPS."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.drawing.image import Image as SheetImage
from PIL import Image

#: the seven headings of the batch tool's template, in its order
ZH_HEADER = ["提示词", "负面提示词", "图片比例", "分辨率", "参考示例图", "生成数量", "文件名"]


def png(width: int = 40, height: int = 30, color: tuple[int, int, int] = (200, 60, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def workbook_bytes(
    rows: list[list[Any]], pictures: dict[str, bytes] | None = None, *, formulas: bool = True
) -> bytes:
    """A workbook of ``rows`` with each picture placed on its cell ("E2": PNG bytes).

    A text starting with "=" is a formula with no saved value (as any program but
    Excel writes one), or with ``formulas=False`` the text itself (as WPS saves a
    ``DISPIMG`` formula's value).
    """
    workbook = openpyxl.Workbook()
    sheet = workbook.worksheets[0]
    for row in rows:
        sheet.append(row)
    if not formulas:
        for cells in sheet.iter_rows():
            for cell in cells:
                if cell.data_type == "f":
                    cell.data_type = "s"
    for cell, data in (pictures or {}).items():
        sheet.add_image(SheetImage(io.BytesIO(data)), cell)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def write_workbook(
    path: Path,
    rows: list[list[Any]],
    pictures: dict[str, bytes] | None = None,
    *,
    formulas: bool = True,
) -> Path:
    path.write_bytes(workbook_bytes(rows, pictures, formulas=formulas))
    return path


def with_media(data: bytes, media: bytes) -> bytes:
    """The workbook with its first picture's bytes replaced (a damaged picture)."""
    return _rewritten(data, {"xl/media/image1.png": media})


def wps_cell_picture(
    rows: list[list[Any]], picture: bytes, *, formulas: bool = False, picture_id: str = "ID_1A2B"
) -> bytes:
    """A workbook as WPS writes "embed in cell" pictures: the cell holds
    ``=DISPIMG("ID",1)`` and the bytes are in ``xl/cellimages.xml``'s relationships.
    """
    cell_images = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<etc:cellImages xmlns:xdr="http://schemas.openxmlformats.org/drawingml/2006/'
        'spreadsheetDrawing" xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
        'xmlns:etc="http://www.wps.cn/officeDocument/2017/etCustomData">'
        f'<etc:cellImage><xdr:pic><xdr:nvPicPr><xdr:cNvPr id="2" name="{picture_id}"/>'
        "<xdr:cNvPicPr/></xdr:nvPicPr><xdr:blipFill>"
        '<a:blip r:embed="rId1"/></xdr:blipFill><xdr:spPr/></xdr:pic></etc:cellImage>'
        "</etc:cellImages>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
        '2006/relationships/image" Target="media/image1.png"/></Relationships>'
    )
    return _rewritten(
        workbook_bytes(rows, formulas=formulas),
        {
            "xl/cellimages.xml": cell_images.encode(),
            "xl/_rels/cellimages.xml.rels": rels.encode(),
            "xl/media/image1.png": picture,
        },
    )


def _rewritten(data: bytes, files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename not in files:
                target.writestr(info, source.read(info.filename))
        for name, content in files.items():
            target.writestr(name, content)
    return out.getvalue()


def sheet_rows(data: bytes | Path) -> list[list[Any]]:
    """Every row of the first sheet, as openpyxl reads it."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    sheet = openpyxl.load_workbook(source).worksheets[0]
    return [[cell.value for cell in row] for row in sheet.iter_rows()]
