"""A batch's own limits (db.pacing) and the scheduler's timer for them (engine.limits)."""

from __future__ import annotations

from pixelkiln.db.pacing import BatchLimits, wake_at
from pixelkiln.engine.limits import TIMER_SLACK, idle_timeout


def _limits(
    max_workers: int | None = None,
    running: int = 0,
    delay: float | None = None,
    last: float | None = None,
    batch_id: int = 1,
) -> BatchLimits:
    return BatchLimits(batch_id, max_workers, running, delay, last)


def test_allowance_is_the_room_under_the_cap_and_one_per_due_delay() -> None:
    assert _limits().allowance(100.0) is None
    assert not _limits(delay=0.0).limited
    assert _limits(max_workers=3, running=1).allowance(100.0) == 2
    assert _limits(max_workers=3, running=5).allowance(100.0) == 0
    assert _limits(delay=10.0).allowance(100.0) == 1  # never started: due
    assert _limits(delay=10.0, last=95.0).allowance(100.0) == 0
    assert _limits(delay=10.0, last=90.0).allowance(100.0) == 1
    assert _limits(max_workers=2, running=2, delay=10.0, last=0.0).allowance(100.0) == 0


def test_wake_at_is_the_earliest_paced_batch_still_waiting() -> None:
    batches = [
        _limits(delay=10.0, last=95.0, batch_id=1),  # due at 105
        _limits(delay=30.0, last=50.0, batch_id=2),  # due already: no timer
        _limits(max_workers=1, batch_id=3),
        _limits(delay=3.0, batch_id=4),  # never started
    ]
    assert wake_at(batches, 100.0, ()) == 105.0
    assert wake_at(batches, 100.0, {4}) == 103.0  # just claimed: waits from now
    assert wake_at(batches[1:3], 100.0, ()) is None


def test_idle_timeout_waits_for_a_paced_batch_but_never_for_a_past_one() -> None:
    assert idle_timeout(0.5, None, 10.0) == 0.5
    assert idle_timeout(0.5, 10.25, 10.0) == 0.25 + TIMER_SLACK
    assert idle_timeout(0.5, 30.0, 10.0) == 0.5
    assert idle_timeout(0.5, 9.0, 10.0) == 0.5  # stale: a wait of 0 would spin
