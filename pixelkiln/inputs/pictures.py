"""Pictures in a spreadsheet's cells, used as the inputs of the rows they sit in.

A batch-tool user puts a reference picture straight into the 参考示例图 cell
of a row. Such a picture becomes that row's reference image (or its init image
in an ``init_image`` column): it is checked like any input image
(:func:`pixelkiln.storage.read_input_image`), written to a folder, and named
by that path in the row, so it reaches the batch through the same intake as a
file the user named. A picture anywhere else, on a row with no task, or that
cannot be read is refused with its row named: never silently dropped.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pixelkiln.exceptions import Problem
from pixelkiln.inputs.xlsx import Picture, Row, Sheet, dispimg
from pixelkiln.storage import read_input_image

#: the columns whose cells may hold pictures
PICTURE_COLUMNS = ("reference_images", "init_image")
_WHERE = "the reference_images (参考示例图) or init_image column"


@cache
def default_pictures_dir() -> Path:
    """A private folder for this process's pictures, removed when the process ends."""
    folder = Path(tempfile.mkdtemp(prefix="kiln-pictures-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@dataclass
class Placement:
    """The pictures of a table put in their rows: paths by row and column, and problems."""

    refs: dict[int, dict[str, list[str]]] = field(default_factory=dict)  #: row → column → paths
    problems: list[Problem] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  #: every picture written, in order


class PlacedPictures:
    """A sheet's pictures, waiting for its header to say which columns may hold them."""

    def __init__(self, sheet: Sheet, source: str, folder: Callable[[], Path] | None) -> None:
        self.source = source
        self.folder = folder or default_pictures_dir
        self.pictures = sheet.pictures
        self.loose = sheet.loose
        self.rows = _without_picture_formulas(sheet.rows, sheet.pictures)

    def place(
        self, columns: Mapping[int, str], headings: Mapping[int, str], body: Collection[int]
    ) -> Placement:
        """Check, write and assign every picture; ``body`` holds the task rows' numbers."""
        placement = Placement()
        if self.loose:
            message = (
                f"{len(self.loose)} picture(s) are not placed on any cell; put each in its "
                f"row's cell of {_WHERE}"
            )
            placement.problems.append(Problem(self.source, "", "", message))
        for picture in sorted(self.pictures, key=lambda p: (p.row, p.column)):
            column = columns.get(picture.column)
            if column not in PICTURE_COLUMNS or picture.row not in body:
                placement.problems.append(self._misplaced(picture, headings, body))
                continue
            path = self._written(picture, column, placement)
            if path:
                placement.refs.setdefault(picture.row, {}).setdefault(column, []).append(path)
                placement.paths.append(path)
        for number, cells in self.rows:
            for index, value in enumerate(cells):
                if dispimg(value) and columns.get(index) in PICTURE_COLUMNS:
                    message = "the WPS picture named in this cell is missing from the file"
                    placement.problems.append(
                        Problem(self.source, f"row {number}", columns[index], message)
                    )
        return placement

    def _misplaced(
        self, picture: Picture, headings: Mapping[int, str], body: Collection[int]
    ) -> Problem:
        letter = column_letter(picture.column)
        heading = headings.get(picture.column)
        named = f"column {letter} ('{heading}')" if heading else f"column {letter}"
        if picture.row in body or not heading:
            message = f"a picture is placed in {named}; pictures are read only in {_WHERE}"
        else:
            message = f"a picture is placed on a row with no task ({named})"
        return Problem(self.source, f"row {picture.row}", "", message)

    def _written(self, picture: Picture, column: str, placement: Placement) -> str:
        """The picture checked and written under the pictures folder; "" with a problem."""
        try:
            image = read_input_image(picture.data)
        except ValueError as exc:
            message = f"the picture in this cell cannot be used: {exc}"
            placement.problems.append(Problem(self.source, f"row {picture.row}", column, message))
            return ""
        path = self.folder() / f"row{picture.row}-{image.sha256[:16]}.{image.format.lower()}"
        path.write_bytes(image.data)
        return str(path)


def _without_picture_formulas(rows: list[Row], pictures: list[Picture]) -> list[Row]:
    """Rows with each WPS ``=DISPIMG(...)`` cell blanked where its picture was found."""
    found = {(p.row, p.column) for p in pictures}
    return [
        (
            number,
            [
                None if dispimg(value) and (number, index) in found else value
                for index, value in enumerate(cells)
            ],
        )
        for number, cells in rows
    ]


def column_letter(index: int) -> str:
    """0 → "A", 26 → "AA", as a spreadsheet labels its columns."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters
