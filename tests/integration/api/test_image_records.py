"""Records tell the truth: what the PNG, ``GET /images/{id}``, the manifest, the report and
the ``image_generated`` event say is what was sent to the generator and what came back."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apikit import Api, api_settings, png_bytes, running_api, spec
from PIL import Image

from pixelkiln import png
from pixelkiln.db.tasks import list_images
from pixelkiln.export import manifest
from pixelkiln.reports import build_report
from pixelkiln.testing import FakeComfyUI, FakeOpenAI, FakeSDWebUI

pytestmark = pytest.mark.anyio


@dataclass
class Fakes:
    openai: FakeOpenAI
    comfy: FakeComfyUI
    webui: FakeSDWebUI


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    with FakeOpenAI() as openai, FakeComfyUI() as comfy, FakeSDWebUI(auth="kiln:s3cret") as webui:
        yield Fakes(openai, comfy, webui)


@pytest.fixture
async def api(fakes: Fakes, database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The API on SQLite and PostgreSQL, its backends the fake generators."""
    webui_with_credentials = fakes.webui.url.replace("http://", "http://kiln:s3cret@")
    backends = [
        {"name": "jimeng", "type": "openai", "urls": [fakes.openai.url], "model": "jimeng-4.0"},
        {"name": "comfy", "type": "comfyui", "urls": [fakes.comfy.url]},
        # a checkpoint the WebUI does not have: it silently uses its current one
        {"name": "sd", "type": "sdwebui", "urls": [webui_with_credentials], "model": "gone.ckpt"},
    ]
    settings = api_settings(
        tmp_path / "data",
        storage={"data_dir": str(tmp_path / "data"), "database_url": database_url},
        backends=backends,
    )
    async with running_api(settings) as running:
        yield running


async def run(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    batch: dict[str, Any] = r.json()
    assert batch["status"] == "completed", batch
    return batch


async def chunk(api: Api, image: dict[str, Any]) -> str:
    """The PNG's WebUI ``parameters`` text, as served."""
    return png.read_text((await api.client.get(image["url"])).content)["parameters"]


async def generated_events(api: Api, batch_id: int) -> list[dict[str, Any]]:
    log = (await api.client.get(f"/api/v1/batches/{batch_id}/log")).json()
    return [e["data"]["image"] for e in log["items"] if e["type"] == "image_generated"]


async def test_an_openai_compatible_image_names_the_configured_model_and_no_ignored_parameter(
    api: Api, fakes: Fakes
) -> None:
    body = spec(
        "a lantern", backend="jimeng", negative_prompt="blurry", steps=30, cfg_scale=9, seed=5
    )
    batch = await run(api, body)  # the task names no model
    sent = fakes.openai.received("/v1/images/generations")[0].json()
    assert sent["model"] == "jimeng-4.0" and "blurry" not in sent["prompt"]
    server = f"{fakes.openai.url}/v1"
    image = batch["tasks"][0]["images"][0]
    assert (image["backend"], image["server"], image["model"]) == ("jimeng", server, "jimeng-4.0")

    meta = (await api.client.get(f"/api/v1/images/{image['id']}")).json()
    assert (meta["backend"], meta["server"], meta["model"]) == ("jimeng", server, "jimeng-4.0")
    assert meta["negative_prompt"] == "" and meta["params"]["model"] == "jimeng-4.0"
    assert not {"steps", "cfg_scale", "sampler", "seed"} & set(meta["params"])
    assert image["seed"] is None and meta["seed"] is None  # the API took no seed
    assert (meta["params"]["width"], meta["params"]["height"]) == (64, 64)  # what was asked

    text = await chunk(api, image)
    assert text == f"a lantern\nSize: 64x64, Model: jimeng-4.0, Backend: jimeng, Server: {server}"

    [entry] = manifest(api.ctx.db, batch["id"])
    assert (entry["model"], entry["server"], entry["backend"]) == ("jimeng-4.0", server, "jimeng")
    assert entry["negative_prompt"] == "" and "steps" not in entry["params"]
    assert entry["seed"] is None
    [event] = await generated_events(api, batch["id"])
    assert (event["backend"], event["server"], event["model"]) == ("jimeng", server, "jimeng-4.0")
    report = api.ctx.db.read(build_report, batch["id"])
    assert report["backends"]["jimeng"] == {
        "tasks": 1,
        "succeeded": 1,
        "images": 1,
        "servers": {server: 1},
    }


async def test_a_comfyui_img2img_records_the_size_it_returned(api: Api, fakes: Fakes) -> None:
    upload = await api.client.post(
        "/api/v1/assets", files=[("files", ("init.png", png_bytes(96, 80), "image/png"))]
    )
    assert upload.status_code == 201, upload.text
    body = spec("repaint", backend="comfy", denoise=0.5, steps=7, seed=11)  # asks for 64×64
    body["tasks"][0]["init_image"] = upload.json()[0]["ref"]
    batch = await run(api, body)
    image = batch["tasks"][0]["images"][0]
    with Image.open(io.BytesIO((await api.client.get(image["url"])).content)) as picture:
        assert picture.size == (96, 80)
    [row] = api.ctx.db.read(list_images, batch["id"])
    assert (row.width, row.height) == (96, 80) and (image["width"], image["height"]) == (96, 80)
    text = await chunk(api, image)
    assert "Size: 96x80" in text and "64x64" not in text
    # ComfyUI takes them all: the sampler's values and the checkpoint it loaded
    assert "Steps: 7" in text and "Seed: 11" in text and "Denoising strength: 0.5" in text
    checkpoint = fakes.comfy.checkpoints[0]
    assert f"Model: {checkpoint}" in text and f"Server: {fakes.comfy.url}" in text
    assert (row.backend, row.server, row.model) == ("comfy", fakes.comfy.url, checkpoint)


async def test_a_webui_image_names_the_model_it_ran_and_its_server_without_credentials(
    api: Api, fakes: Fakes
) -> None:
    body = spec("a harbour", backend="sd", negative_prompt="fog", steps=9, sampler="Euler a")
    batch = await run(api, body)
    assert fakes.webui.received("/sdapi/v1/txt2img")[0].json()["override_settings"] == {
        "sd_model_checkpoint": "gone.ckpt"
    }
    image = batch["tasks"][0]["images"][0]
    used = "v1-5-pruned-emaonly"  # the WebUI's answer: it ignored the unknown checkpoint
    assert (image["server"], image["model"]) == (fakes.webui.url, used)
    assert "s3cret" not in image["server"]
    meta = (await api.client.get(f"/api/v1/images/{image['id']}")).json()
    assert meta["negative_prompt"] == "fog" and meta["params"]["steps"] == 9
    assert meta["params"]["sampler"] == "Euler a" and meta["params"]["model"] == used
    text = await chunk(api, image)
    assert text.startswith("a harbour\nNegative prompt: fog\nSteps: 9, Sampler: Euler a")
    assert f"Model: {used}, Backend: sd, Server: {fakes.webui.url}" in text
    assert "s3cret" not in text
