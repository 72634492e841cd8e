"""The scheduler's supervision and limits on their own, with a clock the test moves."""

from __future__ import annotations

import pytest

from pixelkiln.engine.limits import BACKEND, GLOBAL, SERVERS_DOWN, BackendLimit
from pixelkiln.engine.supervisor import BACKOFF_MAX, Supervision
from pixelkiln.exceptions import SchedulerStalledError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_back_off_then_stall_and_recover() -> None:
    clock = Clock()
    supervision = Supervision(stall_seconds=30, clock=clock)
    assert supervision.report().state == "starting"
    supervision.beat()
    delays = [supervision.failed("recording", OSError("database or disk is full"))]
    for _ in range(8):
        clock.now += 5
        delays.append(supervision.failed("recording", OSError("database or disk is full")))
        supervision.beat()  # the loop itself goes on: only the recording fails
    assert delays == sorted(delays) and delays[-1] == BACKOFF_MAX
    report = supervision.report()
    assert (report.state, report.failing) == ("retrying", ("recording",))
    assert "database or disk is full" in report.last_error
    assert report.stalled(30) and report.stalled_seconds == 40
    with pytest.raises(SchedulerStalledError, match="could not go on for 40 s: recording"):
        supervision.raise_if_stalled()
    supervision.ok("recording")
    assert supervision.report().state == "running" and not supervision.report().stalled(30)


def test_a_loop_that_stops_beating_is_stalled() -> None:
    clock = Clock()
    supervision = Supervision(stall_seconds=10, clock=clock)
    supervision.beat()
    clock.now += 11
    assert supervision.report().stalled(10)
    supervision.stopped()
    assert supervision.report().state == "stopped" and not supervision.report().stalled(10)


@pytest.mark.parametrize(
    ("limit", "overall", "expected"),
    [
        (BackendLimit(per_url=1, configured=1, servers=2), 10, (2, BACKEND)),
        (BackendLimit(per_url=4, configured=1, servers=2), 3, (3, GLOBAL)),
        (BackendLimit(per_url=4, configured=1, servers=2, servers_up=1), 10, (4, SERVERS_DOWN)),
        (BackendLimit(per_url=4, configured=1, servers=2, servers_up=0), 10, (0, SERVERS_DOWN)),
    ],
)
def test_what_binds_a_backend(limit: BackendLimit, overall: int, expected: tuple[int, str]) -> None:
    assert limit.effective(overall) == expected
