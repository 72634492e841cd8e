"""Contact sheets drawn from a plan: labels where they belong and nowhere else, each cell
the matching image fitted, placeholders, the axes read from a sweep, and the limits."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from pixelkiln.sheets import (
    BACKGROUND,
    MAX_PIXELS,
    MAX_SIDE,
    PLACEHOLDER,
    Axis,
    Cell,
    SheetPlan,
    Sweep,
    SweepShapeError,
    font,
    layout,
    render_sheet,
    value_text,
    wrap,
)

COLUMNS = ("cfg_scale=5", "cfg_scale=7", "cfg_scale=9")
ROWS = ("sampler=Euler", "sampler=DDIM", "sampler=DPM++ 2M")


def picture(r: int, c: int, size: tuple[int, int] = (300, 450)) -> Image.Image:
    """A different picture per cell: its own colour, and a stripe placed by the row."""
    image = Image.new("RGB", size, (40 + 80 * r, 40 + 80 * c, 160))
    ImageDraw.Draw(image).rectangle((0, 40 * r, size[0], 40 * r + 30), fill=(250, 250, 0))
    return image


def grid_plan(missing: dict[tuple[int, int], str] | None = None) -> SheetPlan:
    missing = missing or {}
    cells = tuple(
        tuple(
            Cell(note=missing[r, c]) if (r, c) in missing else Cell(image=f"{r}{c}")
            for c in range(3)
        )
        for r in range(3)
    )
    return SheetPlan("sweep · model=m1", COLUMNS, ROWS, cells, shape=(300, 450))


def opener(path: str) -> Image.Image:
    return picture(int(path[0]), int(path[1]))


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(png)).convert("RGB")


def inked(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Pixels in ``box`` that are not the white background (text, or anything else)."""
    region = image.crop(box).convert("L")
    return sum(1 for p in region.tobytes() if p < 250)


def test_headers_over_each_column_labels_left_of_each_row_and_nothing_elsewhere() -> None:
    plan = grid_plan()
    box = layout(plan)
    sheet = decode(render_sheet(plan, opener))
    assert sheet.size == (box.width, box.height)
    for c in range(3):
        assert inked(sheet, box.header_box(c)) > 50, f"no header over column {c}"
    for r in range(3):
        assert inked(sheet, box.label_box(r)) > 50, f"no label left of row {r}"
    assert inked(sheet, box.title_box) > 50
    grid_top = box.cell_box(0, 0)[1]
    grid_left = box.cell_box(0, 0)[0]
    # the corner above the row labels and left of the headers is empty
    assert inked(sheet, (0, box.title_box[3], grid_left, grid_top)) == 0
    # between two headers, and past the last one, the header band is empty
    for c in range(2):
        right, next_left = box.header_box(c)[2], box.header_box(c + 1)[0]
        assert inked(sheet, (right, box.title_box[3], next_left, grid_top)) == 0
    assert inked(sheet, (box.header_box(2)[2], box.title_box[3], box.width, grid_top)) == 0
    # between rows, left of the grid; and the margins right of and below the grid
    for r in range(2):
        bottom, next_top = box.label_box(r)[3], box.label_box(r + 1)[1]
        assert inked(sheet, (0, bottom, grid_left, next_top)) == 0
    last = box.cell_box(2, 2)
    assert inked(sheet, (last[2], grid_top, box.width, box.height)) == 0
    assert inked(sheet, (0, last[3], box.width, box.height)) == 0


def test_each_header_names_its_own_column() -> None:
    """Swapping two headers moves their pixels with them: each column shows its own label."""
    plan = grid_plan()
    box = layout(plan)
    sheet = decode(render_sheet(plan, opener))
    swapped = SheetPlan(
        plan.title, (COLUMNS[1], COLUMNS[0], COLUMNS[2]), ROWS, plan.cells, (300, 450)
    )
    other = decode(render_sheet(swapped, opener))
    first, second = box.header_box(0), box.header_box(1)
    assert (
        sheet.crop(first).tobytes() == other.crop(second).tobytes() != other.crop(first).tobytes()
    )


def test_each_cell_is_its_image_fitted_and_centred() -> None:
    plan = grid_plan()
    box = layout(plan)
    assert (box.cell_w, box.cell_h) == (171, 256)  # 300 × 450 fitted into 256
    sheet = decode(render_sheet(plan, opener))
    for r in range(3):
        for c in range(3):
            expected = picture(r, c).resize((171, 256), Image.Resampling.LANCZOS)
            assert sheet.crop(box.cell_box(r, c)).tobytes() == expected.tobytes(), (r, c)


def test_a_smaller_image_sits_centred_on_white_in_its_cell() -> None:
    plan = SheetPlan("", ("x=1",), ("",), ((Cell(image="wide"),),), shape=(200, 200))
    box = layout(plan)
    wide = Image.new("RGB", (400, 100), (10, 120, 200))
    sheet = decode(render_sheet(plan, lambda _: wide.copy()))
    left, top, right, bottom = box.cell_box(0, 0)
    assert (right - left, bottom - top) == (256, 256)
    assert sheet.getpixel((left + 128, top + 128)) == (10, 120, 200)
    assert sheet.getpixel((left + 128, top + 5)) == BACKGROUND  # above the 256 × 64 strip
    assert sheet.getpixel((left + 128, bottom - 5)) == BACKGROUND


