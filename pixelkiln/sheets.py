"""Contact sheets of a sweep: one grid image per z value, in the WebUI's X/Y/Z plot look.

A sweep (``batches.extra["sweep"]``) names at most three axes, each one parameter and its
values in order: x are the columns, y the rows, z one sheet per value. Each cell shows the
image of the task with those axis values (fitted into ``cell`` pixels), or a grey
placeholder saying why there is none yet ("pending", "failed", "missing"…). Column
headers (``name=value``) run along the top, row labels down the left, and a title names
the batch and the z value.

Rendering is deterministic: the same plan and the same image pixels give the same PNG
bytes, so a sweep that was interrupted and resumed can be compared with one that ran
straight through. Pillow's own font is used (``ImageFont.load_default``, no download); it
has no CJK glyphs, so Chinese labels draw as boxes.

>>> plan = SheetPlan("cfg", ("cfg_scale=5", "cfg_scale=7"), ("",), ((Cell(note="pending"),) * 2,))
>>> png = render_sheet(plan, open_image=lambda path: Image.open(path))   # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

#: the most columns (x values) and rows (y values) one sheet shows
MAX_SIDE = 50
#: a sheet larger than this many pixels is drawn with smaller cells instead
MAX_PIXELS = 40_000_000
DEFAULT_CELL = 256
MIN_CELL = 32
AXES = ("x", "y", "z")

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
PLACEHOLDER = (200, 200, 200)
PLACEHOLDER_INK = (70, 70, 70)
GAP = 4  #: white pixels between two cells
HEADER_LINES = 3  #: a column header wraps to at most this many lines

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont


class SweepShapeError(ValueError):
    """A batch's ``sweep`` is not the shape a contact sheet can show (too many cells)."""


def value_text(value: Any) -> str:
    """An axis value as labels and ``?z=`` show it: text as it is, anything else as JSON.

    >>> value_text("DDIM"), value_text(7.5), value_text(True), value_text([512, 768])
    ('DDIM', '7.5', 'true', '[512,768]')
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Axis:
    """One axis of a sweep: a parameter and its values in order."""

    name: str  #: the parameter; "" when the sweep has no such axis
    values: tuple[Any, ...] = (None,)  #: (None,) when the sweep has no such axis

    def label(self, value: Any) -> str:
        """``name=value``, or "" for the absent axis."""
        return f"{self.name}={value_text(value)}" if self.name else ""

    def index(self, value: Any) -> int | None:
        """The position of ``value`` among the values (None when it is not one)."""
        for i, known in enumerate(self.values):
            if type(known) is type(value) and known == value:
                return i
        # 7 and 7.0 are one value (JSON keeps no difference); True is not 1
        for i, known in enumerate(self.values):
            if _number(known) and _number(value) and known == value:
                return i
        return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sweep:
    """The axes of a sweep batch, read from ``batches.extra["sweep"]``."""

    x: Axis
    y: Axis
    z: Axis

    @classmethod
    def of(cls, extra: Mapping[str, Any]) -> Sweep | None:
        """The sweep of a batch's ``extra``; None when it is not a sweep (or not one we read).

        >>> Sweep.of({"sweep": {"x": {"cfg_scale": [5, 7]}}}).x
        Axis(name='cfg_scale', values=(5, 7))
        """
        given = extra.get("sweep")
        if not isinstance(given, Mapping):
            return None
        axes = {name: _axis(given.get(name)) for name in AXES}
        if all(not a.name for a in axes.values()):
            return None
        return cls(axes["x"], axes["y"], axes["z"])

    def check(self) -> None:
        """SweepShapeError when a sheet would hold more than MAX_SIDE columns or rows."""
        for what, axis in (("columns (x)", self.x), ("rows (y)", self.y)):
            if len(axis.values) > MAX_SIDE:
                raise SweepShapeError(
                    f"the sweep has {len(axis.values)} {what} values for '{axis.name}'; "
                    f"a contact sheet shows at most {MAX_SIDE}"
                )

    def cell_of(self, axes: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
        """(z, row, column) of a task's recorded axis values; None when they fit no cell."""
        if not isinstance(axes, Mapping):
            return None
        found = []
        for name in ("z", "y", "x"):
            axis: Axis = getattr(self, name)
            if not axis.name:
                found.append(0)
                continue
            given = axes.get(name)
            if not isinstance(given, Mapping) or axis.name not in given:
                return None
            at = axis.index(given[axis.name])
            if at is None:
                return None
            found.append(at)
        return found[0], found[1], found[2]


