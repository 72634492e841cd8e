"""The parts a long-running server runs beside its scheduler, besides the webhook deliverer.

``kiln serve`` (and ``kiln worker``) run them; ``kiln run`` does not: a one-off run
should not start tonight's schedule or delete last month's batches. Each is a
:class:`~pixelkiln.engine.supervisor.Companion`: started with the scheduler, started
again should it die, given a bounded last chance to finish when the scheduler stops.

- the schedule runner (:mod:`pixelkiln.engine.schedules`): starts what a cron schedule
  says, once per slot across every process on the database;
- the run driver (:mod:`pixelkiln.service.runs`): drives runs (a nightly project run)
  that no live process holds;
- the retention sweeper (:mod:`pixelkiln.engine.retention`, rules in
  :mod:`pixelkiln.service.retention`): deletes what ``[retention]`` says is old, at
  start-up and every ``interval_hours``.
"""

from __future__ import annotations

from pixelkiln.engine.retention import Sweeper
from pixelkiln.engine.schedules import ScheduleRunner
from pixelkiln.engine.supervisor import Companion
from pixelkiln.service.context import ServiceContext
from pixelkiln.service.runs import RunKeeper


def server_companions(ctx: ServiceContext) -> list[Companion]:
    """The companions of a server's scheduler over ``ctx`` (its installation)."""
    found: list[Companion] = [RunKeeper(ctx), Sweeper(ctx)]
    if ctx.settings.schedules.enabled:
        found.append(ScheduleRunner(ctx))
    return found
