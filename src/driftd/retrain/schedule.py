"""Scheduled retrains: one APScheduler trigger, asked for fire times on either clock.

:func:`make_trigger` builds the trigger of ``[retrain] interval_seconds`` or ``cron``. The
daemon hands it to APScheduler's ``AsyncIOScheduler`` on the real clock; replay asks the same
trigger for its fire times on the simulated clock through :class:`Schedule`, which coalesces
missed fire times the way the daemon's job does (``coalesce=True``: several make one request).

>>> from driftd.retrain.config import RetrainConfig
>>> schedule = Schedule(make_trigger(RetrainConfig(interval_seconds=60), now=0.0), start=0.0)
>>> [schedule.due(t) for t in (30.0, 60.0, 90.0, 250.0, 260.0)]
[False, True, False, True, False]
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from driftd.retrain.config import RetrainConfig

__all__ = ["Schedule", "make_trigger"]


def make_trigger(
    config: RetrainConfig, *, now: float, timezone: tzinfo | None = None
) -> BaseTrigger | None:
    """The trigger of the configured schedule, first firing an interval after ``now`` (as
    APScheduler starts an interval job); None when no schedule is configured. ``timezone`` is
    the cron expression's (None: the host's local time)."""
    if config.interval_seconds is not None:
        first = datetime.fromtimestamp(now + config.interval_seconds, UTC)
        return IntervalTrigger(seconds=config.interval_seconds, start_date=first, timezone=UTC)
    if config.cron is not None:
        return CronTrigger.from_crontab(config.cron, timezone=timezone)
    return None


class Schedule:
    """Fire times of ``trigger`` on a clock the caller advances (``None``: never fires)."""

    def __init__(self, trigger: BaseTrigger | None, *, start: float) -> None:
        self.trigger = trigger
        self.next = self._after(None, start)

    def _after(self, previous: float | None, now: float) -> float | None:
        if self.trigger is None:
            return None
        prev = None if previous is None else datetime.fromtimestamp(previous, UTC)
        fire: Any = self.trigger.get_next_fire_time(prev, datetime.fromtimestamp(now, UTC))
        return None if fire is None else float(fire.timestamp())

    def due(self, now: float) -> bool:
        """Whether a fire time has passed by ``now``; the ones missed since count as one."""
        if self.next is None or now < self.next:
            return False
        while self.next is not None and self.next <= now:
            self.next = self._after(self.next, now)
        return True
