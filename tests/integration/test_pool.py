"""Server pools over real HTTP: slots, failover, the circuit breaker, 429s, rpm, secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.pool import CircuitState, PoolPolicy, Server, ServerPool
from pixelkiln.backends.sdwebui import SDWebUIBackend, create
from pixelkiln.exceptions import (
    NoServerAvailableError,
    RateLimitedError,
    ServerError,
)
from pixelkiln.testing import FakeSDWebUI, generation_request, settings_for, wait_until

pytestmark = pytest.mark.anyio
TXT2IMG = "/sdapi/v1/txt2img"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def fakes() -> Iterator[Callable[..., list[FakeSDWebUI]]]:
    """Start fake WebUIs on demand; all stopped at the end."""
    with ExitStack() as stack:

        def start(count: int, **kwargs: Any) -> list[FakeSDWebUI]:
            return [stack.enter_context(FakeSDWebUI(**kwargs)) for _ in range(count)]

        yield start


def backend_for(
    servers: list[FakeSDWebUI], http: httpx.AsyncClient, **overrides: Any
) -> SDWebUIBackend:
    return create(settings_for(*servers, **overrides), BackendDeps(http))


async def run_all(backend: SDWebUIBackend, count: int) -> list[Any]:
    return await asyncio.gather(
        *(backend.generate(generation_request(task_id=i, seed=i)) for i in range(count))
    )


async def test_faster_server_takes_more_work(fakes: Any, http: httpx.AsyncClient) -> None:
    fast, slow = fakes(2)
    slow.hold()  # as slow as it gets: its generation ends when the fast one has done the rest
    backend = backend_for([fast, slow], http, concurrency=1)
    batch = asyncio.create_task(run_all(backend, 16))  # 16 callers, two slots: a queue
    await wait_until(lambda: len(fast.received(TXT2IMG)) + slow.held == 16)
    slow.release()
    results = await batch
    await backend.aclose()
    assert len(results) == 16
    assert len(fast.received(TXT2IMG)) >= 3 * len(slow.received(TXT2IMG))


async def test_server_killed_mid_run_fails_over(fakes: Any, http: httpx.AsyncClient) -> None:
    servers = fakes(3, latency=0.3)
    servers[0].hold()  # its work stays in flight until it dies
    backend = backend_for(servers, http, concurrency=2)
    batch = asyncio.create_task(run_all(backend, 12))
    await wait_until(lambda: servers[0].held == 2)
    servers[0].down()  # its two requests in flight are reset
    results = await batch
    await backend.aclose()

    assert len(results) == 12 and all(len(images) == 1 for images in results)
    assert backend.pool.servers[0].state is not CircuitState.CLOSED
    finished_elsewhere = sum(len(s.received(TXT2IMG)) for s in servers[1:])
    assert finished_elsewhere == 12


async def test_all_down_waits_then_resumes(fakes: Any, http: httpx.AsyncClient) -> None:
    servers = fakes(2)
    backend = backend_for(servers, http, options={"open_seconds": 0.1})
    for server in servers:
        server.down()
    with pytest.raises(NoServerAvailableError, match="every server is down") as info:
        await backend.generate(generation_request())
    assert info.value.retryable
    with pytest.raises(NoServerAvailableError):  # both circuits open: not even tried
        await backend.generate(generation_request())

    servers[1].up()
    await wait_until(lambda: backend.pool.servers[1].up)  # the health probe saw it come back
    assert len(await backend.generate(generation_request())) == 1
    # still out of service: OPEN, or HALF_OPEN while a (failing) probe is in flight
    assert backend.pool.servers[0].state is not CircuitState.CLOSED
    await backend.aclose()


async def test_circuit_opens_half_opens_and_closes(fakes: Any, http: httpx.AsyncClient) -> None:
    flaky, steady = fakes(2)
    backend = backend_for(
        [flaky, steady], http, options={"failure_threshold": 3, "open_seconds": 0.2}
    )
    pool = backend.pool
    pool.servers[1].latency = 1.0  # make the pool try the flaky one first
    flaky.faults.fail_next(500, 500, 500)
    for _ in range(3):  # each fails over to the steady server: no task fails
        assert len(await backend.generate(generation_request())) == 1
    assert pool.servers[0].state is CircuitState.OPEN
    await backend.generate(generation_request())
    assert len(flaky.received(TXT2IMG)) == 3  # open: no more work

    flaky.down()  # the probe fails: stays open, waits longer
    # (between probes: during one it is HALF_OPEN for a moment)
    await wait_until(
        lambda: pool.servers[0].open_for >= 0.3 and pool.servers[0].state is CircuitState.OPEN
    )
    assert pool.servers[0].state is CircuitState.OPEN
    flaky.up()
    await wait_until(lambda: pool.servers[0].up)
    assert flaky.received("/sdapi/v1/sd-models")  # closed by a health probe
    pool.servers[1].latency = 1.0
    await backend.generate(generation_request())
    assert len(flaky.received(TXT2IMG)) == 4
    await backend.aclose()


async def test_half_open_trial_without_health_checks() -> None:
    calls: list[str] = []
    fail = True

    async def call(server: Server) -> str:
        calls.append(server.url)
        if fail:
            raise ServerError("boom", server=server.url)
        return "ok"

    pool = ServerPool("p", ["http://a"], policy=PoolPolicy(failure_threshold=2, open_seconds=0.1))
    with pytest.raises(ServerError):  # one failure: the task's attempt is spent
        await pool.run(call)
    with pytest.raises(NoServerAvailableError) as info:  # the second opens the circuit: wait
        await pool.run(call)
    assert isinstance(info.value.__cause__, ServerError)
    assert pool.servers[0].state is CircuitState.OPEN
    with pytest.raises(NoServerAvailableError):  # open: not even tried
        await pool.run(call)
    assert len(calls) == 2
    await asyncio.sleep(0.15)
    with pytest.raises(NoServerAvailableError):  # the half-open trial fails: open, longer
        await pool.run(call)
    assert len(calls) == 3
    assert pool.servers[0].open_for == pytest.approx(0.15)
    fail = False
    await asyncio.sleep(0.25)
    assert await pool.run(call) == "ok"
    assert pool.servers[0].state is CircuitState.CLOSED
    assert len(calls) == 4


async def test_a_call_that_waited_for_a_slot_goes_before_one_that_came_later() -> None:
    """First come, first served: the call that waited for the busy slot gets it when it
    frees, not a call that happens to look first (it arrives as the slot frees: its first
    step runs before the waiting call is woken). A scheduler claims in fair-share order,
    so a user's task that waited is not passed over, turn after turn, by later claims."""
    order: list[str] = []
    release = asyncio.Event()

    def named(name: str) -> Callable[[Server], Any]:
        async def call(server: Server) -> str:
            order.append(name)
            if name == "first":
                await release.wait()
            return name

        return call

    pool = ServerPool("p", ["http://a"], concurrency=1)
    first = asyncio.create_task(pool.run(named("first")))
    await wait_until(lambda: order == ["first"])
    waited = asyncio.create_task(pool.run(named("waited")))
    for _ in range(5):  # it found the slot busy and waits for it
        await asyncio.sleep(0)
    assert order == ["first"]
    release.set()  # the first call ends in the next turn; the late one's first step follows
    late = asyncio.create_task(pool.run(named("late")))
    assert await asyncio.gather(first, waited, late) == ["first", "waited", "late"]
    assert order == ["first", "waited", "late"]


