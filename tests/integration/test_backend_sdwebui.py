"""The sdwebui backend against the fake WebUI, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.placeholder import draw
from pixelkiln.backends.sdwebui import SDWebUIBackend, create
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    NoServerAvailableError,
    RejectedInputError,
    ServerError,
)
from pixelkiln.testing import (
    FakeFleet,
    FakeSDWebUI,
    generation_request,
    settings_for,
    wait_until,
)
from pixelkiln.testing.cli import dev_app

pytestmark = pytest.mark.anyio
PASSWORD = "hunter22-secret"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def webui() -> Iterator[FakeSDWebUI]:
    with FakeSDWebUI() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def backend(webui: FakeSDWebUI, http: httpx.AsyncClient) -> AsyncIterator[SDWebUIBackend]:
    backend = create(settings_for(webui, model="sd_xl_base_1.0.safetensors"), BackendDeps(http))
    yield backend
    await backend.aclose()


def settings_for_urls(urls: list[str]) -> BackendSettings:
    return BackendSettings(name="sd", type="sdwebui", urls=urls, timeout=10)


async def test_txt2img_maps_parameters_and_reads_seeds(
    backend: SDWebUIBackend, webui: FakeSDWebUI
) -> None:
    request = generation_request(
        n=2,
        seed=1234,
        sampler="DPM++ 2M",
        steps=7,
        cfg_scale=5.5,
        width=96,
        height=64,
        negative_prompt="blurry",
    )
    images = await backend.generate(request)

    assert [i.seed for i in images] == [1234, 1235]
    for image in images:
        assert Image.open(io.BytesIO(image.data)).size == (96, 64)
    assert images[0].data == draw(request.prompt, 1234, 96, 64)
    (sent,) = webui.received("/sdapi/v1/txt2img")
    body = sent.json()
    assert body["batch_size"] == 2 and body["n_iter"] == 1
    assert body["sampler_name"] == "DPM++ 2M" and body["steps"] == 7
    assert body["cfg_scale"] == 5.5 and body["negative_prompt"] == "blurry"
    assert body["override_settings"] == {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors"}
    assert body["override_settings_restore_afterwards"] is False
    assert images[0].info["sd_model_name"] == "sd_xl_base_1.0"


async def test_grid_image_is_skipped() -> None:
    with FakeSDWebUI(grid=True) as webui:
        async with httpx.AsyncClient() as http:
            backend = create(settings_for(webui), BackendDeps(http))
            images = await backend.generate(generation_request(n=3, seed=10))
            await backend.aclose()
    assert len(images) == 3
    assert [i.seed for i in images] == [10, 11, 12]
    assert images[0].data == draw("a red fox in the snow", 10, 64, 64)


async def test_img2img_sends_init_image_and_denoise(
    backend: SDWebUIBackend, webui: FakeSDWebUI
) -> None:
    init = draw("source", 1, 64, 64)
    images = await backend.generate(generation_request(init_image=init, denoise=0.35))

    assert len(images) == 1
    (sent,) = webui.received("/sdapi/v1/img2img")
    body = sent.json()
    assert base64.b64decode(body["init_images"][0]) == init
    assert body["denoising_strength"] == 0.35
    assert not webui.received("/sdapi/v1/txt2img")


async def test_reference_images_are_refused_before_sending(
    backend: SDWebUIBackend, webui: FakeSDWebUI
) -> None:
    with pytest.raises(RejectedInputError, match="reference"):
        await backend.generate(generation_request(reference_images=(b"png",)))
    assert not webui.requests


async def test_unknown_sampler_is_rejected_with_the_webui_message(
    backend: SDWebUIBackend,
) -> None:
    with pytest.raises(RejectedInputError, match="Sampler not found"):
        await backend.generate(generation_request(sampler="No Such Sampler"))


async def test_basic_auth_and_secret_never_shown(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeSDWebUI(auth=f"admin:{PASSWORD}") as webui:
        good = create(settings_for(webui, api_key=f"admin:{PASSWORD}"), BackendDeps(http))
        assert len(await good.generate(generation_request())) == 1
        assert webui.requests[-1].headers["authorization"].startswith("Basic ")

        bad = create(settings_for(webui, api_key="admin:wrong-password"), BackendDeps(http))
        with pytest.raises(RejectedInputError, match="Incorrect username or password") as info:
            await bad.generate(generation_request())
        await good.aclose()
        await bad.aclose()
    assert PASSWORD not in str(info.value) and "wrong-password" not in str(info.value)
    assert PASSWORD not in repr(good)
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]


async def test_credentials_from_environment(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SD_AUTH", f"admin:{PASSWORD}")
    with FakeSDWebUI(auth=f"admin:{PASSWORD}") as webui:
        backend = create(settings_for(webui, api_key_env="SD_AUTH"), BackendDeps(http))
        assert len(await backend.generate(generation_request())) == 1
        await backend.aclose()


async def test_api_key_must_be_user_and_password(
    webui: FakeSDWebUI, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ConfigError, match="user:password"):
        create(settings_for(webui, api_key="just-a-token"), BackendDeps(http))


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (500, ServerError),
        (503, ServerError),
        (422, RejectedInputError),
        ("reset", BackendUnavailableError),
        ("malformed", ServerError),
    ],
)
async def test_injected_faults_become_our_exceptions(
    backend: SDWebUIBackend, webui: FakeSDWebUI, outcome: int | str, kind: type[Exception]
) -> None:
    webui.faults.fail_next(outcome)  # type: ignore[arg-type]
    with pytest.raises(kind):
        await backend.generate(generation_request())
    assert len(await backend.generate(generation_request())) == 1  # and the next one works


async def test_hang_becomes_a_timeout(webui: FakeSDWebUI, http: httpx.AsyncClient) -> None:
    backend = create(settings_for(webui, timeout=0.3), BackendDeps(http))
    webui.faults.fail_next("hang")
    with pytest.raises(BackendTimeoutError):
        await backend.generate(generation_request())
    await backend.aclose()


async def test_single_server_down_means_wait(backend: SDWebUIBackend, webui: FakeSDWebUI) -> None:
    webui.down()
    with pytest.raises(NoServerAvailableError) as info:
        await backend.generate(generation_request())
    assert info.value.retryable
    assert isinstance(info.value.__cause__, BackendUnavailableError)


async def test_fewer_images_than_asked_is_a_server_error(
    backend: SDWebUIBackend, webui: FakeSDWebUI, http: httpx.AsyncClient
) -> None:
    webui.hold()
    task = asyncio.create_task(backend.generate(generation_request(n=2)))
    await wait_until(lambda: webui.held == 1)  # generating, until interrupted
    await http.post(f"{webui.url}/sdapi/v1/interrupt")  # someone else stops the WebUI
    with pytest.raises(ServerError, match="0 of 2"):
        await task


async def test_held_generations_go_on_one_release_at_a_time(
    webui: FakeSDWebUI, http: httpx.AsyncClient
) -> None:
    backend = create(settings_for(webui, concurrency=3), BackendDeps(http))
    webui.hold()
    tasks = [asyncio.create_task(backend.generate(generation_request(task_id=i))) for i in range(3)]
    await wait_until(lambda: webui.held == 3)
    webui.release(1)
    await wait_until(lambda: any(t.done() for t in tasks))
    assert webui.held == 2 and sum(t.done() for t in tasks) == 1
    webui.release()  # stop holding: the rest finish, and later ones are not held
    assert [len(images) for images in await asyncio.gather(*tasks)] == [1, 1, 1]
    assert len(await backend.generate(generation_request())) == 1
    await backend.aclose()


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_cancel_interrupts_our_generation(
    webui: FakeSDWebUI, http: httpx.AsyncClient, concurrency: int
) -> None:
    backend = create(settings_for(webui, concurrency=concurrency), BackendDeps(http))
    webui.hold()
    task = asyncio.create_task(backend.generate(generation_request()))
    await wait_until(lambda: webui.held == 1)  # active on the WebUI, until interrupted
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert webui.interrupts == 1
    assert bool(webui.received("/internal/progress")) is (concurrency > 1)
    await backend.aclose()


async def test_list_models(backend: SDWebUIBackend, webui: FakeSDWebUI) -> None:
    models = await backend.list_models(webui.url)
    assert models == list(webui.models)


async def test_fake_fleet_serves_from_a_child_process(http: httpx.AsyncClient) -> None:
    with FakeFleet([("sdwebui", {"latency": 0.01, "grid": True})]) as fleet:
        backend = create(settings_for_urls(fleet.urls), BackendDeps(http))
        assert len(await backend.generate(generation_request(n=2))) == 2
        fleet.hold(0)
        held = asyncio.create_task(backend.generate(generation_request()))
        await wait_until(lambda: fleet.held(0) == 1)
        fleet.release(0)
        assert len(await held) == 1
        fleet.down(0)
        with pytest.raises(NoServerAvailableError):
            await backend.generate(generation_request())
        fleet.up(0)
        fleet.set_faults(0, error_rates={500: 1.0})
        await backend.aclose()
        backend = create(settings_for_urls(fleet.urls), BackendDeps(http))
        with pytest.raises(ServerError):
            await backend.generate(generation_request())
        await backend.aclose()
        assert fleet.outcomes(0) == {"ok": 2, "500": 1}


def test_fake_backend_command_serves_until_the_duration() -> None:
    result = CliRunner().invoke(
        dev_app,
        [
            "fake-backend",
            "--kind",
            "sdwebui",
            "--port",
            "0",
            "--duration",
            "0.2",
            "--error-rates",
            "500:0.5",
            "--latency",
            "0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fake sdwebui listening on http://127.0.0.1:" in result.output
    bad = CliRunner().invoke(dev_app, ["fake-backend", "--port", "0", "--error-rates", "oops"])
    assert bad.exit_code != 0
