"""The scheduler's slots and ready queues (engine.dispatch), without a loop or a database."""

from __future__ import annotations

from pixelkiln.backends.placeholder import PlaceholderBackend
from pixelkiln.config import BackendSettings
from pixelkiln.engine.dispatch import MAX_PREFETCH, PREFETCH_SECONDS, Dispatch
from pixelkiln.engine.limits import Limits
from pixelkiln.models import ClaimedTask


def _dispatch(overall: int, **concurrency: int) -> Dispatch:
    backends = {
        name: PlaceholderBackend(BackendSettings(name=name, type="placeholder", concurrency=n))
        for name, n in concurrency.items()
    }
    return Dispatch(Limits(overall, backends), backends)


def _tasks(backend: str, *ids: int) -> list[ClaimedTask]:
    return [ClaimedTask(i, 1, i, f"k{i}", backend, "a fox", "", {}, {}, 0, 3) for i in ids]


def _never(name: str) -> bool:
    return False


def test_take_stays_within_each_backends_slots_and_the_global_cap() -> None:
    dispatch = _dispatch(3, a=2, b=2)
    dispatch.add(_tasks("a", 1, 2, 3) + _tasks("b", 4, 5, 6), first=())
    taken = dispatch.take()
    assert len(taken) == 3
    assert dispatch.generating["a"] <= 2 and dispatch.generating["b"] <= 2
    assert {t.backend for t in taken} == {"a", "b"}  # turns between backends
    assert dispatch.free() == 0 and dispatch.take() == []
    dispatch.finished(taken[0].backend)
    assert dispatch.free() == 1 and len(dispatch.take()) == 1


def test_paced_tasks_go_ahead_of_those_claimed_before() -> None:
    dispatch = _dispatch(1, a=1)
    dispatch.add(_tasks("a", 1, 2), first=())
    dispatch.add(_tasks("a", 3), first={3})
    assert [t.id for t in dispatch.take()] == [3]
    assert dispatch.ready_ids() == [1, 2]


def test_wants_refill_to_the_target_and_skip_held_back_backends() -> None:
    dispatch = _dispatch(4, a=2, b=2)
    assert dispatch.wants(_never) == {"a": 4, "b": 4}  # free slots + a slot's worth ahead
    assert dispatch.wants(lambda name: name == "b") == {"a": 4}
    dispatch.add(_tasks("a", 1), first=())
    assert dispatch.wants(_never)["a"] == 3  # half of its target or less: refill
    dispatch.add(_tasks("a", 2), first=())
    assert "a" not in dispatch.wants(_never)  # enough ahead for its free slots


def test_fast_backends_are_claimed_ahead_within_bounds() -> None:
    dispatch = _dispatch(4, a=2, b=2)
    dispatch.observe("a", 0.001)
    dispatch.observe("b", PREFETCH_SECONDS / 4)
    assert dispatch.ready_target("a") == MAX_PREFETCH
    assert dispatch.ready_target("b") == 8  # 2 slots x 4 tasks in PREFETCH_SECONDS
    assert dispatch.wants(_never) == {"a": 2 + MAX_PREFETCH, "b": 2 + 8}
    dispatch.add(_tasks("b", *range(1, 6)), first=())
    assert "b" not in dispatch.wants(_never)  # more than half its target still ready
    assert len(dispatch.take()) == 2  # b's two slots busy, 3 left ready
    assert dispatch.wants(_never)["b"] == 8 - 3  # half of the target or less: refilled


def test_slow_tasks_are_not_claimed_ahead() -> None:
    # tasks of a second: a held one would make a batch shared by several runners end a
    # task later than it could, while a claim when a slot frees costs milliseconds
    dispatch = _dispatch(8, a=4)
    dispatch.observe("a", 1.0)
    assert dispatch.ready_target("a") == 0
    assert dispatch.wants(_never) == {"a": 4}
    dispatch.add(_tasks("a", 1, 2, 3, 4), first=())
    assert len(dispatch.take()) == 4 and dispatch.wants(_never) == {}
    dispatch.finished("a")  # a task ended: its slot, and only it, is claimed again
    assert dispatch.wants(_never) == {"a": 1}
    dispatch.observe("a", PREFETCH_SECONDS)  # the threshold itself: still none ahead
    assert dispatch.ready_target("a") == 0


def test_drop_forgets_ready_tasks_by_condition() -> None:
    dispatch = _dispatch(1, a=1, b=1)
    dispatch.add(_tasks("a", 1, 2) + _tasks("b", 3), first=())
    assert dispatch.drop(lambda t: t.id != 2) == 2
    assert dispatch.ready_ids() == [2] and dispatch.has_ready()