async def test_retry_after_is_honoured(fakes: Any, http: httpx.AsyncClient) -> None:
    (server,) = fakes(1)
    server.faults.retry_after = 0.5
    server.faults.fail_next(429)
    backend = backend_for([server], http)
    assert len(await backend.generate(generation_request())) == 1  # waited, not failed
    first, second = server.received(TXT2IMG)
    assert second.at - first.at >= 0.45
    assert backend.pool.servers[0].rate_limited == 1
    await backend.aclose()


async def test_long_retry_after_goes_back_to_the_scheduler(
    fakes: Any, http: httpx.AsyncClient
) -> None:
    (server,) = fakes(1)
    server.faults.retry_after = 120
    server.faults.fail_next(429)
    backend = backend_for([server], http, options={"max_rate_limit_wait": 5})
    with pytest.raises(RateLimitedError) as info:
        await backend.generate(generation_request())
    assert info.value.retry_after == pytest.approx(120, abs=2)
    await backend.aclose()


async def test_rate_limited_server_is_skipped(fakes: Any, http: httpx.AsyncClient) -> None:
    limited, free = fakes(2)
    limited.faults.retry_after = 30
    limited.faults.fail_next(429)
    backend = backend_for([limited, free], http)
    backend.pool.servers[1].latency = 1.0  # the limited one is tried first
    started = time.monotonic()
    results = await run_all(backend, 4)
    # far below the 30 s Retry-After (it was not waited for), with room for a loaded machine
    assert len(results) == 4 and time.monotonic() - started < 20
    assert len(limited.received(TXT2IMG)) == 1 and len(free.received(TXT2IMG)) == 4
    await backend.aclose()


