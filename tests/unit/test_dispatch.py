"""The scheduler's slots and ready queues (engine.dispatch), without a loop or a database."""

from __future__ import annotations

from pixelkiln.backends.placeholder import PlaceholderBackend
from pixelkiln.config import BackendSettings
from pixelkiln.engine.dispatch import (
    CLAIM_GATHER,
    CLAIM_GATHER_SHARE,
    CLAIM_LEAD,
    CLAIM_LEAD_SHARE,
    GATHER_LOOK,
    MAX_PREFETCH,
    PREFETCH_SECONDS,
    RECORD_GATHER,
    Dispatch,
)
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


def test_a_claim_waits_only_for_the_rest_of_its_round_of_slow_tasks() -> None:
    dispatch = _dispatch(8, slow=4, fast=4)
    dispatch.observe("slow", 1.0)
    dispatch.observe("fast", PREFETCH_SECONDS / 10)  # claimed ahead: never waits
    now = 100.0
    # started with the one that just ended (due 1 ms and 4 ms from now, or 2 ms ago), one
    # of a later round (due in 0.5 s), one long overdue: only the round counts
    round_ = [("slow", now - 0.999), ("slow", now - 0.996), ("slow", now - 1.002)]
    others = [("slow", now - 0.5), ("slow", now - 1.2), ("fast", now - 0.02)]
    assert dispatch.gather_until(round_ + others, now) == now - 0.996 + 1.0
    # only late ones left: a look again in a moment (their end wakes the scheduler)
    assert dispatch.gather_until([("slow", now - 1.002)], now) == now + GATHER_LOOK
    assert dispatch.gather_until(others, now) is None
    assert dispatch.gather_until([], now) is None
    # never longer than CLAIM_GATHER, nor CLAIM_GATHER_SHARE of a task
    assert dispatch.gather_until([("slow", now - 1.0 + CLAIM_GATHER * 2)], now) is None
    quick = _dispatch(2, a=2)
    quick.observe("a", 0.3)  # 3 % of it is 9 ms: a task due in 12 ms is not waited for
    assert CLAIM_GATHER_SHARE * 0.3 < 0.012 < CLAIM_GATHER
    assert quick.gather_until([("a", now - 0.288)], now) is None
    assert quick.gather_until([("a", now - 0.295)], now) is not None
    new = _dispatch(2, a=2)  # nothing measured yet: no wait
    assert new.gather_until([("a", now - 0.999)], now) is None


def test_slots_about_to_free_are_claimed_for_a_lead_before_their_tasks_end() -> None:
    dispatch = _dispatch(8, slow=4, fast=4)
    now = 1000.0
    # nothing measured yet: no slot is known to free soon
    assert dispatch.ending([("slow", now - 0.99)], now) == ({}, None)
    dispatch.observe("slow", 1.0)
    dispatch.observe("fast", PREFETCH_SECONDS / 10)  # claimed ahead anyway: never counted
    lead = min(CLAIM_LEAD, CLAIM_LEAD_SHARE * 1.0)
    running = [
        ("slow", now - 1.0 + lead / 2),  # due within the lead
        ("slow", now - 1.0 - lead / 2),  # a little late: still about to end
        ("slow", now - 1.0 + 1.5 * lead),  # the rest of its round: one claim serves it
        ("slow", now - 0.5),  # half way: its lead begins later
        ("fast", now - 0.01),
    ]
    ending, next_at = dispatch.ending(running, now)
    assert ending == {"slow": 3}
    assert next_at == now + 0.5 - lead
    # a task long past its due is not counted: nothing is claimed for a hung request
    assert dispatch.ending([("slow", now - 1.0 - 3 * lead)], now) == ({}, None)
    # the slots about to free are wanted as if free, but not once their tasks wait ready
    dispatch.generating["slow"] = 4
    assert dispatch.wants(_never, ending)["slow"] == 3
    dispatch.add(_tasks("slow", 1, 2, 3), first=())
    assert "slow" not in dispatch.wants(_never, ending)


def test_a_held_backend_starts_nothing_while_the_others_do() -> None:
    dispatch = _dispatch(4, a=2, b=2)
    dispatch.add(_tasks("a", 1, 2) + _tasks("b", 3, 4), first=())
    assert {t.backend for t in dispatch.take(hold={"a"})} == {"b"}
    assert [t.id for t in dispatch.take()] == [1, 2]


def test_outcomes_wait_for_the_rest_of_a_slow_round_only() -> None:
    dispatch = _dispatch(8, slow=4, fast=4)
    now = 1000.0
    # nothing else running: the last outcomes are written at once
    assert dispatch.outcomes_wait([], now, 0.0) == 0.0
    # tasks not measured yet, or fast ones: their outcomes stream in, RECORD_GATHER in all
    assert dispatch.outcomes_wait([("slow", now - 0.5)], now, 0.005) == RECORD_GATHER - 0.005
    dispatch.observe("slow", 1.0)
    dispatch.observe("fast", 0.01)
    assert dispatch.outcomes_wait([("fast", now)], now, 0.0) == RECORD_GATHER
    # the others of a slow round, due 3 ms from now: until then
    wait = dispatch.outcomes_wait([("slow", now - 0.997), ("slow", now - 0.998)], now, 0.0)
    assert abs(wait - 0.003) < 1e-9
    # the next round, a second away: written now; and never past RECORD_GATHER in all
    assert dispatch.outcomes_wait([("slow", now - 0.001)], now, 0.0) == 0.0
    assert dispatch.outcomes_wait([("slow", now - 0.997)], now, RECORD_GATHER) == 0.0


def test_a_backend_is_slow_once_measured_at_prefetch_seconds_or_more() -> None:
    dispatch = _dispatch(4, a=2, b=2)
    assert dispatch.slow == set()
    dispatch.observe("a", PREFETCH_SECONDS)
    dispatch.observe("b", PREFETCH_SECONDS / 2)
    assert dispatch.slow == {"a"}
    for _ in range(20):  # it got faster: its tasks are claimed ahead again
        dispatch.observe("a", 0.01)
    assert dispatch.slow == set()
