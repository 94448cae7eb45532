"""The retraining loop: requests in, verdicts and deploys out, alerts when a candidate fails.

A job takes a frozen, hashed, time-ordered snapshot of labelled rows (since the drift point
after an alarm, else the most recent window), holds out the most recent slice, has the fit
(the training process) fit the candidate, load it with the trusted-type list, score it and
calibrate its probabilities, scores the champion on the same holdout, and asks the gate. A
passing candidate is deployed, with its calibrator, through the lifecycle
(:mod:`driftd.models.lifecycle`); a failing one is kept under ``rejected/`` (bounded)
and the team is alerted. A fit that the daemon's shutdown cuts short is no failure: it is
recorded as ``training_cancelled``, nobody is paged, and the policy keeps the job queued for
the next start. After a deploy the post-deploy guard (:mod:`driftd.retrain.guard`)
watches the first labelled records the new champion served, and its rollback is handed to
``defer`` (a thread of its own in the daemon: a swap waits for the ingest worker, on which the
guard is fed; replay performs it after the label batch, deterministically).

Requests and policy decisions happen on the event loop or the ingest worker; jobs run on one
job thread. The policy's state is persisted after every change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from driftd._fs import TMP_PREFIX, atomic_write
from driftd.alerts import Alerter
from driftd.errors import IntegrityError, NotLeader
from driftd.ingest.schema import Label, Schema
from driftd.metrics import Metrics
from driftd.models.inputs import matrix
from driftd.models.lifecycle import Lifecycle
from driftd.models.serving import WarmupError
from driftd.monitor import MonitorEvent
from driftd.retrain.config import RetrainSettings
from driftd.retrain.fit import (
    Evaluation,
    FitJob,
    FitResult,
    OnlineFit,
    library_versions,
    score,
)
from driftd.retrain.gate import Gate, Verdict
from driftd.retrain.guard import Guard
from driftd.retrain.policy import Decision, Job, Outcome, RetrainPolicy
from driftd.retrain.pool import online_enters, online_estimator, plan
from driftd.store import Blob, Joined, RecordStore, Snapshot

__all__ = ["ONLINE_KEY", "POLICY_KEY", "Fit", "Retrainer"]

log = logging.getLogger(__name__)

POLICY_KEY = "retrain_policy"
#: The online learner's family and the last record it learned (its state is in its blob).
ONLINE_KEY = "online_learner"
#: Fits a job and reports how it went; never raises. The daemon's is the training worker with
#: its timeout and the shutdown's cancel event bound; replay's fits inline.
Fit = Callable[[FitJob], FitResult]


def on_a_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on a thread of its own (the daemon's way to run a guard's rollback)."""
    threading.Thread(target=fn, name="driftd-guard", daemon=True).start()