def test_missing_results_are_grey_placeholders_saying_why() -> None:
    notes = {(0, 1): "pending", (1, 1): "failed", (2, 0): "missing"}
    plan = grid_plan(notes)
    box = layout(plan)
    sheet = decode(render_sheet(plan, opener))
    for (r, c), _ in notes.items():
        left, top, right, bottom = box.cell_box(r, c)
        assert sheet.getpixel((left + 2, top + 2)) == PLACEHOLDER
        cell = sheet.crop((left, top, right, bottom)).convert("L")
        assert sum(1 for p in cell.tobytes() if p < 150) > 30, "the placeholder says nothing"
    pending = sheet.crop(box.cell_box(0, 1)).tobytes()
    failed = sheet.crop(box.cell_box(1, 1)).tobytes()
    assert pending != failed
    assert (
        sheet.crop(box.cell_box(0, 0)).tobytes()
        == picture(0, 0).resize((171, 256), Image.Resampling.LANCZOS).tobytes()
    )


def test_an_unreadable_image_draws_a_missing_cell() -> None:
    def broken(path: str) -> Image.Image:
        raise OSError("gone")

    one = SheetPlan("", ("x=1",), ("",), ((Cell(image="gone"),),))
    expected = SheetPlan("", ("x=1",), ("",), ((Cell(note="missing"),),))
    assert render_sheet(one, broken) == render_sheet(expected, broken)


def test_the_same_plan_and_pixels_give_the_same_bytes() -> None:
    plan = grid_plan({(1, 2): "pending"})
    assert render_sheet(plan, opener) == render_sheet(plan, opener)
    assert render_sheet(plan, opener) != render_sheet(grid_plan({(1, 2): "failed"}), opener)


def test_an_x_only_sweep_is_one_row_without_row_labels() -> None:
    plan = SheetPlan("", COLUMNS, ("",), (tuple(Cell(image=f"0{c}") for c in range(3)),))
    box = layout(plan)
    assert box.label_w == 0 and box.title_h == 0 and box.n_rows == 1
    sheet = decode(render_sheet(plan, opener))
    grid_left = box.cell_box(0, 0)[0]
    assert inked(sheet, (0, 0, grid_left, box.height)) == 0
    assert all(inked(sheet, box.header_box(c)) > 50 for c in range(3))


def test_long_labels_wrap_to_three_lines_and_end_in_an_ellipsis() -> None:
    face = font(18)
    lines = wrap("prompt=" + "a very long prompt fragment " * 6, face, 171, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(face.getlength(line) <= 171 for line in lines)
    assert wrap("cfg_scale=7", face, 171, 3) == ["cfg_scale=7"]
    unbroken = wrap("x" * 80, face, 100, 3)
    assert len(unbroken) == 3 and all(face.getlength(line) <= 100 for line in unbroken)


def test_a_sweep_is_read_from_the_batch_extra() -> None:
    sweep = Sweep.of(
        {"sweep": {"x": {"cfg_scale": [5, 7, 9]}, "z": {"model": ["m1", "m2"]}}, "other": 1}
    )
    assert sweep is not None
    assert sweep.x == Axis("cfg_scale", (5, 7, 9)) and sweep.z.values == ("m1", "m2")
    assert sweep.y == Axis("") and sweep.y.values == (None,)
    axes = {"x": {"cfg_scale": 7.0}, "z": {"model": "m2"}}
    assert sweep.cell_of(axes) == (1, 0, 1)
    assert sweep.cell_of({"x": {"cfg_scale": 8}, "z": {"model": "m2"}}) is None
    assert sweep.cell_of({"x": {"steps": 7}, "z": {"model": "m2"}}) is None
    assert sweep.cell_of(None) is None
    for not_a_sweep in ({}, {"sweep": None}, {"sweep": {"x": {}}}, {"sweep": {"x": {"a": []}}}):
        assert Sweep.of(not_a_sweep) is None
    assert Axis("flag", (1, True)).index(True) == 1
    assert Axis("flag", (1, True)).index(1) == 0


def test_labels_and_z_values_are_written_as_text() -> None:
    assert Axis("size", ("512x768",)).label("512x768") == "size=512x768"
    assert Axis("cfg_scale", (7.5,)).label(7.5) == "cfg_scale=7.5"
    assert value_text(None) == "null" and value_text({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert Axis("").label(None) == ""


def test_more_than_fifty_columns_is_a_clear_error() -> None:
    too_wide = Sweep(Axis("seed", tuple(range(MAX_SIDE + 1))), Axis(""), Axis(""))
    with pytest.raises(SweepShapeError, match=r"51 columns \(x\) values for 'seed'.*at most 50"):
        too_wide.check()
    Sweep(Axis("seed", tuple(range(MAX_SIDE))), Axis("s", tuple(range(MAX_SIDE))), Axis("")).check()


def test_a_fifty_by_fifty_sheet_shrinks_its_cells_to_stay_within_the_pixel_cap() -> None:
    cells = tuple(tuple(Cell(note="pending") for _ in range(50)) for _ in range(50))
    labels = tuple(f"seed={i}" for i in range(50))
    box = layout(SheetPlan("big", labels, labels, cells))
    assert box.cell_w < 256
    assert box.width * box.height <= MAX_PIXELS * 1.2
