"""Live progress of running batches in the terminal, driven by the event bus.

Every event is also written to the run's log file, so the log is a full
record of what happened even when the terminal only showed a bar.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pixelkiln.engine.bus import Subscription
from pixelkiln.engine.scheduler import Scheduler
from pixelkiln.models import Batch, Event, EventType

events_log = logging.getLogger("pixelkiln.events")


def log_event(event: Event) -> None:
    """One line per event in the log file."""
    d = event.data
    if event.type == EventType.PROGRESS:
        events_log.info(
            "batch %s [%s/%s] %s: %s",
            event.batch_id,
            d.get("current"),
            d.get("total"),
            d.get("item_key"),
            d.get("message"),
        )
    elif event.type == EventType.ERROR:
        events_log.error(
            "batch %s task %s failed: %s", event.batch_id, d.get("item_key"), d.get("error")
        )
    elif event.type == EventType.WARNING:
        events_log.warning(
            "batch %s %s: %s %s",
            event.batch_id,
            d.get("item_key", ""),
            d.get("message", ""),
            d.get("error", ""),
        )
    elif event.type == EventType.IMAGE_GENERATED:
        events_log.debug(
            "batch %s task %s image %s",
            event.batch_id,
            d.get("item_key"),
            d.get("image", {}).get("path"),
        )
    else:
        events_log.info("batch %s %s %s", event.batch_id, event.type, _fields(d))


def _fields(data: dict[str, Any]) -> str:
    """``status=running retried=2``: values as text (an enum's value, never its repr)."""
    return " ".join(f"{name}={_text(value)}" for name, value in data.items())


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + _fields(value) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)  # a StrEnum's str() is its value


class BatchProgress:
    """A progress bar per batch: done/total, failed, images/s, ETA, and backend status."""

    def __init__(self, console: Console, batches: Sequence[Batch], enabled: bool = True) -> None:
        self._started = time.monotonic()
        self._images = 0
        self._failed = {b.id: b.counts.failed for b in batches}
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("[yellow]{task.fields[note]}"),
            console=console,
            disable=not enabled,
        )
        self._bars: dict[int, TaskID] = {
            b.id: self._progress.add_task(
                f"#{b.id} {b.name}"[:40],
                total=b.counts.total,
                completed=b.counts.done,
                failed=b.counts.failed,
                rate="0.0",
                note="",
            )
            for b in batches
        }

    async def follow(
        self, subscription: Subscription, runner: asyncio.Task[None], scheduler: Scheduler
    ) -> None:
        """Update bars from events until ``runner`` (the scheduler) ends."""
        with self._progress:
            while not runner.done():
                event = await subscription.get(timeout=0.25)
                for e in ([event] if event else []) + subscription.drain():
                    self._apply(e)
                self._note(scheduler)
            for e in subscription.drain():
                self._apply(e)

    def _apply(self, event: Event) -> None:
        log_event(event)
        bar = self._bars.get(event.batch_id)
        if bar is None:
            return
        if event.type == EventType.IMAGE_GENERATED:
            self._images += 1
        elif event.type == EventType.PROGRESS:
            self._progress.update(bar, completed=event.data.get("current", 0))
        elif event.type == EventType.ERROR:
            self._failed[event.batch_id] += 1
        rate = self._images / max(1e-6, time.monotonic() - self._started)
        self._progress.update(bar, failed=self._failed[event.batch_id], rate=f"{rate:.1f}")

    def _note(self, scheduler: Scheduler) -> None:
        down = scheduler.status().backends_down
        note = f"waiting: backend {', '.join(down)} down" if down else ""
        for bar in self._bars.values():
            self._progress.update(bar, note=note)