async def test_rpm_spaces_requests(fakes: Any) -> None:
    servers = fakes(2)
    starts: list[float] = []

    async def started(request: httpx.Request) -> None:
        starts.append(time.monotonic())

    # start times taken where the pool sends, not where a loaded loopback delivers
    async with httpx.AsyncClient(event_hooks={"request": [started]}) as http:
        backend = backend_for(servers, http, rpm=240, concurrency=4)  # one start per 0.25 s
        await run_all(backend, 6)
        await backend.aclose()
    times = sorted(starts)
    assert len(times) == 6 == sum(len(s.received(TXT2IMG)) for s in servers)
    assert times[-1] - times[0] >= 1.0  # 5 gaps of 0.25 s, less scheduling slack
    for start in times:  # never more than 2 (+ burst 1) starts in any half second
        assert sum(1 for t in times if start <= t < start + 0.5) <= 3


async def test_adaptive_concurrency_backs_off_and_recovers(
    fakes: Any, http: httpx.AsyncClient
) -> None:
    (server,) = fakes(1)
    backend = backend_for(
        [server],
        http,
        concurrency=4,
        options={
            "adaptive_concurrency": True,
            "adaptive_raise_after": 2,
            "default_retry_after": 0.05,
        },
    )
    state = backend.pool.servers[0]
    server.faults.retry_after = None
    server.faults.fail_next(429)
    await backend.generate(generation_request())
    assert state.limit == 2
    for _ in range(4):
        await backend.generate(generation_request())
    assert state.limit == 4  # one slot back per two successes, up to concurrency
    await backend.aclose()


async def test_probe_stops_on_close(fakes: Any, http: httpx.AsyncClient) -> None:
    (server,) = fakes(1)
    backend = backend_for([server], http)
    await backend.generate(generation_request())
    prober = backend.pool._prober
    assert prober is not None and not prober.done()
    await backend.aclose()
    assert prober.done()


async def test_secrets_absent_from_failures_and_logs(
    fakes: Any, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-pass-xyz"
    caplog.set_level(logging.DEBUG)
    servers = fakes(2, auth=f"admin:{secret}")
    backend = backend_for(
        servers, http, api_key=f"admin:{secret}", options={"failure_threshold": 1}
    )
    servers[0].faults.fail_next(500)
    servers[1].faults.fail_next("reset")
    errors: list[str] = []
    try:
        await backend.generate(generation_request())
    except Exception as exc:
        errors.append(str(exc))
        errors.append(str(exc.__cause__))
    servers[0].down()
    servers[1].down()
    try:
        await backend.generate(generation_request())
    except NoServerAvailableError as exc:
        errors.append(str(exc))
    errors.append(backend.pool.describe())
    await backend.aclose()
    assert errors and all(secret not in e for e in errors)
    assert caplog.records and not [r for r in caplog.records if secret in r.getMessage()]
