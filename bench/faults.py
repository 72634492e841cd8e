"""Faults: the latency-hiding run with 20% of requests failing and a server down for a third.

    python -m bench.faults [--tasks 480] [--fail-rate 0.2] [--timeout 0.6] [--attempts 5]

Two fake WebUIs (200 ms, 8 slots each) behind the real engine. First a
healthy run; then, in the same process, the same batch while each server
fails ``--fail-rate`` of its generation requests — equal parts HTTP 500,
hangs (which the backend's ``--timeout`` turns into timeouts) and connection
resets — and server 0 goes down (connections refused, in-flight ones reset)
for the middle third of the healthy run's duration.

Checks: every task ends succeeded, no task has images twice, and faulty
throughput ≥ 0.75 of the healthy one. Retries use the engine's exponential
backoff; ``--attempts`` is ``max_attempts`` (with 20% of requests failing and
one server gone, 3 attempts would leave ~0.8% of that third's tasks failed).

The fakes fail *after* doing the work (as a GPU that runs out of memory or a
process that crashes mid-way), and a hang costs the whole timeout, so faults
cost capacity no scheduler can win back. The bound printed last is the
shortest possible faulty run given the requests the servers actually saw:
(Σ slot-seconds of their work + the down server's slots × outage) / slots.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.latency_hiding import RunResult, bench_settings, quiet_logs, run_batch
from pixelkiln.testing import FakeFleet


def faulty(rate: float) -> dict[str, Any]:
    """Faults failing ``rate`` of requests: a third each 500, hang, reset."""
    return {"error_rates": {500: rate / 3}, "hang_rate": rate / 3, "reset_rate": rate / 3}


async def measure(
    args: argparse.Namespace,
) -> tuple[RunResult, RunResult, Counter[str], float]:
    servers = [("sdwebui", {"latency": args.latency}) for _ in range(2)]
    overrides: dict[str, Any] = {
        "timeout": args.timeout,
        "scheduler": {
            "max_attempts": args.attempts,
            "retry_base_delay": args.backoff,
            "retry_max_delay": 10 * args.backoff,
        },
    }
    with FakeFleet(servers) as fleet:
        with tempfile.TemporaryDirectory() as folder:
            settings = bench_settings(
                Path(folder) / "healthy", fleet.urls, args.slots, **dict(overrides)
            )
            healthy = await run_batch(settings, args.tasks)
        for k in range(2):
            fleet.set_faults(k, **faulty(args.fail_rate), hang_seconds=10 * args.timeout)
        before = _outcomes(fleet)
        third = healthy.seconds / 3

        async def outage() -> None:
            await asyncio.sleep(third)
            await asyncio.to_thread(fleet.down, 0)
            await asyncio.sleep(third)
            await asyncio.to_thread(fleet.up, 0)

        with tempfile.TemporaryDirectory() as folder:
            settings = bench_settings(
                Path(folder) / "faulty", fleet.urls, args.slots, **dict(overrides)
            )
            faults = await run_batch(settings, args.tasks, during=outage)
        outcomes = _outcomes(fleet)
        outcomes.subtract(before)
    return healthy, faults, outcomes, third


def _outcomes(fleet: FakeFleet) -> Counter[str]:
    total = Counter[str]()
    for k in range(2):
        total.update(fleet.outcomes(k))
    return total


def bound(outcomes: Counter[str], args: argparse.Namespace, outage: float) -> float:
    """Shortest possible faulty run: the servers' work plus the outage, spread on every slot."""
    work = sum(
        n * (args.timeout if outcome == "hang" else args.latency) for outcome, n in outcomes.items()
    )
    return (work + outage * args.slots) / (2 * args.slots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=480)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--slots", type=int, default=8, help="slots per server")
    parser.add_argument("--fail-rate", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=0.6, help="backend request timeout")
    parser.add_argument("--attempts", type=int, default=5, help="scheduler max_attempts")
    parser.add_argument("--backoff", type=float, default=0.2, help="first retry delay, s")
    args = parser.parse_args()
    quiet_logs()
    healthy, faults, total, outage = asyncio.run(measure(args))
    failed = sum(n for outcome, n in total.items() if outcome != "ok")
    best = bound(total, args, outage)
    print(
        f"faults: {args.tasks} tasks, 2 fake WebUIs x {args.slots} slots, "
        f"{args.latency * 1000:.0f} ms; {args.fail_rate:.0%} of requests failing "
        f"(500 / hang→{args.timeout:g}s timeout / reset); server 0 down for the middle third"
    )
    print(f"healthy run:  {healthy.seconds:6.2f} s   {healthy.throughput:6.1f} tasks/s")
    print(f"faulty run:   {faults.seconds:6.2f} s   {faults.throughput:6.1f} tasks/s")
    print(
        f"ratio:        {faults.throughput / healthy.throughput:6.3f}   "
        "(faulty / healthy throughput; target >= 0.75)"
    )
    print(
        f"succeeded:    {faults.succeeded}/{faults.tasks}   images {faults.images}   "
        f"tasks with images twice: {faults.tasks_with_two_or_more_images}"
    )
    print(
        f"attempts:     {faults.attempts} for {faults.tasks} tasks (max_attempts {args.attempts})"
    )
    print(
        f"requests:     {sum(total.values())} at the servers, {failed} failed there "
        f"({dict(total)}; refused connections while down are not counted)"
    )
    ok = faults.succeeded == faults.tasks and faults.tasks_with_two_or_more_images == 0
    print(f"every task succeeded exactly once: {'yes' if ok else 'NO'}")
    print(
        f"bound:        {best:6.2f} s   best possible ratio {healthy.seconds / best:.3f}; "
        f"pixelkiln reached {best / faults.seconds:.3f} of it"
    )
    ideal = args.tasks * args.latency / (2 * args.slots)
    print(
        f"(the healthy run reached {ideal / healthy.seconds:.3f} of its ideal {ideal:.2f} s: "
        "the same per-request cost shows in both)"
    )


if __name__ == "__main__":
    main()