def _axis(given: Any) -> Axis:
    """An axis of the contract's shape ``{name: [values]}``; the absent axis otherwise."""
    if not isinstance(given, Mapping) or len(given) != 1:
        return Axis("")
    name, values = next(iter(given.items()))
    if not isinstance(values, list | tuple) or not values:
        return Axis("")
    return Axis(str(name), tuple(values))


# -- what a sheet shows -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One cell: an image to fit in, or a note saying why there is none."""

    image: str | None = None  #: what ``open_image`` opens (a stored image's path)
    note: str = "missing"  #: shown on the placeholder: pending, running, failed, missing…


@dataclass(frozen=True)
class SheetPlan:
    """Everything a sheet shows, before any image is opened."""

    title: str
    columns: tuple[str, ...]  #: header over each column ("" each when there is no x axis)
    rows: tuple[str, ...]  #: label left of each row ("" each when there is no y axis)
    cells: tuple[tuple[Cell, ...], ...]  #: [row][column]
    #: width and height the cells are shaped after (the largest image asked for)
    shape: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Layout:
    """Where everything goes, in pixels; tests read the boxes to look at the right place."""

    cell_w: int
    cell_h: int
    font_size: int
    margin: int
    title_h: int
    header_h: int
    label_w: int
    n_cols: int
    n_rows: int

    @property
    def width(self) -> int:
        return self.margin * 2 + self.label_w + self.n_cols * (self.cell_w + GAP) - GAP

    @property
    def height(self) -> int:
        grid = self.n_rows * (self.cell_h + GAP) - GAP
        return self.margin * 2 + self.title_h + self.header_h + grid

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        left = self.margin + self.label_w + col * (self.cell_w + GAP)
        top = self.margin + self.title_h + self.header_h + row * (self.cell_h + GAP)
        return left, top, left + self.cell_w, top + self.cell_h

    def header_box(self, col: int) -> tuple[int, int, int, int]:
        left, top, right, _ = self.cell_box(0, col)
        return left, top - self.header_h, right, top

    def label_box(self, row: int) -> tuple[int, int, int, int]:
        left, top, _, bottom = self.cell_box(row, 0)
        return self.margin, top, left, bottom

    @property
    def title_box(self) -> tuple[int, int, int, int]:
        return self.margin, self.margin, self.width - self.margin, self.margin + self.title_h


def fit(shape: tuple[int, int], box_w: int, box_h: int) -> tuple[int, int]:
    """``shape`` scaled to fit in box_w × box_h, aspect kept (at least 1 × 1).

    >>> fit((512, 768), 256, 256)
    (171, 256)
    """
    width, height = max(1, shape[0]), max(1, shape[1])
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def font(size: int) -> FontT:
    """Pillow's own font at ``size`` pixels (no file to find, the same on every machine)."""
    return ImageFont.load_default(size=size)


def layout(plan: SheetPlan, cell: int = DEFAULT_CELL) -> Layout:
    """The sheet's geometry: cells shaped after the plan's images, labels sized to fit."""
    n_rows, n_cols = len(plan.rows), len(plan.columns)
    cell = _cell_size(cell, n_rows, n_cols)
    cell_w, cell_h = fit(plan.shape, cell, cell)
    size = max(12, round(cell / 14))
    margin = size
    title_h = round(size * 1.4) + margin if plan.title else 0
    header_h = _header_height(plan.columns, size, cell_w)
    label_w = _label_width(plan.rows, size, cell) if any(plan.rows) else 0
    return Layout(cell_w, cell_h, size, margin, title_h, header_h, label_w, n_cols, n_rows)


