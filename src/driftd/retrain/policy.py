"""The retrain trigger policy: turning drift alarms, schedule ticks and operator requests into at
most one running and one waiting retrain.

Pure, with time and counts passed in (the APScheduler way: nothing here reads the clock or the
store), so that tests use a fake clock and replay runs at full speed. The state round-trips
through :meth:`RetrainPolicy.to_dict` so that a restart keeps the cooldown and cannot set off a
burst.

The policy counts in labelled rows, not seconds: a wait in seconds means 240,000 records at
2,000 records/s and 1,200 at 10, while a retrain can only differ from the last one by the labels
that came since. The caller passes ``since_attempt``, the labelled rows after the record the last
attempt started at (:attr:`RetrainPolicy.attempt_position`).

Rules, in order, for a request:

* single flight: one job runs, at most one waits; a request while one waits is merged into it
  (its reason recorded);
* cooldown after every attempt but a challenger's: ``cooldown_labels`` labelled rows (and,
  when set, the wall-clock floor ``cooldown_seconds``), doubled after each consecutive
  counted rejection up to ``backoff_max_labels`` (``backoff_max_seconds``); a rejection the
  gate calls a tie is not counted, since a candidate as good as the champion says nothing
  against the next one; operator requests are exempt;
* at least ``min_new_labels`` labelled rows since the last training; operator requests are exempt.

A job that a shutdown cancels goes back to the head of the queue (merged with one that waits),
its attempt not counted, so that the state persisted at the stop makes the next start run it.

Drift opens a *regime* at the alarm's change point: the first retrain waits until
``min_rows_after_drift`` labelled rows exist after it, and retrains follow whenever that count
doubles since the last one, until it reaches ``window_rows`` (or half of it, where the next
doubling would pass it: the challengers take over from there). These growth retrains skip the
cooldown (there are at most log2(window / min_rows) of them, and a model trained on a few
hundred rows should be replaced as soon as twice as many exist), but not the backoff that
follows a rejection. A regime is closed only by a deploy of its own retrain: a scheduled or
operator deploy in between leaves it open. A regime whose retrain is due but must wait is
*deferred*: :meth:`RetrainPolicy.drift_due` says why, once per regime and reason, so that the
wait is in the audit log; the retrain is asked for as soon as it may start.

Between regimes a *challenger* is fitted on the recent window every ``challenger_labels``
labelled rows newer than the last training (default: a quarter of ``window_rows``; 0: never),
and the gate deploys it only if it does at least as well as the champion on the same most
recent holdout. A drift the detectors miss (a slow one) is then retrained on a schedule in
labels, so that driftd does no worse than periodic retraining.

>>> from driftd.retrain.policy import RetrainPolicy, PolicyConfig
>>> p = RetrainPolicy(PolicyConfig(cooldown_labels=500, min_new_labels=100))
>>> p.request("schedule", now=0.0, new_labels=500, since_attempt=0).outcome
'queued'
>>> job = p.start(now=1.0, since_attempt=0, position=1000); job.reasons
['schedule']
>>> p.request("schedule", now=2.0, new_labels=500, since_attempt=499)
Decision(outcome='skipped', job_id=None, reason='cooldown')
>>> p.request("operator", now=3.0, new_labels=0, since_attempt=0, operator=True).outcome
'queued'
>>> p.request("drift", now=4.0, new_labels=0, since_attempt=0).outcome
'merged'
>>> p.finish(job, "deployed", now=10.0, trained_until=900)
>>> p.start(now=11.0, since_attempt=10, position=1010).reasons  # an operator's job is exempt
['operator', 'drift']
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Decision", "DriftDue", "DriftRegime", "Job", "PolicyConfig", "RetrainPolicy"]

Outcome = Literal["deployed", "rejected", "failed", "timeout", "skipped", "cancelled"]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    cooldown_labels: int = field(default=1000, metadata={"min": 0})
    cooldown_seconds: float = field(default=0.0, metadata={"min": 0})
    backoff_max_labels: int = field(default=20_000, metadata={"min": 0})
    backoff_max_seconds: float = field(default=3600.0, metadata={"min": 0})
    min_new_labels: int = field(default=200, metadata={"min": 0})
    min_rows_after_drift: int = field(default=200, metadata={"min": 10})
    window_rows: int = field(default=20_000, metadata={"min": 10})
    challenger_labels: int | None = field(default=None, metadata={"min": 0})


@dataclass(slots=True)
class Job:
    id: str
    reasons: list[str]
    requested: float
    started: float | None = None
    drift_point: int | None = None
    prior_attempt: float | None = None
    prior_position: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Literal["queued", "merged", "skipped"]
    job_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DriftDue:
    """What an open drift regime asks for now: a retrain (``reason``), or nothing; ``deferred``
    is why a due retrain waits, set the first time the regime waits for that reason."""

    reason: str | None = None
    deferred: str | None = None


NOT_DUE = DriftDue()


@dataclass(slots=True)
class DriftRegime:
    point: int
    opened: float
    trained_rows: int = 0
    deferred: str | None = None  # the last wait reported, so that each is reported once


class RetrainPolicy:
    """Single-flight retrain policy with cooldown, backoff and drift regimes."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.running: Job | None = None
        self.pending: Job | None = None
        self.last_attempt: float | None = None
        self.attempt_position = 0  # the last record stored when the last attempt started
        self.consecutive_rejections = 0
        self.trained_until = 0
        self.regime: DriftRegime | None = None
        self._ids = itertools.count(1)

    # -- the cooldown ----------------------------------------------------------------------
    def _factor(self) -> int:
        return int(2 ** min(self.consecutive_rejections, 30))

    def cooldown_until(self) -> float:
        """When the wall-clock floor of the cooldown ends (-inf before the first attempt)."""
        if self.last_attempt is None:
            return float("-inf")
        cfg = self.config
        wait = min(
            cfg.cooldown_seconds * self._factor(),
            max(cfg.backoff_max_seconds, cfg.cooldown_seconds),
        )
        return float(self.last_attempt + wait)

    def cooldown_labels(self) -> int:
        """Labelled rows after :attr:`attempt_position` the next attempt waits for."""
        if self.last_attempt is None:
            return 0
        cfg = self.config
        return min(
            cfg.cooldown_labels * self._factor(), max(cfg.backoff_max_labels, cfg.cooldown_labels)
        )

    def waiting(self, now: float, since_attempt: int) -> str | None:
        """Why a non-exempt attempt may not start now (``cooldown``, ``backoff``), or None."""
        if since_attempt >= self.cooldown_labels() and now >= self.cooldown_until():
            return None
        return "backoff" if self.consecutive_rejections else "cooldown"

    def _exempt(self, reasons: list[str]) -> bool:
        """Operators skip the cooldown; so do growth retrains, unless a rejection backs off."""
        return "operator" in reasons or (
            reasons == ["drift_growth"] and self.consecutive_rejections == 0
        )

    # -- requests --------------------------------------------------------------------------
    def request(
        self,
        reason: str,
        *,
        now: float,
        new_labels: int,
        since_attempt: int,
        operator: bool = False,
        drift_point: int | None = None,
    ) -> Decision:
        """Ask for a retrain; ``new_labels`` is the labelled rows since the last training."""
        if self.pending is not None:
            if reason not in self.pending.reasons:
                self.pending.reasons.append(reason)
            if drift_point is not None:
                self.pending.drift_point = drift_point
            return Decision("merged", self.pending.id)
        if not operator:
            why = None if self._exempt([reason]) else self.waiting(now, since_attempt)
            if why is not None:
                return Decision("skipped", reason=why)
            if new_labels < self.config.min_new_labels:
                return Decision("skipped", reason="too_few_new_labels")
        self.pending = Job(f"job-{self._next_id()}", [reason], now, drift_point=drift_point)
        return Decision("queued", self.pending.id)

    def start(self, now: float, *, since_attempt: int, position: int) -> Job | None:
        """The waiting job, if it may start now (nothing running, cooldown over or exempt);
        ``position`` is the last record stored, where the next cooldown counts from."""
        job = self.pending
        if job is None or self.running is not None:
            return None
        if not self._exempt(job.reasons) and self.waiting(now, since_attempt) is not None:
            return None
        self.pending, self.running = None, job
        job.started = now
        job.prior_attempt, self.last_attempt = self.last_attempt, now
        job.prior_position, self.attempt_position = self.attempt_position, position
        return job

    def finish(
        self,
        job: Job,
        outcome: Outcome,
        *,
        now: float,
        trained_until: int | None = None,
        trained_rows: int = 0,
        back_off: bool = True,
    ) -> None:
        """Record how a job ended; the cooldown runs from its start. A rejection with
        ``back_off`` False says nothing against retraining (a tie, or a challenger nobody asked
        for that did not beat the champion) and is not counted."""
        if self.running is not None and self.running.id == job.id:
            self.running = None
        if outcome == "rejected" and back_off:
            self.consecutive_rejections += 1
        elif outcome == "deployed":
            self.consecutive_rejections = 0
        if outcome in ("skipped", "cancelled") or job.reasons == ["challenger"]:
            # Nothing was trained, or only a challenger nobody asked for: this job does not
            # start a cooldown (a drift just after a challenger waited 1,000 labels for it).
            self.last_attempt, self.attempt_position = job.prior_attempt, job.prior_position
        if outcome == "cancelled":
            self._requeue(job)
        if trained_until is not None and outcome in ("deployed", "rejected"):
            self.trained_until = max(self.trained_until, trained_until)
        # A deploy of the regime's own retrain moves its growth on; so does a rejection that
        # says nothing against retraining (a tie, a holdout too small to judge on): the next
        # try waits for twice the rows instead of a cooldown and a backoff.
        if (
            self.regime is not None
            and job.drift_point == self.regime.point
            and (outcome == "deployed" or (outcome == "rejected" and not back_off))
        ):
            self.regime.trained_rows = max(self.regime.trained_rows, trained_rows)
            self.regime.deferred = None
            # Full, or as full as doubling gets it: a regime left open waiting for rows past
            # the window would hold the challengers back.
            if 2 * self.regime.trained_rows > self.config.window_rows:
                self.regime = None

    def _requeue(self, job: Job) -> None:
        """Put a job cut short by a shutdown back in front, with the reasons and the newer drift
        point of a request that came meanwhile."""
        waiting, self.pending = self.pending, job
        job.started = None
        if waiting is not None:
            job.reasons.extend(r for r in waiting.reasons if r not in job.reasons)
            if waiting.drift_point is not None:
                job.drift_point = waiting.drift_point

    # -- drift regimes ---------------------------------------------------------------------
    def on_drift(self, change_point: int, now: float) -> None:
        """A drift alarm: train on data since ``change_point`` from now on."""
        self.regime = DriftRegime(change_point, now)

    def drift_due(
        self, labelled_since_point: int, *, now: float, new_labels: int, since_attempt: int
    ) -> DriftDue:
        """What the open regime asks for, given the labelled rows since its point, since the
        last training (``new_labels``) and since the last attempt started.

        Nothing while a job for this regime waits or runs, or while its rows are not in. A due
        retrain that the cooldown, the backoff or ``min_new_labels`` holds back is deferred, not
        dropped: the regime remembers it, and a later call asks for it once it may start.
        """
        regime = self.regime
        if regime is None or any(
            j is not None and j.drift_point == regime.point for j in (self.running, self.pending)
        ):
            return NOT_DUE
        if regime.trained_rows == 0:
            if labelled_since_point < self.config.min_rows_after_drift:
                return NOT_DUE
            reason = "drift"
        elif labelled_since_point < 2 * regime.trained_rows:
            return NOT_DUE
        else:
            reason = "drift_growth"
        why = None if self._exempt([reason]) else self.waiting(now, since_attempt)
        if why is None and new_labels < self.config.min_new_labels:
            why = "too_few_new_labels"
        if why is None:
            return DriftDue(reason)
        first = why != regime.deferred
        regime.deferred = why
        return DriftDue(deferred=why if first else None)

    # -- challengers -----------------------------------------------------------------------
    def challenger_every(self) -> int:
        """Labelled rows newer than the last training after which a challenger is fitted."""
        n = self.config.challenger_labels
        return self.config.window_rows // 4 if n is None else n

    def challenger_due(self, *, now: float, new_labels: int, since_attempt: int) -> bool:
        """Whether to ask for a challenger now. Not while a drift regime is open (its retrains
        refit as its rows grow) or a job waits or runs, and not while the cooldown would refuse
        it: asking is then queuing, so a poll never fills the audit log with skips."""
        every = self.challenger_every()
        if every == 0 or self.regime is not None or self.pending or self.running:
            return False
        enough = new_labels >= max(every, self.config.min_new_labels)
        return enough and self.waiting(now, since_attempt) is None

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending.as_dict() if self.pending else None,
            "interrupted": self.running.as_dict() if self.running else None,
            "last_attempt": self.last_attempt,
            "attempt_position": self.attempt_position,
            "consecutive_rejections": self.consecutive_rejections,
            "trained_until": self.trained_until,
            "regime": asdict(self.regime) if self.regime else None,
            "next_id": self._peek_id(),
        }

    @classmethod
    def from_dict(cls, config: PolicyConfig, data: dict[str, Any]) -> RetrainPolicy:
        """Restore; a job that was running when the process died is not resumed (its start
        counts as an attempt, so the cooldown holds)."""
        p = cls(config)
        p.pending = Job(**data["pending"]) if data.get("pending") else None
        p.last_attempt = data.get("last_attempt")
        p.attempt_position = int(data.get("attempt_position", 0))
        p.consecutive_rejections = int(data.get("consecutive_rejections", 0))
        p.trained_until = int(data.get("trained_until", 0))
        p.regime = DriftRegime(**data["regime"]) if data.get("regime") else None
        p._ids = itertools.count(int(data.get("next_id", 1)))
        return p

    def _next_id(self) -> int:
        return next(self._ids)

    def _peek_id(self) -> int:
        n = next(self._ids)
        self._ids = itertools.count(n)
        return n
