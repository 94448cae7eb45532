"""The first model: when to train it, from what, and why none serves yet.

The one owner of the bootstrap. Its data is a history file, river's synthetic stream (the demo),
or, with neither configured, the first ``min_rows`` labelled records the daemon receives. A
failed first fit is retried after ``retry_seconds``, doubled after each failure up to the
retrain stage's ``backoff_max_seconds`` (in seconds, not labels: with no model serving, no
labelled traffic may come to count); a fit that the daemon's shutdown cancelled is no failure,
and the next start, with still no model, trains again. The fit, the gate and the deploy are the
retrainer's, as for any retrain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from driftd.ingest.history import read_history
from driftd.ingest.schema import Label, Schema
from driftd.ingest.streams import StreamName, SyntheticStream
from driftd.metrics import Metrics
from driftd.models.inputs import matrix, rows_to_matrix
from driftd.models.serving import Serving
from driftd.retrain.config import BootstrapConfig
from driftd.retrain.policy import Job, Outcome
from driftd.retrain.retrainer import Retrainer
from driftd.store import RecordStore

__all__ = ["Bootstrap", "Synthetic"]

log = logging.getLogger(__name__)

State = Literal["idle", "training", "failed", "done"]
#: river's stream and the concept the first model is trained on (``bootstrap.data = "synth"``).
Synthetic = tuple[StreamName, int]


class Bootstrap:
    """Trains the first model once no model serves.

    Parameters
    ----------
    config
        ``[bootstrap]``; with ``history`` and ``synthetic`` both None, the data is the store's.
    history
        The history file to train on (``bootstrap.data``, resolved against the config file).
    synthetic
        River's stream and concept to train on (``bootstrap.data = "synth"``).
    retry, backoff_max
        The wait before retrying a failed bootstrap, doubled per failure, and its cap.
    """

    def __init__(
        self,
        config: BootstrapConfig,
        retrainer: Retrainer,
        store: RecordStore,
        serving: Serving,
        metrics: Metrics,
        *,
        schema: Schema,
        history: Path | None = None,
        synthetic: Synthetic | None = None,
        retry: float = 60.0,
        backoff_max: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.retrainer = retrainer
        self.store = store
        self.serving = serving
        self.metrics = metrics
        self.schema = schema
        self.history = history
        self.synthetic = synthetic
        self.retry = retry
        self.backoff_max = backoff_max
        self.clock = clock
        self._state: State = "idle"
        self._error: str | None = None
        self._failures = 0
        self._retry_at = 0.0

    @property
    def from_traffic(self) -> bool:
        """Whether the first model waits for labelled traffic (no file, no synthetic stream)."""
        return self.history is None and self.synthetic is None

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    def status(self) -> dict[str, Any]:
        return {"state": self._state, "error": self._error, "failures": self._failures}

    def due(self) -> bool:
        """Whether the first model should be trained now: none serves, none is training, a
        failure's wait is over, and there is data to train on."""
        if self.serving.current is not None or self._state == "training":
            return False
        if self._state == "failed" and self.clock() < self._retry_at:
            return False
        if not self.from_traffic:
            return True
        return self.store.labelled_count() >= self.config.min_rows

    def no_model_reason(self) -> str:
        """Why no model serves, for a 503 and for systemd's STATUS."""
        if self._state == "training":
            return "no model yet: the first model is being trained"
        if self._state == "failed":
            wait = max(0.0, self._retry_at - self.clock())
            return f"no model: bootstrap failed ({self._error}); retrying in {wait:.0f} s"
        if self.from_traffic:
            have = self.store.labelled_count()
            return (
                f"no model yet: waiting for {self.config.min_rows} labelled records"
                f" to train the first one ({have} so far)"
            )
        return "no model yet"

    def run(self) -> Outcome:
        """Train, gate and deploy the first model (blocking; on the job thread)."""
        self._state = "training"
        job = Job("bootstrap", ["bootstrap"], self.clock(), started=self.clock())
        self.metrics.retrain_triggers.labels("bootstrap").inc()
        start = time.monotonic()
        try:
            X, y, window = self._data()
        except (OSError, ValueError) as exc:
            self._failed(str(exc))
            self.store.add_event("bootstrap_failed", {"error": str(exc)}, ts=self.clock())
            return "failed"
        n_hold = self.retrainer.holdout_size(len(y))
        outcome, details = self.retrainer.evaluate_and_deploy(
            job, X[:-n_hold], y[:-n_hold], X[-n_hold:], y[-n_hold:], window=window
        )
        details.pop("trained_until", None)
        if outcome == "cancelled":
            self._state = "idle"
            return outcome
        self.store.add_event(
            "retrain_finished",
            {"job": job.id, "reasons": job.reasons, "outcome": outcome, **details},
            ts=self.clock(),
        )
        if outcome != "skipped":
            self.metrics.retrain_runs.labels(outcome).inc()
            self.metrics.retrain_duration.observe(time.monotonic() - start)
        if outcome == "deployed":
            self._state, self._failures = "done", 0
        else:
            why = details.get("error") or details.get("skipped")
            verdict = details.get("verdict")
            if why is None and verdict is not None:
                why = "; ".join(r["reason"] for r in verdict["rules"] if not r["passed"])
            self._failed(why or "the first model failed the gate")
        return outcome

    def _failed(self, why: str) -> None:
        self._failures += 1
        wait = min(self.retry * 2 ** (self._failures - 1), max(self.backoff_max, self.retry))
        self._state, self._error = "failed", why
        self._retry_at = self.clock() + wait
        log.error("bootstrap failed (%s); retrying in %.0f s", why, wait)

    def _data(self) -> tuple[Any, list[Label], dict[str, Any]]:
        cfg, schema = self.config, self.schema
        if self.synthetic is not None:
            stream, concept = self.synthetic
            pairs = SyntheticStream(stream, (concept,), cfg.rows, cfg.seed).take(cfg.rows)
            X = rows_to_matrix(schema, [p[0] for p in pairs])
            return X, [p[1] for p in pairs], {"rows": cfg.rows, "source": f"synth:{stream}"}
        if self.history is not None:
            path = self.history
            rows = [r for r in read_history(path, schema) if r.label is not None][-cfg.rows :]
            if len(rows) < cfg.min_rows:
                raise ValueError(
                    f"{path}: {len(rows)} labelled rows, bootstrap.min_rows is {cfg.min_rows}"
                )
            X = rows_to_matrix(schema, [r.features for r in rows])
            labels = [r.label for r in rows if r.label is not None]
            return X, labels, {"rows": len(rows), "source": str(path)}
        snap = self.store.snapshot(limit=max(cfg.rows, cfg.min_rows))
        return matrix(schema, snap.numeric, snap.categorical), snap.labels, snap.window()
