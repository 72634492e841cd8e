"""The pool's choice of server by earliest finish (backends.pool), on a fake clock."""

from __future__ import annotations

import asyncio
import collections

import pytest

from pixelkiln.backends.placeholder import PlaceholderBackend
from pixelkiln.backends.pool import CircuitState, Server, ServerPool, earliest_finish
from pixelkiln.config import BackendSettings
from pixelkiln.engine.dispatch import PREFETCH_SECONDS, Dispatch
from pixelkiln.engine.limits import Limits
from pixelkiln.models import ClaimedTask


def _server(
    url: str, latency: float | None, slots: int = 1, sent: tuple[float, ...] = ()
) -> Server:
    server = Server(url, slots, slots, latency=latency)
    server.in_flight = len(sent)
    server.sent = collections.deque(sent)
    return server


def test_the_last_request_waits_for_a_fast_server_about_to_free() -> None:
    fast = _server("fast", 0.1, sent=(0.0,))  # ends at 0.1
    slow = _server("slow", 0.9)
    assert _wait(earliest_finish([fast, slow], 1, now=0.02)) == pytest.approx(0.08)
    idle = _server("idle", 0.1)  # nothing in flight: the free fast one, of course
    assert earliest_finish([idle, slow], 1, now=0.0) == (idle, None)


def test_enough_work_for_both_starts_the_slow_server_now() -> None:
    fast = _server("fast", 0.1, sent=(0.0,))
    slow = _server("slow", 0.9)
    # the fast one finishes 8 in a row by 0.9; the 9th ends sooner on the slow one
    assert earliest_finish([fast, slow], 8, now=0.0)[0] is None
    assert earliest_finish([fast, slow], 9, now=0.0) == (slow, None)


def test_slots_of_a_server_are_lanes_of_their_own() -> None:
    fast = _server("fast", 0.1, slots=2, sent=(0.0, 0.05))  # free at 0.1 and 0.15
    slow = _server("slow", 0.9)
    assert _wait(earliest_finish([fast, slow], 2, now=0.06)) == pytest.approx(0.04)
    assert earliest_finish([fast, slow], 17, now=0.06)[0] is slow


def test_a_free_server_of_unknown_speed_is_tried_and_a_busy_one_is_not_waited_for() -> None:
    new = _server("new", None)
    fast = _server("fast", 0.1, sent=(0.0,))
    assert earliest_finish([fast, new], 1, now=0.05) == (new, None)
    busy_new = _server("busy-new", None, sent=(0.0,))
    slow = _server("slow", 0.9)
    assert earliest_finish([busy_new, slow], 1, now=0.05) == (slow, None)


def test_a_request_long_overdue_is_not_waited_for() -> None:
    stuck = _server("stuck", 0.1, sent=(0.0,))  # due at 0.1; it is 1.0 now
    slow = _server("slow", 0.9)
    assert earliest_finish([stuck, slow], 1, now=1.0) == (slow, None)
    late = _server("late", 0.1, sent=(0.0,))  # a little late: expected within 0.025 s
    assert _wait(earliest_finish([late, slow], 1, now=0.15)) == pytest.approx(0.025)


def test_a_server_cooling_down_frees_when_its_cooldown_ends() -> None:
    cooling = _server("cooling", 0.1)
    cooling.cooldown_until = 0.3
    slow = _server("slow", 0.9)
    assert _wait(earliest_finish([cooling, slow], 1, now=0.0)) == pytest.approx(0.3)
    cooling.cooldown_until = 2.0
    assert earliest_finish([cooling, slow], 1, now=0.0) == (slow, None)


