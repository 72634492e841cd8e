"""service.upload_spec: the img2img batch that /api/v1 uploads and the compat create share."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.db.presets import PresetFields
from pixelkiln.db.records import record_asset
from pixelkiln.db.tasks import list_tasks
from pixelkiln.engine.intake import asset_record
from pixelkiln.exceptions import InvalidValueError, NotFoundError, SpecError
from pixelkiln.service import LOCAL, Uploaded, UploadFields
from pixelkiln.storage import read_input_image
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        backends=[{"name": "placeholder", "type": "placeholder"}],
    )
    async with Kiln(settings, engine=False) as opened:
        yield opened


async def _upload(kiln: Kiln, name: str, size: tuple[int, int], colour: str) -> Uploaded:
    """An image stored as an upload, as the API stores one."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    image = read_input_image(out.getvalue())
    record = asset_record(image, kiln.storage.write_asset(image), name)
    return Uploaded(await kiln.db.awrite(record_asset, None, record), name)


async def test_one_task_per_image_keyed_by_its_name_one_prompt_for_all(kiln: Kiln) -> None:
    files = [
        await _upload(kiln, "photo_00.png", (64, 48), "red"),
        await _upload(kiln, "photo_00.png", (48, 64), "blue"),
        await _upload(kiln, "scan", (64, 64), "green"),
    ]
    fields = UploadFields(name="shots", prompt="as a watercolour", denoise=0.4)
    spec = await service.upload_spec(kiln.service, fields, files)
    assert [t.key for t in spec.tasks] == ["photo_00.png", "photo_00-2.png", "scan.png"]
    assert [t.init_image for t in spec.tasks] == [f"asset:{f.asset.id}" for f in files]
    made = await service.submit(kiln.service, LOCAL, service.Submission(spec))
    tasks = await kiln.service.read(list_tasks, made.batch_id)
    assert {t.prompt for t in tasks} == {"as a watercolour"}
    assert {t.params["denoise"] for t in tasks} == {0.4}


async def test_a_preset_frames_the_prompt_and_gives_its_defaults(kiln: Kiln) -> None:
    files = [await _upload(kiln, "cat.png", (64, 64), "white")]
    slot = await service.create_preset(
        kiln.service,
        LOCAL,
        PresetFields(
            title="Ink", content="ink drawing of {prompt}", negative_prompt="blur", params={"n": 2}
        ),
    )
    before = await service.create_preset(
        kiln.service, LOCAL, PresetFields(title="Noir", content="film noir")
    )

    def spec_with(preset_id: int, prompt: str = "", negative: str | None = None) -> UploadFields:
        return UploadFields(prompt=prompt, preset_id=preset_id, negative_prompt=negative)

    framed = await service.upload_spec(kiln.service, spec_with(slot.id, "a cat"), files)
    assert framed.defaults is not None
    assert (framed.defaults.prompt, framed.defaults.negative_prompt) == (
        "ink drawing of a cat",
        "blur",
    )
    assert framed.defaults.n == 2
    own = await service.upload_spec(kiln.service, spec_with(slot.id, "a cat", "grain"), files)
    assert own.defaults is not None and own.defaults.negative_prompt == "grain"
    led = await service.upload_spec(kiln.service, spec_with(before.id, "a cat"), files)
    assert led.defaults is not None and led.defaults.prompt == "film noir, a cat"
    alone = await service.upload_spec(kiln.service, spec_with(before.id), files)
    assert alone.defaults is not None and alone.defaults.prompt == "film noir"


async def test_no_prompt_an_inactive_preset_or_a_bad_value_are_refused(kiln: Kiln) -> None:
    files = [await _upload(kiln, "cat.png", (64, 64), "white")]
    with pytest.raises(InvalidValueError, match="a prompt") as missing:
        await service.upload_spec(kiln.service, UploadFields(), files)
    assert missing.value.field == "prompt"
    retired = await service.create_preset(
        kiln.service, LOCAL, PresetFields(title="Old", content="old", active=False)
    )
    with pytest.raises(NotFoundError, match=f"no preset {retired.id}"):
        await service.upload_spec(kiln.service, UploadFields(preset_id=retired.id), files)
    with pytest.raises(SpecError, match="aspect_ratio"):
        await service.upload_spec(
            kiln.service, UploadFields(prompt="x", aspect_ratio="wide"), files
        )
