"""A contact sheet draws an image larger than its cells from the API's cached thumbnail
when there is one (a sheet is drawn anew on each refresh of the batch page), and from the
image itself when there is none."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.db.tasks import images_by_task, list_tasks
from pixelkiln.service import LOCAL
from pixelkiln.sheets import Cell, SheetPlan, fit_image, layout
from tests.integration.test_sheet_service import _kiln, _png, _sweep
from tests.sheet_sweeps import SWEEP, plain_spec

pytestmark = pytest.mark.anyio
RED = (255, 0, 0)


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    async with _kiln(tmp_path, database_url) as opened:
        yield opened


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 24 for a, b in zip(pixel, colour, strict=False))


async def test_a_cell_smaller_than_its_image_is_drawn_from_a_cached_thumbnail(
    kiln: Kiln,
) -> None:
    batch_id = await _sweep(kiln, plain_spec())
    await kiln.run_until_done([batch_id])
    first, second = (await kiln.db.aread(list_tasks, batch_id))[:2]
    images = await kiln.db.aread(images_by_task, batch_id)
    image = images[first.id][0]
    assert (image.width, image.height) == (64, 64)
    thumb = kiln.storage.absolute(f"thumbs/{batch_id}/{image.id}_128.webp")
    thumb.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), RED).save(thumb, "WEBP")  # unlike the image: it shows which

    empty = tuple(tuple(Cell() for _ in range(3)) for _ in range(3))
    columns = tuple(f"cfg_scale={v}" for v in SWEEP["x"]["cfg_scale"])
    rows = tuple(f"sampler={v}" for v in SWEEP["y"]["sampler"])
    box = layout(SheetPlan("sweep · model=m1", columns, rows, empty, (64, 64)), 32)
    small = _png(await service.sheet_png(kiln.service, LOCAL, batch_id, z="m1", cell=32))
    left, top, right, bottom = box.cell_box(0, 0)
    assert _near(small.getpixel(((left + right) // 2, (top + bottom) // 2)), RED)
    left, top, right, bottom = box.cell_box(0, 1)  # no thumbnail: its own image
    own = Image.open(kiln.storage.absolute(images[second.id][0].path)).convert("RGB")
    expected = fit_image(own, right - left, bottom - top)
    assert small.crop(box.cell_box(0, 1)).tobytes() == expected.tobytes()

    # a cell as large as the image or larger: the image itself, never a (lossy) thumbnail
    large = _png(await service.sheet_png(kiln.service, LOCAL, batch_id, z="m1", cell=256))
    box = layout(SheetPlan("sweep · model=m1", columns, rows, empty, (64, 64)), 256)
    left, top, right, bottom = box.cell_box(0, 0)
    assert not _near(large.getpixel(((left + right) // 2, (top + bottom) // 2)), RED)


def test_a_large_image_is_reduced_before_it_is_resampled() -> None:
    """Fitting a 2048 px image in a 256 px cell: the same picture as a full resample."""
    source = Image.new("RGB", (2048, 1024), (10, 120, 200))
    source.paste((250, 250, 0), (0, 0, 1024, 1024))
    fitted = fit_image(source, 256, 256)
    assert fitted.size == (256, 128)
    assert _near(fitted.getpixel((60, 60)), (250, 250, 0))
    assert _near(fitted.getpixel((200, 60)), (10, 120, 200))
    data = io.BytesIO()
    fitted.save(data, "PNG")
    assert Image.open(data).size == (256, 128)