def _wait(choice: tuple[Server | None, float | None]) -> float | None:
    """How long the choice waits for a better server (it takes none now)."""
    assert choice[0] is None, f"took {choice[0]}"
    return choice[1]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _pool_with_fast_busy(
    backlog: int | None,
) -> tuple[ServerPool, asyncio.Task[str], asyncio.Event]:
    """A pool of a fast (0.1 s) and a slow (0.9 s) server, the fast one's slot taken."""
    clock = _Clock()
    pool = ServerPool("p", ["http://fast", "http://slow"], clock=clock)
    pool.servers[0].latency, pool.servers[1].latency = 0.1, 0.9
    pool.backlog = lambda: backlog
    release = asyncio.Event()
    first_on = asyncio.get_running_loop().create_future()

    async def hold(server: Server) -> str:
        first_on.set_result(server.url)
        await release.wait()
        return server.url

    holder = asyncio.create_task(pool.run(hold))
    assert await first_on == "http://fast"
    return pool, holder, release


@pytest.mark.anyio
async def test_at_the_end_a_task_waits_for_the_fast_server_instead_of_the_slow() -> None:
    pool, holder, release = await _pool_with_fast_busy(backlog=0)

    async def where(server: Server) -> str:
        return server.url

    second = asyncio.create_task(pool.run(where))
    await asyncio.sleep(0)  # it chose: to wait
    assert not second.done() and pool.servers[1].in_flight == 0
    release.set()  # the fast server frees: the waiting task goes there
    assert await second == "http://fast"
    assert pool.servers[1].requests == 0
    assert await holder == "http://fast"


@pytest.mark.anyio
async def test_while_work_is_queued_every_free_slot_is_filled() -> None:
    pool, holder, release = await _pool_with_fast_busy(backlog=None)

    async def where(server: Server) -> str:
        return server.url

    assert await pool.run(where) == "http://slow"
    release.set()
    assert await holder == "http://fast"


def _task(task_id: int, backend: str) -> ClaimedTask:
    return ClaimedTask(task_id, 1, task_id, f"k{task_id}", backend, "a fox", "", {}, {}, 0, 3)


def test_dispatch_counts_the_backlog_once_a_claim_comes_back_short() -> None:
    backend = PlaceholderBackend(BackendSettings(name="a", type="placeholder", concurrency=2))
    dispatch = Dispatch(Limits(4, {"a": backend}), {"a": backend})
    asked = dispatch.wants(lambda name: False)["a"]
    assert asked > 2
    dispatch.add([_task(1, "a"), _task(2, "a")], first=())  # fewer than asked: the end
    assert dispatch.backlog("a") == 2
    assert len(dispatch.take()) == 2 and dispatch.backlog("a") == 0
    dispatch.finished("a")
    dispatch.finished("a")
    asked = dispatch.wants(lambda name: False)["a"]
    dispatch.add([_task(i, "a") for i in range(10, 10 + asked)], first=())  # all: more may wait
    assert dispatch.backlog("a") is None


def test_a_fast_server_of_a_pool_gets_tasks_claimed_ahead_when_the_mean_is_long() -> None:
    # unequal servers: the mean task is long (no claim ahead for slow tasks), but the fast
    # server frees a slot every 0.1 s: about PREFETCH_SECONDS of its work waits ready, so
    # its next task needs no claim written while its slot stands idle
    settings = BackendSettings(
        name="a", type="sdwebui", urls=["http://fast", "http://mid", "http://slow"], concurrency=2
    )
    backend = _Pooled(settings)
    pool = backend.pool
    for server, latency in zip(pool.servers, (0.1, 0.3, 0.9), strict=True):
        server.latency = latency
    dispatch = Dispatch(Limits(6, {"a": backend}), {"a": backend})
    dispatch.observe("a", 0.5)
    assert PREFETCH_SECONDS < 0.3  # the mid and slow servers count for nothing
    assert dispatch.ready_target("a") == int(PREFETCH_SECONDS * 2 / 0.1)
    assert pool.rate_below(PREFETCH_SECONDS) == pytest.approx(20.0)
    pool.servers[0].state = CircuitState.OPEN  # the fast one down: none ahead
    assert dispatch.ready_target("a") == 0
    pool.servers[0].state = CircuitState.CLOSED
    pool.servers[0].latency = None  # its speed not known yet: none ahead either
    assert dispatch.ready_target("a") == 0


class _Pooled(PlaceholderBackend):
    """A backend on a server pool that sends nothing (only dispatch looks at it)."""

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self.pool = ServerPool.from_settings(settings, None)
