"""CPU per generation request: httpx's default transport, ours, and bare aiohttp.

    python -m bench.http_client [--requests 400] [--concurrency 4] [--repeat 3]

Each side POSTs the same txt2img body to a fake Stable Diffusion WebUI (served
by a child process, so its CPU is not counted) ``--concurrency`` at a time and
parses the JSON answer, on one fresh client per run:

- ``httpx default``: ``httpx.AsyncClient`` as it comes (httpcore, anyio, h11);
- ``pixelkiln``: :func:`pixelkiln.backends.transport.shared_client` (httpx's
  client over :class:`~pixelkiln.backends.transport.AiohttpTransport`) driven
  through :func:`pixelkiln.backends.http.send` and ``json_object``, what a
  backend does per task;
- ``aiohttp``: an ``aiohttp.ClientSession`` directly: the floor, for reference.

CPU seconds of this process (``time.process_time``) per request; each side's
median of ``--repeat`` runs, measured alternately in the same process. The
ratios to httpx's default are the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

from pixelkiln.backends.http import join_url, json_object, send
from pixelkiln.backends.transport import shared_client
from pixelkiln.testing import FakeFleet

BODY = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1, "n_iter": 1, "batch_size": 1}
PATH = "/sdapi/v1/txt2img"
TIMEOUT = 30.0

Send = Callable[[], Awaitable[object]]


async def _measure(one: Send, requests: int, concurrency: int) -> float:
    """CPU seconds per request of ``requests`` calls of ``one``, ``concurrency`` at a time."""
    await one()  # connection opened, caches warm: not counted
    started = time.process_time()
    for _ in range(requests // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return (time.process_time() - started) / (requests // concurrency * concurrency)


async def httpx_default(url: str, requests: int, concurrency: int) -> float:
    async with httpx.AsyncClient() as client:

        async def one() -> object:
            response = await client.post(url, json=BODY, timeout=TIMEOUT)
            response.raise_for_status()
            return response.json()

        return await _measure(one, requests, concurrency)


async def pixelkiln(url: str, requests: int, concurrency: int) -> float:
    async with shared_client() as client:

        async def one() -> object:
            response = await send(client, "POST", url, server=url, timeout=TIMEOUT, json=BODY)
            return json_object(response, server=url)

        return await _measure(one, requests, concurrency)


async def bare_aiohttp(url: str, requests: int, concurrency: int) -> float:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession() as session:

        async def one() -> object:
            async with session.post(url, json=BODY, timeout=timeout) as response:
                response.raise_for_status()
                return await response.json()

        return await _measure(one, requests, concurrency)


SIDES = {"httpx default": httpx_default, "pixelkiln": pixelkiln, "aiohttp": bare_aiohttp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in SIDES}
    with FakeFleet([("sdwebui", {"latency": 0.0})]) as fleet:
        url = join_url(fleet.urls[0], PATH)
        for _ in range(args.repeat):
            for name, side in SIDES.items():
                seconds[name].append(asyncio.run(side(url, args.requests, args.concurrency)))
    base = statistics.median(seconds["httpx default"])
    print(
        f"CPU per request: {args.requests} POSTs {PATH}, {args.concurrency} at a time, "
        f"median of {args.repeat}"
    )
    for name, values in seconds.items():
        value = statistics.median(values)
        ratio = value / base
        print(f"{name:<14} {value * 1000:6.2f} ms/request   ratio to httpx default {ratio:.2f}")


if __name__ == "__main__":
    main()
