"""Several daemons of one model on a shared store: one leader, the others standbys.

The leader holds the namespace's advisory lock in PostgreSQL
(:class:`~driftd.store.postgres.Leadership`) and runs what must run once per model: the monitor
(reading back what every daemon stored, :meth:`~driftd.service.engine.Engine.follow`), the
retrain policy, training, the schedule, retention and the monitor's checkpoint. A standby
serves ``/v1/predict`` from the shared registry and stores what it is sent, which the leader
then monitors. It hears of each new champion the moment its alias move commits (PostgreSQL's
LISTEN/NOTIFY, on the lock's connection) and loads it at once, so that it serves it well within
a second of the deploy; a notice lost with a connection is made up for by looking anyway every
:data:`INTERVAL` seconds. As often, a standby tries the lock: when the leader's connection ends
(its process killed, its host gone), the lock is free, and the first standby to take it
restores the monitor from the shared checkpoint, catches up, and leads.

A leader that finds its lock connection gone cannot know whether a standby leads already, so
it stands by at once: it stops following the store, starting fits, checkpointing and
trimming, and a fit that was running cannot deploy or roll back (the lifecycle asks the role).
It then tries the lock like any standby, and leads again, restored from the shared state,
if it gets it: a lone leader whose database restarted leads again once the database is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from driftd.store.postgres import Leadership

__all__ = ["INTERVAL", "Cluster", "Role"]

log = logging.getLogger(__name__)

#: How often a standby tries the lock (and looks for a champion it was not told of), and a
#: leader checks it.
INTERVAL = 0.5


class Role:
    """Whether this daemon leads (thread-safe to read). A daemon alone on its store leads."""

    def __init__(self, *, leading: bool, shared: bool) -> None:
        self._leading = leading
        self.shared = shared
        self.since: float | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    def lead(self, now: float) -> None:
        self._leading, self.since = True, now

    def stand_by(self) -> None:
        self._leading, self.since = False, None

    def status(self) -> dict[str, Any]:
        if not self.shared:
            return {"role": "alone"}
        return {"role": "leader" if self._leading else "standby", "leading_since": self.since}


class Cluster:
    """The thread that keeps ``role`` true: a standby tries ``lock`` and takes over; a leader
    checks it still holds it."""

    def __init__(
        self,
        lock: Leadership,
        role: Role,
        *,
        take_over: Callable[[], None],
        refresh: Callable[[], object],
        on_lost: Callable[[], None],
        clock: Callable[[], float],
        interval: float = INTERVAL,
    ) -> None:
        self.lock = lock
        self.role = role
        self.take_over = take_over
        self.refresh = refresh
        self.on_lost = on_lost
        self.clock = clock
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="driftd-cluster", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread. The lock itself is released last, with the store
        (:meth:`Parts.close`), after training and the checkpoint are done: a standby must not
        lead while this daemon still writes what only the leader writes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def run(self) -> None:
        """Round after round until :meth:`close`. Nothing that fails in a round ends the
        thread (a daemon whose thread died would never lead again): it is logged and the
        round is tried again after an interval."""
        while not self._pause():
            try:
                self.step()
            except Exception:  # a failed refresh or takeover is retried at the next interval
                log.exception("cluster step failed; retrying")

    def _pause(self) -> bool:
        """Wait for the next round; True to stop. A standby's round comes early when the
        champion moves, so that its load starts at once rather than at the next interval."""
        try:
            if not self.role.leading and self.lock.wait_for_move(self.interval) is not None:
                return self._stop.is_set()
        except Exception:
            log.exception("waiting for a champion move failed; polling instead")
        return self._stop.wait(self.interval)

    def step(self) -> None:
        """One round: check the lock (leader), or try it and take over, else refresh."""
        if self.role.leading:
            if not self.lock.check():
                log.error("lost the leader lock (its database connection ended); standing by")
                self.role.stand_by()
                self.on_lost()
            return
        if self.lock.try_acquire():
            log.info("took the leader lock; taking over")
            self.take_over()
            self.role.lead(self.clock())
            log.info("leading")
            return
        self.refresh()
