"""The openai backend's ``size_fields`` against the fake in its jimeng-api flavour."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from pixelkiln.app import Kiln
from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.openai import OpenAIBackend, _refused, create
from pixelkiln.db.batches import get_batch
from pixelkiln.db.tasks import list_images, list_tasks
from pixelkiln.exceptions import (
    ConfigError,
    QuotaExhaustedError,
    RejectedInputError,
    ServerError,
)
from pixelkiln.models import BatchStatus, TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.testing import FakeOpenAI, generation_request, settings_for
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio
KEY = "session-0123456789"


@pytest.fixture
def jimeng() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY, flavour="jimeng", jimeng_images=2) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make(fake: FakeOpenAI, http: httpx.AsyncClient, size_fields: str) -> OpenAIBackend:
    options = {"size_fields": size_fields}
    settings = settings_for(fake, api_key=KEY, model="jimeng-4.0", options=options)
    return create(settings, BackendDeps(http))


async def test_ratio_and_resolution_go_instead_of_size_and_shape_the_image(
    jimeng: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    backend = make(jimeng, http, "ratio")
    # 16:9 at 1k is 1344×768 in pixelkiln's table: sent back as the ratio and resolution
    [image] = await backend.generate(generation_request(width=1344, height=768))
    (sent,) = jimeng.received("/v1/images/generations")
    assert sent.json() == {
        "prompt": "a red fox in the snow",
        "n": 1,
        "ratio": "16:9",
        "resolution": "1k",
        "model": "jimeng-4.0",
        "response_format": "b64_json",
    }
    assert Image.open(io.BytesIO(image.data)).size == (1024, 576)  # jimeng-api's 16:9 at 1k


@pytest.mark.parametrize(
    ("width", "height", "ratio", "resolution"),
    [
        (2048, 2048, "1:1", "2k"),
        (1536, 2688, "9:16", "2k"),  # pixelkiln's 9:16 at 2k
        (864, 1184, "3:4", "1k"),
        (512, 288, "16:9", "1k"),  # a size in pixels: the nearest ratio and resolution
        (1400, 600, "21:9", "1k"),
    ],
)
async def test_each_size_goes_as_the_nearest_ratio_and_resolution(
    width: int, height: int, ratio: str, resolution: str
) -> None:
    request = generation_request(width=width, height=height)
    assert request.ratio_and_resolution(("1:1", "4:3", "3:4", "16:9", "9:16", "21:9")) == (
        ratio,
        resolution,
    )


async def test_both_sends_size_too_and_the_proxy_refuses_it_without_a_retry(
    jimeng: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    backend = make(jimeng, http, "both")
    with pytest.raises(RejectedInputError, match="不支持的参数: size") as caught:
        await backend.generate(generation_request())
    assert "code -1000" in str(caught.value)
    (sent,) = jimeng.received("/v1/images/generations")
    assert {"size", "ratio", "resolution"} <= set(sent.json())


async def test_the_default_sends_size_which_such_a_proxy_refuses(
    jimeng: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    settings = settings_for(jimeng, api_key=KEY, model="jimeng-4.0")
    backend = create(settings, BackendDeps(http))
    with pytest.raises(RejectedInputError, match="请使用 ratio 和 resolution"):
        await backend.generate(generation_request())


async def test_the_fake_refuses_what_jimeng_api_refuses(jimeng: FakeOpenAI) -> None:
    bodies: list[tuple[dict[str, Any], int, str]] = [
        ({"prompt": "x", "ratio": "5:4"}, -1000, '不支持的比例 "5:4"'),
        ({"prompt": "x", "resolution": "8k"}, -1000, '不支持的分辨率 "8k"'),
        ({"prompt": "x", "width": 512}, -1000, "不支持的参数: width"),
        ({"prompt": "x", "ratio": 1.5}, -2000, "Params body.ratio invalid"),
        ({"ratio": "1:1"}, -2000, "Params body.prompt invalid"),
    ]
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=jimeng.url) as client:
        for body, code, message in bodies:
            r = await client.post("/v1/images/generations", json=body, headers=headers)
            assert r.status_code == 200  # jimeng-api answers failures with 200 and a code
            answer = r.json()
            assert (answer["code"], answer["data"]) == (code, None)
            assert message in answer["message"]
        r = await client.post("/v1/images/generations", json={"prompt": "x"}, headers=headers)
        images = r.json()["data"]  # defaults: 1:1 at 2k, URLs, its own count of images
        assert len(images) == 2 and all("url" in i for i in images)
        png = await client.get(images[0]["url"])
        assert Image.open(io.BytesIO(png.content)).size == (2048, 2048)


async def test_a_failure_envelope_is_an_error_with_its_message() -> None:
    server = "http://proxy"
    points = _refused({"code": -2009, "message": "即梦积分不足"}, server)
    assert isinstance(points, QuotaExhaustedError)
    assert isinstance(_refused({"code": -2006, "message": "blocked"}, server), RejectedInputError)
    failed = _refused({"code": -2007, "message": "图像生成失败"}, server)
    assert type(failed) is ServerError and "图像生成失败 (code -2007)" in str(failed)


async def test_an_unknown_size_fields_value_is_a_config_error(
    jimeng: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ConfigError, match=r"options\.size_fields must be one of size, ratio, both"):
        make(jimeng, http, "ratios")


async def test_a_batch_runs_on_a_jimeng_style_proxy(tmp_path: Path, jimeng: FakeOpenAI) -> None:
    backend = {
        "name": "jimeng",
        "type": "openai",
        "urls": [jimeng.url],
        "api_key": KEY,
        "model": "jimeng-4.0",
        "options": {"size_fields": "ratio"},
    }
    spec = parse_batch(
        {
            "name": "slides",
            "defaults": {"aspect_ratio": "16:9", "resolution": "1k"},
            "tasks": [{"prompt": "a title slide"}, {"prompt": "a chart", "aspect_ratio": "3:4"}],
        }
    )
    async with Kiln(make_settings(tmp_path, backends=[backend])) as kiln:
        batch_id = await kiln.submit(spec)
        await kiln.run_until_done([batch_id])
        batch = kiln.db.read(get_batch, batch_id)
        tasks = kiln.db.read(list_tasks, batch_id)
        images = kiln.db.read(list_images, batch_id)
    assert batch.status == BatchStatus.COMPLETED
    assert [t.status for t in tasks] == [TaskStatus.SUCCEEDED] * 2
    sent = sorted((r.json()["ratio"], r.json()["resolution"]) for r in jimeng.requests if r.body)
    assert sent == [("16:9", "1k"), ("3:4", "1k")]
    assert sorted((i.width, i.height) for i in images) == [(768, 1024), (1024, 576)]