def _cell_size(cell: int, n_rows: int, n_cols: int) -> int:
    """``cell``, made smaller when the whole sheet would pass MAX_PIXELS."""
    most = math.isqrt(MAX_PIXELS // max(1, n_rows * n_cols))
    return max(MIN_CELL, min(cell, most))


def _lines_height(size: int, lines: int) -> int:
    return lines * round(size * 1.25)


def _header_height(labels: Sequence[str], size: int, width: int) -> int:
    """Tall enough for the header that wraps to the most lines (at most HEADER_LINES)."""
    if not any(labels):
        return 0
    face = font(size)
    lines = max(len(wrap(text, face, width, HEADER_LINES)) for text in labels)
    return _lines_height(size, lines) + size // 2


def _label_width(labels: Sequence[str], size: int, cell: int) -> int:
    """Wide enough for the longest row label on one line, within 1.5 cells."""
    face = font(size)
    longest = max(math.ceil(face.getlength(text)) for text in labels)
    return min(longest + size, round(cell * 1.5))


# -- drawing ------------------------------------------------------------------------------------


def render_sheet(
    plan: SheetPlan, open_image: Callable[[str], Image.Image], cell: int = DEFAULT_CELL
) -> bytes:
    """The sheet as PNG bytes. Images are opened, fitted and let go one at a time.

    ``open_image`` raising OSError (a deleted or unreadable file) draws a "missing" cell.
    """
    box = layout(plan, cell)
    canvas = Image.new("RGB", (box.width, box.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_labels(draw, plan, box)
    for r, row in enumerate(plan.cells):
        for c, content in enumerate(row):
            _draw_cell(canvas, draw, box, box.cell_box(r, c), content, open_image)
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def _draw_labels(draw: ImageDraw.ImageDraw, plan: SheetPlan, box: Layout) -> None:
    if plan.title:
        left, top, right, _ = box.title_box
        face = font(round(box.font_size * 1.3))
        draw.text((left, top), _clip(plan.title, face, right - left), fill=INK, font=face)
    face = font(box.font_size)
    for c, text in enumerate(plan.columns):
        if text:
            left, top, right, bottom = box.header_box(c)
            lines = wrap(text, face, right - left, HEADER_LINES)
            _text_block(draw, lines, face, (left, top, right, bottom - box.font_size // 2))
    for r, text in enumerate(plan.rows):
        if text:
            left, top, right, bottom = box.label_box(r)
            lines = wrap(text, face, right - left - box.font_size // 2, 4)
            _text_block(draw, lines, face, (left, top, right - box.font_size // 2, bottom))


def _text_block(
    draw: ImageDraw.ImageDraw,
    lines: list[str],
    face: FontT,
    box: tuple[int, int, int, int],
    fill: tuple[int, int, int] = INK,
) -> None:
    """Lines centred in ``box``, each on its own line."""
    left, top, right, bottom = box
    step = round(_size_of(face) * 1.25)
    y = top + max(0, (bottom - top - step * len(lines)) // 2)
    for line in lines:
        width = math.ceil(face.getlength(line))
        draw.text((left + max(0, (right - left - width) // 2), y), line, fill=fill, font=face)
        y += step


def _size_of(face: FontT) -> int:
    return int(getattr(face, "size", 11))


def wrap(text: str, face: FontT, width: int, most: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, at most ``most`` of them.

    Lines break between words; a word wider than a line breaks between characters. The
    last line ends in "…" when text was left out.
    """
    lines: list[str] = []
    line = ""
    for word in text.split():
        joined = f"{line} {word}" if line else word
        if face.getlength(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if line and face.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line)
    if len(lines) > most:
        lines = [*lines[: most - 1], _clip(" ".join(lines[most - 1 :]), face, width)]
    return lines


def _clip(text: str, face: FontT, width: int) -> str:
    """``text`` cut to ``width`` pixels, ending in "…" when cut."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    box: Layout,
    where: tuple[int, int, int, int],
    content: Cell,
    open_image: Callable[[str], Image.Image],
) -> None:
    note = content.note
    if content.image is not None:
        try:
            with open_image(content.image) as source:
                fitted = fit_image(source, box.cell_w, box.cell_h)
        except OSError:
            note = "missing"
        else:
            canvas.paste(fitted, centred(fitted.size, where))
            return
    draw.rectangle((where[0], where[1], where[2] - 1, where[3] - 1), fill=PLACEHOLDER)
    face = font(box.font_size)
    lines = [_clip(note, face, where[2] - where[0])]
    _text_block(draw, lines, face, where, fill=PLACEHOLDER_INK)


def centred(size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int]:
    """The top-left corner that centres ``size`` in ``box``."""
    left, top, right, bottom = box
    return left + (right - left - size[0]) // 2, top + (bottom - top - size[1]) // 2


def fit_image(source: Image.Image, box_w: int, box_h: int) -> Image.Image:
    """``source`` as RGB (transparency over white), scaled to fit in box_w × box_h."""
    if source.mode in ("RGBA", "LA", "P", "PA"):
        rgba = source.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
    else:
        flat = source.convert("RGB")
    return flat.resize(fit(flat.size, box_w, box_h), Image.Resampling.LANCZOS)