class Retrainer:
    """Owns the trigger policy and runs retrain jobs.

    Parameters
    ----------
    store, models
        Where the rows, the policy's state and the audit log are, and the lifecycle that
        deploys and rolls back.
    settings
        The model, training, retrain, gate and guard sections (:meth:`reconfigure` swaps them).
    rejected_dir
        Where the last ``retrain.keep_rejected`` rejected candidates are kept, with verdicts.
    fit
        Fits a job (see :data:`Fit`).
    defer
        Runs the post-deploy guard's rollback (see the module docstring).
    online
        Where the online learner's state is kept between jobs (``None``: no online learner).
        Only the training process unpickles it, with the restricted loader.
    """

    def __init__(
        self,
        store: RecordStore,
        models: Lifecycle,
        metrics: Metrics,
        settings: RetrainSettings,
        *,
        schema: Schema,
        rejected_dir: Path,
        fit: Fit,
        alerter: Alerter | None = None,
        clock: Callable[[], float] = time.time,
        defer: Callable[[Callable[[], None]], None] = on_a_thread,
        standby: bool = False,
        online: Blob | None = None,
        preempt: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.metrics = metrics
        self.settings = settings
        self.schema = schema
        self.rejected_dir = rejected_dir
        self.fit = fit
        self.alerter = alerter
        self.clock = clock
        self.defer = defer
        self.online = online
        self.preempt = preempt
        self.gate, self.challenger_gate = _gates(settings)
        self.lock = threading.RLock()
        self.policy = RetrainPolicy(settings.retrain.policy())
        self.guard: Guard | None = None
        self.last_job: dict[str, Any] | None = None
        self._stop_asked: str | None = None  # the running job a drift alarm asked to stop
        self._export_threshold()
        if not standby:
            self.take_over()

    def take_over(self) -> None:
        """Restore the policy from the store and record what a restart cut short: at start,
        or when a standby becomes its model's leader (until then it leaves the shared state
        to the leader)."""
        with self.lock:
            saved = self.store.get_state(POLICY_KEY)
            policy_cfg = self.settings.retrain.policy()
            self.policy = (
                RetrainPolicy.from_dict(policy_cfg, saved) if saved else RetrainPolicy(policy_cfg)
            )
            if saved and saved.get("interrupted"):
                job = saved["interrupted"]
                log.warning("retrain %s was interrupted by a restart; it is not resumed", job["id"])
                self.store.add_event("retrain_interrupted", {"job": job}, ts=self.clock())
            for leftover in self.rejected_dir.glob(f"*/{TMP_PREFIX}*"):  # a write cut short
                leftover.unlink(missing_ok=True)
            for failure in self.models.load_failures:
                self._alert(
                    "model_load_failed", f"refused at start: {failure}", severity="critical"
                )
            self._persist()

    def reconfigure(self, settings: RetrainSettings, *, alerter: Alerter | None) -> None:
        """Apply reloaded gate, guard, alert and retrain-policy settings (SIGHUP)."""
        with self.lock:
            self.settings = settings
            self.alerter = alerter
            self.gate, self.challenger_gate = _gates(settings)
            self.policy.config = settings.retrain.policy()
            self._export_threshold()

    def _export_threshold(self) -> None:
        metric, threshold = self.settings.model.metric, self.settings.gate.threshold
        self.metrics.gate_threshold.clear()
        if threshold is not None:
            self.metrics.gate_threshold.labels(metric).set(threshold)

    # -- requests --------------------------------------------------------------------------
    def request(
        self, reason: str, *, operator: bool = False, drift_point: int | None = None
    ) -> Decision:
        """Ask for a retrain (thread-safe). Counted; a skip is counted with its reason."""
        now = self.clock()
        with self.lock:
            decision = self.policy.request(
                reason,
                now=now,
                new_labels=self._new_labels(),
                since_attempt=self._since_attempt(),
                operator=operator,
                drift_point=drift_point,
            )
            self._persist()
        self.metrics.retrain_triggers.labels(reason).inc()
        data = {"reason": reason, "outcome": decision.outcome, "job": decision.job_id}
        if decision.outcome == "skipped":
            self.metrics.retrain_skipped.labels(decision.reason or "unknown").inc()
            data["skipped"] = decision.reason
            log.info("retrain request (%s) skipped: %s", reason, decision.reason)
        else:
            log.info("retrain request (%s) %s as %s", reason, decision.outcome, decision.job_id)
        self.store.add_event("retrain_requested", data, ts=now)
        self._gauges()
        return decision

    def on_alarm(self, event: MonitorEvent) -> None:
        """A monitor alarm (called in order with traffic): open a drift regime, and stop the
        job that holds the training process (a challenger, a schedule, an older regime's
        growth retrain) at its next step, so that this drift's retrain need not wait for it.
        A job still reading its rows stops before it hands its fit over. A regime's first
        retrain is short and an operator's request was asked for: neither is stopped."""
        with self.lock:
            self.policy.on_drift(event.change_point, self.clock())
            self._persist()
            running = self.policy.running
            if (
                self.preempt is None
                or running is None
                or _first_drift(running)
                or "operator" in running.reasons
            ):
                return
            self._stop_asked = running.id
        self.preempt()
        log.info("retrain %s (%s) asked to stop: a drift alarm", running.id, running.reasons)

    def poll(self) -> Job | None:
        """Called from the main loop's tick: request a drift retrain when its rows are in (or,
        with no drift regime open, a challenger when its labels are), and return the job to run
        now, if any (the caller runs it on the job thread).

        While a drift regime is open its labelled rows are counted on every call (an indexed
        count): at 2,000 records/s, checking once a second would leave the stale model serving
        2,000 records longer after each drift."""
        now = self.clock()
        regime = self.policy.regime
        if regime is not None:
            since = self.store.labelled_count(since_idx=regime.point - 1)
            with self.lock:
                due = self.policy.drift_due(
                    since,
                    now=now,
                    new_labels=self._new_labels(),
                    since_attempt=self._since_attempt(),
                )
            if due.deferred is not None:
                self._deferred(due.deferred, regime.point, since, now)
            if due.reason is not None:
                self.request(due.reason, drift_point=regime.point)
        elif self.policy.challenger_every() and not (self.policy.pending or self.policy.running):
            with self.lock:
                challenger = self.policy.challenger_due(
                    now=now, new_labels=self._new_labels(), since_attempt=self._since_attempt()
                )
            if challenger:
                self.request("challenger")
        with self.lock:
            job = None
            if self.policy.pending is not None:
                job = self.policy.start(
                    now, since_attempt=self._since_attempt(), position=self.store.last_index()
                )
            if job is not None:
                self._persist()
        self._gauges()
        return job

    def _new_labels(self) -> int:
        """Labelled rows newer than the last training."""
        return self.store.labelled_count(since_idx=self.policy.trained_until)

    def _since_attempt(self) -> int:
        """Labelled rows after the record the last attempt started at: the cooldown's count."""
        if self.policy.last_attempt is None:
            return 0
        return self.store.labelled_count(since_idx=self.policy.attempt_position)

    def _deferred(self, reason: str, point: int, rows: int, now: float) -> None:
        """A drift retrain is due but must wait: say so in the audit log and the metrics (the
        regime keeps it; it is asked for once it may start)."""
        p = self.policy
        data = {
            "reason": reason,
            "drift_point": point,
            "rows_since_point": rows,
            "cooldown_labels": p.cooldown_labels(),
            "cooldown_until": p.cooldown_until() if p.last_attempt is not None else None,
            "consecutive_rejections": p.consecutive_rejections,
        }
        self.metrics.retrain_deferred.labels(reason).inc()
        self.store.add_event("retrain_deferred", data, ts=now)
        log.info("drift retrain (change point %d) deferred: %s", point, reason)

    # -- the job ---------------------------------------------------------------------------
    def run(self, job: Job) -> Outcome:
        """Run one job to its end (blocking; on the job thread). Never raises."""
        start = time.monotonic()
        self.store.add_event(
            "retrain_started", {"job": job.id, "reasons": job.reasons}, ts=self.clock()
        )
        try:
            outcome, details = self._run(job)
        except NotLeader as exc:  # the lock was lost during the fit: the new leader decides
            log.warning("retrain %s not deployed: %s", job.id, exc)
            outcome, details = "skipped", {"why": str(exc)}
        except Exception as exc:
            log.exception("retrain %s crashed", job.id)
            outcome, details = "failed", {"error": f"{type(exc).__name__}: {exc}"}
            self._alert("training_failed", f"retrain {job.id} failed: {exc}", job=job.id)
        took = time.monotonic() - start
        with self.lock:
            # A tie, or a challenger that did not beat the champion, is no sign that retraining
            # has gone wrong: neither backs off the next retrain nor counts toward escalation.
            # Neither does a holdout too small to judge on (a rare class of a new regime): the
            # regime's growth asks again once its rows have doubled.
            verdict = details.get("verdict", {})
            counted = not (
                verdict.get("tie") or _holdout_short(verdict) or job.reasons == ["challenger"]
            )
            self.policy.finish(
                job,
                outcome,
                now=self.clock(),
                trained_until=details.get("trained_until"),
                trained_rows=_regime_rows(details),
                back_off=counted,
            )
            self._persist()
            escalate = self.policy.consecutive_rejections
        if outcome == "cancelled":
            log.info("retrain %s was cancelled by the shutdown; the next start runs it", job.id)
            self._gauges()
            return outcome
        if outcome == "skipped":
            self.metrics.retrain_skipped.labels(details.get("skipped", "unknown")).inc()
        else:
            self.metrics.retrain_runs.labels(outcome).inc()
            self.metrics.retrain_duration.observe(took)
        record = {
            "job": job.id,
            "reasons": job.reasons,
            "outcome": outcome,
            "seconds": round(took, 3),
            **details,
        }
        record.pop("trained_until", None)
        self.last_job = record
        self.store.add_event("retrain_finished", record, ts=self.clock())
        log.info("retrain %s (%s): %s in %.1f s", job.id, ", ".join(job.reasons), outcome, took)
        if outcome == "rejected" and counted and escalate % self.settings.escalate_after == 0:
            self._alert(
                "consecutive_rejections",
                f"{escalate} retrains in a row were rejected; the champion is getting stale",
                severity="critical",
                details={"last": details.get("verdict")},
            )
        self._gauges()
        return outcome

    def _run(self, job: Job) -> tuple[Outcome, dict[str, Any]]:
        """The job's window and holdout, and its pool (:mod:`driftd.retrain.pool`): the most
        recent ``window_rows`` labelled rows; a drift job's holdout is the newest slice of the
        rows after its change point, so that every candidate is judged on the new regime."""
        cfg = self.settings
        started = time.monotonic()
        since = self.clock() - cfg.retrain.max_age_seconds if cfg.retrain.max_age_seconds else None
        young = self._since_change(job, since) if self._fast(job) else None
        first = young is not None  # a fast fit, planned as a regime's first retrain
        snap = (
            young
            if young is not None
            else self.store.snapshot(limit=cfg.retrain.window_rows, since_ts=since)
        )
        after = (
            None if job.drift_point is None else int(np.count_nonzero(snap.idx >= job.drift_point))
        )
        train, hold = snap.split(self.holdout_size(len(snap) if after is None else after))
        window = {**snap.window(), "since_drift_point": job.drift_point}
        if after is not None:  # what the drift regime's growth counts (not the whole window)
            window["rows_since_change"] = after
        X_train = matrix(self.schema, train.numeric, train.categorical)
        X_hold = matrix(self.schema, hold.numeric, hold.categorical)
        since_change = None if after is None else max(0, after - len(hold))
        members = plan(cfg.pool, train_rows=len(train), since_change=since_change, first=first)
        fast = first and [m.name for m in members] == ["since_change"]
        online, sat_out = (None, None) if fast else self._online(train.idx, hold.idx)
        return self.evaluate_and_deploy(
            job,
            X_train,
            train.labels,
            X_hold,
            hold.labels,
            window=window,
            trained_until=int(snap.idx[-1]) if len(snap) else 0,
            members=tuple((m.name, m.rows) for m in members),
            online=online,
            online_sat_out=sat_out,
            snapshot_seconds=time.monotonic() - started,
        )

    def _fast(self, job: Job) -> bool:
        """Whether a drift job fits the rows since its change point alone (:func:`plan`): a
        regime's first retrain, and its growth retrains while those rows are fewer than
        ``[pool] fast_until`` of the window (an indexed count)."""
        pool = self.settings.pool
        if not pool.fast_first or job.drift_point is None:
            return False
        if _first_drift(job):
            return True
        young = pool.fast_until * self.settings.retrain.window_rows
        return bool(young) and self.store.labelled_count(since_idx=job.drift_point - 1) < young

    def _since_change(self, job: Job, since: float | None) -> Snapshot | None:
        """The rows since a drift job's change point alone, for a fast fit (:func:`plan`),
        which fits nothing else: reading the whole window cost a first retrain 0.15 s of about
        0.8 at 2,000 records/s. ``None`` (read the whole window and plan as before) for a job
        of no regime or an operator's, or when they would not make that fit: fewer than the
        pool's ``min_rows`` beside the holdout, or one class."""
        if job.drift_point is None or "operator" in job.reasons:
            return None
        cfg = self.settings
        snap = self.store.snapshot(
            limit=cfg.retrain.window_rows, since_idx=job.drift_point - 1, since_ts=since
        )
        hold = self.holdout_size(len(snap))
        if len(snap) - hold < max(cfg.pool.min_rows, hold // 2 + 1, 10):
            return None
        train, _ = snap.split(hold)
        if self.schema.task == "classification" and len(set(train.labels)) < 2:
            return None
        return snap

    def _online(self, train_idx: Any, hold_idx: Any) -> tuple[OnlineFit | None, str | None]:
        """The online learner's part of the job: its saved state, if it is of the configured
        family, and where the rows new to it begin; ``None`` when it is off, has nothing to
        learn from, has already learned the holdout (a job right after another), or sits this
        job out (:func:`online_enters`; then also why, for the audit log)."""
        pool = self.settings.pool
        if self.online is None or not pool.online or not len(hold_idx):
            return None, None
        family = online_estimator(pool, self.schema.task)
        saved = self.store.get_state(ONLINE_KEY) or {}
        state = None
        learned_through = -1
        if saved.get("estimator") == family and saved.get("params") == pool.online_params:
            lost, sat_out = int(saved.get("lost", 0)), int(saved.get("sat_out", 0))
            if not online_enters(lost, sat_out, pool.online_patience):  # before its state is read
                self.store.put_state(ONLINE_KEY, {**saved, "sat_out": sat_out + 1})
                return None, f"sat out: it lost its last {lost} jobs"
            state = self.online.read()
            learned_through = int(saved.get("through", -1)) if state is not None else -1
        if learned_through >= int(hold_idx[0]):
            return None, None
        start = int(np.searchsorted(train_idx, learned_through, side="right"))
        if pool.online_max_rows:  # the newest rows only: the rest would cost the job its time
            start = max(start, len(train_idx) - pool.online_max_rows)
        online = OnlineFit(
            family, dict(pool.online_params), state, learn_from=start, max_rows=pool.online_max_rows
        )
        return online, None

    def _keep_online(self, result: FitResult, online: OnlineFit | None, through: int) -> None:
        """Save what the online learner learned in this job, for the next one, and whether it
        won the pool (a run of losses has it sit jobs out: :func:`online_enters`)."""
        if self.online is None or online is None or result.online_state is None:
            return
        saved = self.store.get_state(ONLINE_KEY) or {}
        same = saved.get("estimator") == online.estimator and saved.get("params") == online.params
        before = int(saved.get("lost", 0)) if same else 0
        lost = 0 if result.chosen == "online" else before + 1
        self.online.write(result.online_state)
        self.store.put_state(
            ONLINE_KEY,
            {
                "estimator": online.estimator,
                "params": online.params,
                "through": through,
                "lost": lost,
                "sat_out": 0,
            },
        )

    def holdout_size(self, n: int) -> int:
        cfg = self.settings
        return max(cfg.gate.min_holdout, int(n * cfg.retrain.holdout_fraction))

    def evaluate_and_deploy(
        self,
        job: Job,
        X_train: Any,
        y_train: list[Label],
        X_hold: Any,
        y_hold: list[Label],
        *,
        window: dict[str, Any],
        trained_until: int = 0,
        members: tuple[tuple[str, int], ...] = (),
        online: OnlineFit | None = None,
        online_sat_out: str | None = None,
        snapshot_seconds: float = 0.0,
    ) -> tuple[Outcome, dict[str, Any]]:
        """Fit the pool (one model on every row when ``members`` is empty and ``online`` is
        ``None``), score, gate, and deploy or reject. Shared by retrains and the bootstrap.

        The record's ``stages`` say where the job's wall time went, in seconds: reading the
        rows (``snapshot``), the training process's fit and evaluation as this process waited
        for them (``fit``; ``fit_seconds`` is the training process's own count), the gate's
        scoring of the champion (``judge``) and the deploy (``deploy``)."""
        cfg = self.settings
        live_metric = self.schema.live_metric
        stages = {"snapshot": round(snapshot_seconds, 3)}
        base: dict[str, Any] = {
            "rows": len(y_train) + len(y_hold),
            "stages": stages,
            "window": window,
            "trained_until": trained_until,
            **({} if online_sat_out is None else {"online_sat_out": online_sat_out}),
        }
        if len(y_train) < max(10, len(y_hold) // 2) or len(y_hold) < cfg.gate.min_holdout:
            return "skipped", {**base, "skipped": "too_few_rows"}
        if self.schema.task == "classification" and len(set(y_train)) < 2:
            return "skipped", {**base, "skipped": "single_class"}
        mem = cfg.training.memory_limit_mb * 1024 * 1024 if cfg.training.memory_limit_mb else None
        warm = X_hold[: cfg.model.warmup_rows]
        fit_job = FitJob(
            cfg.model,
            self.schema,
            X_train,
            list(y_train),
            mem,
            cfg.training.fit_threads(),
            holdout=(X_hold, list(y_hold)),
            warmup=warm,
            metrics=tuple(dict.fromkeys((cfg.model.metric, live_metric))),
            members=members,
            online=online,
            tie_margin=cfg.gate.tie_margin,
            refit=bool(members or online) and cfg.pool.refit,
            cross_fit=job.drift_point is None,
        )
        if self._stop_asked == job.id:  # before its fit was handed over: nothing to stop
            return "skipped", {**base, "skipped": "preempted"}
        mark = time.monotonic()
        result = self.fit(fit_job)
        stages["fit"] = round(time.monotonic() - mark, 3)
        base["fit_seconds"] = round(result.seconds, 3)
        if result.pool:
            base["pool"] = result.pool
            base["chosen"] = {"name": result.chosen, "why": result.why, "refit": result.refitted}
        if result.ok:
            self._keep_online(result, online, trained_until)
        if result.logs:
            base["logs"] = result.logs[-20:]
        if result.preempted:
            return "skipped", {**base, "skipped": "preempted"}
        if result.cancelled:
            cancelled = {"job": job.id, "reasons": job.reasons, "seconds": base["fit_seconds"]}
            self.store.add_event("training_cancelled", cancelled, ts=self.clock())
            return "cancelled", base
        if not result.ok:
            kind = "training_timeout" if result.timed_out else "training_failed"
            self._alert(kind, f"retrain {job.id}: {result.error}", job=job.id)
            outcome: Outcome = "timeout" if result.timed_out else "failed"
            return outcome, {**base, "error": result.error, "traceback": result.traceback}
        assert result.evaluation is not None  # the job had a holdout
        challenger = job.reasons == ["challenger"]
        mark = time.monotonic()
        verdict, scores = self._judge(result.evaluation, X_hold, y_hold, challenger=challenger)
        stages["judge"] = round(time.monotonic() - mark, 3)
        base.update(verdict=verdict.as_dict(), scores=scores)
        if not verdict.passed:
            self._keep_rejected(job, result.artifact, verdict, base)
            self._alert(
                "candidate_rejected",
                f"candidate from {job.id} ({', '.join(job.reasons)}) {verdict.summary()}",
                job=job.id,
                details={"verdict": verdict.as_dict()},
            )
            return "rejected", base
        calibration = result.evaluation.calibration
        manifest = {
            "created": self.clock(),
            "reason": ",".join(job.reasons),
            "job": job.id,
            **self._family(result.chosen),
            "candidate": base.get("chosen"),
            "schema": self.schema.fingerprint(),
            "training": {**window, "train_rows": len(y_train), "holdout_rows": len(y_hold)},
            "metrics": scores["candidate"],
            "verdict": verdict.as_dict(),
            "calibration": None if calibration is None else calibration.record(),
            "fit_seconds": round(result.seconds, 3),
            "libraries": library_versions(),
            "warmup": _rows(self.schema, warm),
        }
        champion = self.models.current
        previous = champion.version if champion is not None else None
        calibrator = None if calibration is None else calibration.calibrator
        mark = time.monotonic()
        version = self.models.deploy(
            result.artifact,
            manifest,
            warm,
            model=result.evaluation.model(),
            calibration=None if calibrator is None else calibrator.dumps(),
        )
        stages["deploy"] = round(time.monotonic() - mark, 3)
        expected = scores["candidate"].get(live_metric, math.nan)
        if cfg.guard.records > 0 and previous is not None and math.isfinite(expected):
            self.guard = Guard(
                version=version.number,
                previous=previous,
                expected=expected,
                metric=live_metric,
                needed=cfg.guard.records,
                margin=cfg.guard.margin,
                drift_margin=cfg.guard.drift_margin,
            )
        return "deployed", {**base, "version": version.number}

    def _family(self, chosen: str | None) -> dict[str, Any]:
        """The manifest's estimator and parameters: the online family's, or the batch one's."""
        cfg = self.settings
        if chosen == "online":
            pool = cfg.pool
            return {
                "estimator": online_estimator(pool, self.schema.task),
                "params": pool.online_params,
            }
        return {"estimator": cfg.model.factory or cfg.model.estimator, "params": cfg.model.params}

    def _judge(
        self, evaluation: Evaluation, X_hold: Any, y_hold: list[Label], *, challenger: bool
    ) -> tuple[Verdict, dict[str, Any]]:
        """The gate's verdict on a candidate evaluated in the training process (loaded, warmed
        up, scored there), against the serving champion scored here on the same holdout; a
        challenger must beat it (see :func:`_gates`)."""
        metric = self.settings.model.metric
        candidate = evaluation.scores
        champion_live = self.models.current
        champion = self._scores(champion_live.model, X_hold, y_hold) if champion_live else None
        counts = None
        if self.schema.task == "classification":
            values, freq = np.unique(np.asarray([str(v) for v in y_hold]), return_counts=True)
            counts = dict(zip(values.tolist(), freq.tolist(), strict=True))
        gate = self.challenger_gate if challenger else self.gate
        verdict = gate.judge(
            candidate=None if candidate is None else candidate.get(metric),
            champion=None if champion is None else champion.get(metric, math.nan),
            holdout=len(y_hold),
            class_counts=counts,
            loads=evaluation.loads,
            load_error=evaluation.load_error,
            latency_ms=evaluation.latency_ms,
        )
        for name, s in (("candidate", candidate), ("champion", champion)):
            if s is not None and math.isfinite(s.get(metric, math.nan)):
                self.metrics.gate_score.labels(name, metric).set(s[metric])
        return verdict, {"candidate": _finite(candidate or {}), "champion": _finite(champion or {})}

    def _scores(self, model: Any, X: Any, y: list[Label]) -> dict[str, float]:
        metric, live_metric = self.settings.model.metric, self.schema.live_metric
        out = {metric: score(metric, model, X, y)}
        if live_metric != metric:
            out[live_metric] = score(live_metric, model, X, y)
        return out

    def _keep_rejected(
        self, job: Job, artifact: bytes, verdict: Verdict, details: dict[str, Any]
    ) -> None:
        keep = self.settings.retrain.keep_rejected
        if keep == 0:
            return
        target = self.rejected_dir / job.id
        target.mkdir(parents=True, exist_ok=True)
        atomic_write(target / "model.skops", artifact)
        atomic_write(
            target / "verdict.json",
            json.dumps({"job": job.id, **details}, indent=2, default=str).encode(),
        )
        entries = sorted(self.rejected_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in entries[: max(0, len(entries) - keep)]:
            shutil.rmtree(old, ignore_errors=True)

    # -- rollback and the post-deploy guard ------------------------------------------------
    def rollback(
        self, version: int | None = None, *, reason: str = "operator", why: str | None = None
    ) -> dict[str, Any]:
        """Serve ``version`` (default: the previous champion) again. Raises ValueError when there
        is nothing to roll back to, IntegrityError when the target fails verification."""
        target, from_version = self.models.rollback(version, details={"reason": reason, "why": why})
        self.guard = None
        self.metrics.rollbacks.labels(reason).inc()
        text = f"rolled back from v{from_version} to v{target} ({reason})" + (
            f": {why}" if why else ""
        )
        log.warning("%s", text)
        self._alert(
            "rolled_back",
            text,
            severity="critical" if reason == "guard" else "warning",
            version=str(target),
        )
        return {"version": target, "previous": from_version, "reason": reason}

    def on_joined(self, joined: list[Joined]) -> None:
        """Labels that met their predictions (in order with traffic): feed the post-deploy guard,
        and once it has its records, score the previous champion on them and act on the verdict:
        a drift opens a regime (unless one is open), a better previous champion is rolled back to.
        """
        guard = self.guard
        if guard is None or not guard.observe(joined):
            return
        self.guard = None
        verdict = guard.judge(self._shadow(guard))
        now = self.clock()
        if verdict.drifted:
            self._guard_drift(verdict.record, verdict.why, now)
        if not verdict.rollback:
            self.store.add_event("guard_passed", verdict.record, ts=now)
            return
        self.store.add_event("guard_failed", {**verdict.record, "why": verdict.why}, ts=now)
        why = verdict.why or "the previous champion scored better on the same records"
        self.defer(lambda: self._guard_rollback(guard, why))

    def _shadow(self, guard: Guard) -> dict[int, Label] | None:
        """The previous champion's predictions for the records the guard watched, when it is
        still loaded (``[model] keep_previous``); None otherwise."""
        previous = self.models.previous
        if previous is None or previous.version != guard.previous:
            return None
        try:
            rows = self.store.labelled_at(guard.indices)
            if not len(rows):
                return None
            X = matrix(self.schema, rows.numeric, rows.categorical)
            return dict(zip(rows.idx.tolist(), previous.predict(X), strict=True))
        except Exception:
            # This runs in order with traffic after the labels were committed: a previous model
            # that cannot predict (or a read that fails) must not turn that write into a 500.
            # The guard then judges on the new champion's own score alone.
            log.exception("the previous champion could not be scored in shadow")
            return None

    def _guard_drift(self, record: dict[str, Any], why: str | None, now: float) -> None:
        """The new champion scores well under its holdout from its first records on: the data
        moved before the deploy's rebaseline could let the detectors see it. A regime opens at
        its first record, so that the drift is retrained rather than swallowed; a regime still
        open from an older change is moved there, since the model its rows just trained is
        the one failing (a growth deploy landing just after a new change would otherwise serve
        until the old regime's next doubling)."""
        first = int(record["first_index"])
        with self.lock:
            regime = self.policy.regime
            replaced = None if regime is None else regime.point
            opened = regime is None or regime.point < first
            if opened:
                self.policy.on_drift(first, now)
                self._persist()
        data = {**record, "why": why, "opened": opened, "replaced": replaced if opened else None}
        self.store.add_event("guard_drift", data, ts=now)
        log.warning("post-deploy guard: %s", why)

    def _guard_rollback(self, guard: Guard, why: str) -> None:
        try:
            self.rollback(guard.previous, reason="guard", why=why)
        except (ValueError, IntegrityError, WarmupError) as exc:
            log.error("post-deploy guard could not roll back: %s", exc)
            self._alert(
                "rolled_back",
                f"post-deploy guard failed and rollback failed: {exc}",
                severity="critical",
            )

    # -- plumbing --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self.lock:
            p = self.policy
            return {
                "running": p.running.as_dict() if p.running else None,
                "pending": p.pending.as_dict() if p.pending else None,
                "cooldown_until": p.cooldown_until() if p.last_attempt is not None else None,
                "cooldown_labels": p.cooldown_labels(),
                "cooldown_from_index": p.attempt_position,
                "consecutive_rejections": p.consecutive_rejections,
                "drift_regime": None
                if p.regime is None
                else {"point": p.regime.point, "trained_rows": p.regime.trained_rows},
                "guard": None
                if (guard := self.guard) is None
                else {"version": guard.version, "seen": guard.seen, "needed": guard.needed},
                "last_job": self.last_job,
            }

    def _persist(self) -> None:
        self.store.put_state(POLICY_KEY, self.policy.to_dict())

    def _gauges(self) -> None:
        self.metrics.retrain_pending.labels("waiting").set(1 if self.policy.pending else 0)
        self.metrics.retrain_pending.labels("running").set(1 if self.policy.running else 0)

    def _alert(
        self,
        kind: str,
        summary: str,
        *,
        severity: str = "warning",
        details: dict[str, Any] | None = None,
        **labels: str,
    ) -> None:
        if self.alerter is None:
            log.warning("alert %s: %s", kind, summary)
            return
        self.alerter.send(kind, summary, severity=severity, labels=labels, details=details)


def _gates(settings: RetrainSettings) -> tuple[Gate, Gate]:
    """The gate, and the one a challenger passes: nothing asked for it, so it must beat the
    champion by more than a tie, or every challenger on a steady stream would deploy, and each
    deploy rebaselines the detectors that a change needs to be seen by."""
    cfg, metric = settings.gate, settings.model.metric
    gain = max(cfg.min_absolute_change or 0.0, cfg.tie_margin)
    return Gate(cfg, metric), Gate(dataclasses.replace(cfg, min_absolute_change=gain), metric)


def _first_drift(job: Job) -> bool:
    """Whether ``job`` is a drift regime's first retrain, the fast one (:func:`plan`), with
    no operator waiting for the whole pool."""
    return "drift" in job.reasons and "operator" not in job.reasons


def _regime_rows(details: dict[str, Any]) -> int:
    """The rows a drift job trained on after its change point (what the regime's growth
    counts), else every row it trained on."""
    window = details.get("window") or {}
    return int(window.get("rows_since_change", details.get("rows", 0)))


def _holdout_short(verdict: dict[str, Any]) -> bool:
    """The verdict failed on the holdout's size (or a class's share of it), not on a score."""
    return any(r["rule"] == "holdout" and not r["passed"] for r in verdict.get("rules", []))


def _finite(scores: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in scores.items()}


def _rows(schema: Any, X: Any) -> list[dict[str, Any]]:
    """Matrix rows back to feature dicts (for the warm-up rows kept in the manifest)."""
    names = [*schema.numeric, *schema.categorical]
    return [
        {n: (float(v) if n in schema.numeric else str(v)) for n, v in zip(names, row, strict=True)}
        for row in np.asarray(X, dtype=object)
    ]
