"""The retraining loop: requests in, verdicts and deploys out, alerts when a candidate fails.

A job takes a frozen, hashed, time-ordered snapshot of labelled rows (since the drift point
after an alarm, else the most recent window), holds out the most recent slice, fits the
candidate in a child process, loads it with the trusted-type list, scores candidate and
champion on the same holdout, and asks the gate. A passing candidate is deployed through the
engine's swap primitive; a failing one is kept under ``rejected/`` (bounded) and the team is
alerted. After a deploy the post-deploy guard watches the first labelled records the new
champion served and rolls back if its live score falls short of its holdout score.

Requests and policy decisions happen on the event loop or the ingest worker; jobs run on one
job thread. The policy's state is persisted after every change.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftd._fs import atomic_write
from driftd.alerts import Alerter
from driftd.config import Config
from driftd.errors import IntegrityError
from driftd.ingest.schema import Label
from driftd.models.inputs import matrix, rows_to_matrix
from driftd.models.serving import WarmupError
from driftd.monitor import MonitorEvent
from driftd.retrain.fit import Evaluation, FitJob, FitResult, library_versions, score
from driftd.retrain.gate import HIGHER_IS_BETTER, Gate, Verdict
from driftd.retrain.policy import Decision, Job, Outcome, RetrainPolicy
from driftd.retrain.worker import fit_isolated
from driftd.service.engine import Engine
from driftd.store import Joined

__all__ = ["Guard", "Retrainer"]

log = logging.getLogger(__name__)

POLICY_KEY = "retrain_policy"
Fit = Callable[..., FitResult]


@dataclass(slots=True)
class Guard:
    """Watches the first labelled records a new champion served."""

    version: int
    previous: int | None
    expected: float
    metric: str
    needed: int
    seen: int = 0
    total: float = 0.0

    @property
    def live(self) -> float:
        return self.total / self.seen if self.seen else math.nan


class Retrainer:
    """Owns the trigger policy and runs retrain jobs against an :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        alerter: Alerter | None = None,
        fit: Fit = fit_isolated,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.config = engine.config
        self.metrics = engine.metrics
        self.alerter = alerter
        self.fit = fit
        self.clock = clock
        self.gate = Gate(self.config.gate, self.config.model.metric)
        self.live_metric = "accuracy" if engine.schema.task == "classification" else "mae"
        self.lock = threading.RLock()
        saved = engine.store.get_state(POLICY_KEY)
        policy_cfg = self.config.retrain.policy()
        self.policy = (
            RetrainPolicy.from_dict(policy_cfg, saved) if saved else RetrainPolicy(policy_cfg)
        )
        if saved and saved.get("interrupted"):
            job = saved["interrupted"]
            log.warning("retrain %s was interrupted by a restart; it is not resumed", job["id"])
            engine.store.add_event("retrain_interrupted", {"job": job}, ts=clock())
        self.guard: Guard | None = None
        self.last_job: dict[str, Any] | None = None
        self.rejected_dir = engine.state_dir / "rejected"
        for leftover in self.rejected_dir.glob("*/.tmp-*"):  # a write cut short by a crash
            leftover.unlink(missing_ok=True)
        engine.on_alarm = self.on_alarm
        engine.on_joined = self.on_joined
        self._export_threshold()
        self._reconcile_history()
        for failure in engine.load_failures:
            self._alert("model_load_failed", f"refused at start: {failure}", severity="critical")
        changed = engine.reg.changed_at()
        if engine.serving.current is not None and changed is not None:
            self.metrics.deployed_at.set(changed)
        self._persist()

    def _reconcile_history(self) -> None:
        """A crash between the alias move and its event leaves a champion the audit log does
        not name: record it, so that the history of what served is complete."""
        store = self.engine.store
        champion = self.engine.reg.aliases().champion
        moves = [
            e
            for k in ("deploy", "rollback", "model_fallback")
            for e in store.events(kind=k, limit=1)
        ]
        last = max(moves, key=lambda e: e.id).data.get("version") if moves else None
        if champion is not None and last != champion:
            store.add_event(
                "deploy",
                {"version": champion, "reason": "recovered", "recovered": True, "previous": last},
                ts=self.clock(),
            )

    def reconfigure(self, config: Config, *, alerter: Alerter | None) -> None:
        """Apply reloaded gate, guard, alert and retrain-policy settings (SIGHUP)."""
        with self.lock:
            self.config = config
            self.alerter = alerter
            self.gate = Gate(config.gate, config.model.metric)
            self.policy.config = config.retrain.policy()
            self._export_threshold()

    def _export_threshold(self) -> None:
        metric, threshold = self.config.model.metric, self.config.gate.threshold
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
            new = self.engine.store.labelled_count(since_idx=self.policy.trained_until)
            decision = self.policy.request(
                reason, now=now, new_labels=new, operator=operator, drift_point=drift_point
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
        self.engine.store.add_event("retrain_requested", data, ts=now)
        self._gauges()
        return decision

    def on_alarm(self, event: MonitorEvent) -> None:
        """A monitor alarm (called on the ingest worker): open a drift regime."""
        with self.lock:
            self.policy.on_drift(event.change_point, self.clock())
            self._persist()

    def poll(self) -> Job | None:
        """Called from the main loop's tick: request a drift retrain when its rows are in, and
        return the job to run now, if any (the caller runs it on the job thread).

        While a drift regime is open its labelled rows are counted on every call (an indexed
        count): at 2,000 records/s, checking once a second would leave the stale model serving
        2,000 records longer after each drift."""
        now = self.clock()
        regime = self.policy.regime
        if regime is not None:
            since = self.engine.store.labelled_count(since_idx=regime.point - 1)
            with self.lock:
                reason = self.policy.drift_due(since, now)
            if reason is not None:
                self.request(reason, drift_point=regime.point)
        with self.lock:
            job = self.policy.start(now)
            if job is not None:
                self._persist()
        self._gauges()
        return job

    # -- the job ---------------------------------------------------------------------------
    def run(self, job: Job) -> Outcome:
        """Run one job to its end (blocking; on the job thread). Never raises."""
        start = time.monotonic()
        self.engine.store.add_event(
            "retrain_started", {"job": job.id, "reasons": job.reasons}, ts=self.clock()
        )
        try:
            outcome, details = self._run(job)
        except Exception as exc:
            log.exception("retrain %s crashed", job.id)
            outcome, details = "failed", {"error": f"{type(exc).__name__}: {exc}"}
            self._alert("training_failed", f"retrain {job.id} failed: {exc}", job=job.id)
        took = time.monotonic() - start
        with self.lock:
            self.policy.finish(
                job,
                outcome,
                now=self.clock(),
                trained_until=details.get("trained_until"),
                trained_rows=int(details.get("rows", 0)),
            )
            self._persist()
            escalate = self.policy.consecutive_rejections
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
        self.engine.store.add_event("retrain_finished", record, ts=self.clock())
        log.info("retrain %s (%s): %s in %.1f s", job.id, ", ".join(job.reasons), outcome, took)
        if outcome == "rejected" and escalate % self.config.alerts.escalate_after == 0:
            self._alert(
                "consecutive_rejections",
                f"{escalate} retrains in a row were rejected; the champion is getting stale",
                severity="critical",
                details={"last": details.get("verdict")},
            )
        self._gauges()
        return outcome

    def _run(self, job: Job) -> tuple[Outcome, dict[str, Any]]:
        cfg = self.config
        store = self.engine.store
        if job.drift_point is not None:
            snap = store.snapshot(limit=cfg.retrain.window_rows, since_idx=job.drift_point - 1)
        else:
            since = (
                self.clock() - cfg.retrain.max_age_seconds if cfg.retrain.max_age_seconds else None
            )
            snap = store.snapshot(limit=cfg.retrain.window_rows, since_ts=since)
        train, hold = snap.split(self._holdout_size(len(snap)))
        window = {**snap.window(), "since_drift_point": job.drift_point}
        X_train = matrix(self.engine.schema, train.numeric, train.categorical)
        X_hold = matrix(self.engine.schema, hold.numeric, hold.categorical)
        return self.evaluate_and_deploy(
            job,
            X_train,
            train.labels,
            X_hold,
            hold.labels,
            window=window,
            trained_until=int(snap.idx[-1]) if len(snap) else 0,
        )

    def _holdout_size(self, n: int) -> int:
        return max(self.config.gate.min_holdout, int(n * self.config.retrain.holdout_fraction))

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
    ) -> tuple[Outcome, dict[str, Any]]:
        """Fit, score, gate, and deploy or reject. Shared by retrains and the bootstrap."""
        cfg = self.config
        base: dict[str, Any] = {
            "rows": len(y_train) + len(y_hold),
            "window": window,
            "trained_until": trained_until,
        }
        if len(y_train) < max(10, len(y_hold) // 2) or len(y_hold) < cfg.gate.min_holdout:
            return "skipped", {**base, "skipped": "too_few_rows"}
        if self.engine.schema.task == "classification" and len(set(y_train)) < 2:
            return "skipped", {**base, "skipped": "single_class"}
        mem = cfg.training.memory_limit_mb * 1024 * 1024 if cfg.training.memory_limit_mb else None
        warm = X_hold[: cfg.model.warmup_rows]
        fit_job = FitJob(
            cfg.model,
            self.engine.schema,
            X_train,
            list(y_train),
            mem,
            cfg.training.threads,
            holdout=(X_hold, list(y_hold)),
            warmup=warm,
            metrics=tuple(dict.fromkeys((cfg.model.metric, self.live_metric))),
        )
        result = self.fit(fit_job, timeout=cfg.training.timeout_seconds, cancel=self.engine.cancel)
        base["fit_seconds"] = round(result.seconds, 3)
        if result.logs:
            base["logs"] = result.logs[-20:]
        if not result.ok:
            kind = "training_timeout" if result.timed_out else "training_failed"
            self._alert(kind, f"retrain {job.id}: {result.error}", job=job.id)
            outcome: Outcome = "timeout" if result.timed_out else "failed"
            return outcome, {**base, "error": result.error, "traceback": result.traceback}
        assert result.evaluation is not None  # the job had a holdout
        verdict, scores = self._judge(result.evaluation, X_hold, y_hold)
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
        manifest = {
            "created": self.clock(),
            "reason": ",".join(job.reasons),
            "job": job.id,
            "estimator": cfg.model.factory or cfg.model.estimator,
            "params": cfg.model.params,
            "schema": self.engine.schema.fingerprint(),
            "training": {**window, "train_rows": len(y_train), "holdout_rows": len(y_hold)},
            "metrics": scores["candidate"],
            "verdict": verdict.as_dict(),
            "fit_seconds": round(result.seconds, 3),
            "libraries": library_versions(),
            "warmup": _rows(self.engine.schema, warm),
        }
        previous = self.engine.serving.current.version if self.engine.serving.current else None
        version = self.engine.deploy(
            result.artifact, manifest, warm, model=result.evaluation.model()
        )
        self.metrics.deployed_at.set(self.clock())
        expected = scores["candidate"].get(self.live_metric, math.nan)
        if cfg.guard.records > 0 and previous is not None and math.isfinite(expected):
            self.guard = Guard(
                version.number, previous, expected, self.live_metric, cfg.guard.records
            )
        return "deployed", {**base, "version": version.number}

    def _judge(
        self, evaluation: Evaluation, X_hold: Any, y_hold: list[Label]
    ) -> tuple[Verdict, dict[str, Any]]:
        """The gate's verdict on a candidate evaluated in the training process (loaded, warmed
        up, scored there), against the serving champion scored here on the same holdout."""
        metric = self.config.model.metric
        candidate = evaluation.scores
        champion_live = self.engine.serving.current
        champion = self._scores(champion_live.model, X_hold, y_hold) if champion_live else None
        counts = None
        if self.engine.schema.task == "classification":
            values, freq = np.unique(np.asarray([str(v) for v in y_hold]), return_counts=True)
            counts = dict(zip(values.tolist(), freq.tolist(), strict=True))
        verdict = self.gate.judge(
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
        metric = self.config.model.metric
        out = {metric: score(metric, model, X, y)}
        if self.live_metric != metric:
            out[self.live_metric] = score(self.live_metric, model, X, y)
        return out

    def _keep_rejected(
        self, job: Job, artifact: bytes, verdict: Verdict, details: dict[str, Any]
    ) -> None:
        keep = self.config.retrain.keep_rejected
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

    # -- bootstrap -------------------------------------------------------------------------
    def bootstrap(self) -> Outcome:
        """Train the first model from the configured source (blocking; on the job thread)."""
        engine = self.engine
        engine.bootstrap_state = "training"
        job = Job("bootstrap", ["bootstrap"], self.clock(), started=self.clock())
        self.metrics.retrain_triggers.labels("bootstrap").inc()
        start = time.monotonic()
        try:
            X, y, window = self._bootstrap_data()
        except (OSError, ValueError) as exc:
            self._bootstrap_failed(str(exc))
            engine.store.add_event("bootstrap_failed", {"error": str(exc)}, ts=self.clock())
            return "failed"
        n_hold = self._holdout_size(len(y))
        outcome, details = self.evaluate_and_deploy(
            job, X[:-n_hold], y[:-n_hold], X[-n_hold:], y[-n_hold:], window=window
        )
        details.pop("trained_until", None)
        engine.store.add_event(
            "retrain_finished",
            {"job": job.id, "reasons": job.reasons, "outcome": outcome, **details},
            ts=self.clock(),
        )
        if outcome != "skipped":
            self.metrics.retrain_runs.labels(outcome).inc()
            self.metrics.retrain_duration.observe(time.monotonic() - start)
        if outcome == "deployed":
            engine.bootstrap_state = "done"
            engine.bootstrap_failures = 0
        else:
            why = details.get("error") or details.get("skipped")
            verdict = details.get("verdict")
            if why is None and verdict is not None:
                why = "; ".join(r["reason"] for r in verdict["rules"] if not r["passed"])
            self._bootstrap_failed(why or "the first model failed the gate")
        return outcome

    def _bootstrap_failed(self, why: str) -> None:
        """Record a failed first fit and when it will be retried (backing off like retrains)."""
        engine, cfg = self.engine, self.config.retrain
        engine.bootstrap_failures += 1
        wait = min(
            cfg.cooldown_seconds * 2 ** (engine.bootstrap_failures - 1),
            max(cfg.backoff_max_seconds, cfg.cooldown_seconds),
        )
        engine.bootstrap_state, engine.bootstrap_error = "failed", why
        engine.bootstrap_retry_at = self.clock() + wait
        log.error("bootstrap failed (%s); retrying in %.0f s", why, wait)

    def _bootstrap_data(self) -> tuple[Any, list[Label], dict[str, Any]]:
        cfg = self.config.bootstrap
        schema = self.engine.schema
        if cfg.data is None:
            snap = self.engine.store.snapshot(limit=max(cfg.rows, cfg.min_rows))
            return matrix(schema, snap.numeric, snap.categorical), snap.labels, snap.window()
        if cfg.data == "synth":
            from driftd.ingest.streams import SyntheticStream

            demo = self.config.demo
            pairs = SyntheticStream(demo.stream, (demo.concepts[0],), cfg.rows, cfg.seed).take(
                cfg.rows
            )
            X = rows_to_matrix(schema, [p[0] for p in pairs])
            return X, [p[1] for p in pairs], {"rows": cfg.rows, "source": f"synth:{demo.stream}"}
        from driftd.ingest.history import read_history

        path = self.config.resolve(cfg.data)
        rows = [r for r in read_history(path, schema) if r.label is not None][-cfg.rows :]
        if len(rows) < cfg.min_rows:
            raise ValueError(
                f"{path}: {len(rows)} labelled rows, bootstrap.min_rows is {cfg.min_rows}"
            )
        X = rows_to_matrix(schema, [r.features for r in rows])
        return (
            X,
            [r.label for r in rows if r.label is not None],
            {"rows": len(rows), "source": str(path)},
        )

    # -- rollback and the post-deploy guard ------------------------------------------------
    def rollback(
        self, version: int | None = None, *, reason: str = "operator", why: str | None = None
    ) -> dict[str, Any]:
        """Serve ``version`` (default: the previous champion) again. Raises ValueError when there
        is nothing to roll back to, IntegrityError when the target fails verification."""
        engine = self.engine
        aliases = engine.reg.aliases()
        target = version if version is not None else aliases.previous
        if target is None:
            raise ValueError("there is no previous version to roll back to")
        if target not in engine.reg.numbers():
            raise ValueError(f"version {target} does not exist")
        if target == aliases.champion:
            raise ValueError(f"version {target} is already the champion")
        from_version = aliases.champion
        engine.activate(
            target, event="rollback", details={"from": from_version, "reason": reason, "why": why}
        )
        self.guard = None
        self.metrics.rollbacks.labels(reason).inc()
        self.metrics.deployed_at.set(self.clock())
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
        """Labels that met their predictions (on the ingest worker): feed the post-deploy guard."""
        guard = self.guard
        if guard is None:
            return
        for j in joined:
            if j.model_version != guard.version:
                continue
            guard.seen += 1
            if self.live_metric == "accuracy":
                guard.total += float(j.prediction == j.label)
            else:
                guard.total += abs(float(j.prediction) - float(j.label))
        if guard.seen < guard.needed:
            return
        self.guard = None
        higher = HIGHER_IS_BETTER[guard.metric]
        shortfall = guard.expected - guard.live if higher else guard.live - guard.expected
        record = {
            "version": guard.version,
            "metric": guard.metric,
            "holdout": guard.expected,
            "live": guard.live,
            "records": guard.seen,
        }
        if shortfall > self.config.guard.margin:
            why = (
                f"live {guard.metric} {guard.live:.4f} over {guard.seen} records is"
                f" {shortfall:.4f} short of its holdout {guard.expected:.4f}"
            )
            self.engine.store.add_event("guard_failed", record, ts=self.clock())
            # Roll back off the worker thread: activation itself runs on the worker.
            threading.Thread(
                target=self._guard_rollback, args=(guard, why), name="driftd-guard", daemon=True
            ).start()
        else:
            self.engine.store.add_event("guard_passed", record, ts=self.clock())

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
                "consecutive_rejections": p.consecutive_rejections,
                "drift_regime": None
                if p.regime is None
                else {"point": p.regime.point, "trained_rows": p.regime.trained_rows},
                "guard": None
                if self.guard is None
                else {
                    "version": self.guard.version,
                    "seen": self.guard.seen,
                    "needed": self.guard.needed,
                },
                "last_job": self.last_job,
            }

    def _persist(self) -> None:
        self.engine.store.put_state(POLICY_KEY, self.policy.to_dict())

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


def _finite(scores: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in scores.items()}


def _rows(schema: Any, X: Any) -> list[dict[str, Any]]:
    """Matrix rows back to feature dicts (for the warm-up rows kept in the manifest)."""
    names = [*schema.numeric, *schema.categorical]
    return [
        {n: (float(v) if n in schema.numeric else str(v)) for n, v in zip(names, row, strict=True)}
        for row in np.asarray(X, dtype=object)
    ]
