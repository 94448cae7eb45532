"""Every Prometheus metric driftd exports, on an injected ``CollectorRegistry``.

Names follow ``driftd_<subsystem>_<name>_<unit>``; counters end in ``_total``, durations are in
seconds. Labelled series whose values are known in advance (sources, rejection reasons,
features) are created at start so that they export zeros rather than go missing. Gauges that
mirror live state (detector states, the store size) are read at scrape time by a collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from driftd import __version__

__all__ = ["ALERT_KINDS", "REJECT_REASONS", "SOURCES", "SOURCE_OUTCOMES", "Metrics"]

SOURCES = ("predict", "records", "demo", "replay")  # a broker source adds its own (nats)
REJECT_REASONS = (
    "invalid_record",
    "malformed_json",
    "body_too_large",
    "batch_too_large",
    "unsupported_media_type",
    "unauthorized",
    "no_model",
    "read_timeout",
    # refused before any data: not counted in the share of ingest refused (rules, dashboard)
    "invalid_parameter",
    "not_found",
    "method_not_allowed",
    "idle_connection",
)
TRIGGER_REASONS = ("drift", "drift_growth", "challenger", "schedule", "operator", "bootstrap")
SKIP_REASONS = ("cooldown", "backoff", "too_few_new_labels", "too_few_rows", "single_class")
DEFER_REASONS = ("cooldown", "backoff", "too_few_new_labels")
OUTCOMES = ("deployed", "rejected", "failed", "timeout")
#: What a broker source did with a message: stored it, refused it for good, or asked again.
SOURCE_OUTCOMES = ("acked", "termed", "naked")
ALERT_KINDS = (
    "candidate_rejected",
    "training_failed",
    "training_timeout",
    "model_load_failed",
    "rolled_back",
    "consecutive_rejections",
)
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)

StateReader = Callable[[], Iterable[tuple[str, str, int, float]]]


class _LiveCollector(Collector):
    """Gauges computed at scrape time from the daemon's live state."""

    def __init__(self) -> None:
        self.detectors: StateReader = lambda: ()
        self.store_records: Callable[[], int] = lambda: 0
        self.live_score: Callable[[], tuple[str, float | None]] = lambda: ("accuracy", None)
        self.estimated: Callable[[], Mapping[str, Mapping[str, float]]] = dict
        self.unseen: Callable[[], Mapping[str, int]] = dict
        self.categorical: list[str] = []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "driftd_drift_state",
            "Detector state: 0 stable, 1 warning, 2 drift.",
            labels=["signal", "feature"],
        )
        estimate = GaugeMetricFamily(
            "driftd_detector_estimate",
            "The detector's current estimate of its input (e.g. ADWIN's window mean).",
            labels=["signal", "feature"],
        )
        for signal, feature, level, value in self.detectors():
            state.add_metric([signal, feature], level)
            estimate.add_metric([signal, feature], value)
        yield state
        yield estimate
        yield GaugeMetricFamily(
            "driftd_store_records", "Records held in the store.", value=self.store_records()
        )
        metric, live = self.live_score()
        score = GaugeMetricFamily(
            "driftd_live_score",
            "Windowed score of the serving model on labelled traffic (NaN until enough labels).",
            labels=["metric"],
        )
        score.add_metric([metric], float("nan") if live is None else live)
        yield score
        estimated = GaugeMetricFamily(
            "driftd_estimated_score",
            "The serving model's score estimated from its class probabilities over the live"
            " window, before labels arrive (CBPE; absent until enough predictions).",
            labels=["metric"],
        )
        band = GaugeMetricFamily(
            "driftd_estimated_score_band",
            "Bounds of the estimated score's sampling-error band (3 standard errors).",
            labels=["metric", "bound"],
        )
        for name, est in self.estimated().items():
            estimated.add_metric([name], est["value"])
            band.add_metric([name, "lower"], est["lower"])
            band.add_metric([name, "upper"], est["upper"])
        yield estimated
        yield band
        # A counter kept by the monitor (it survives restarts in the checkpoint); exported
        # here so that every categorical feature has a series from the start.
        unseen = CounterMetricFamily(
            "driftd_unseen_categories",
            "Values of a categorical feature not seen in its reference.",
            labels=["feature"],
        )
        counts = self.unseen()
        for feature in self.categorical:
            unseen.add_metric([feature], counts.get(feature, 0))
        yield unseen

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class Metrics:
    """The daemon's metrics. Tests build one on a fresh registry and read ``get_sample_value``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.build_info = Gauge("driftd_build_info", "driftd build.", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        # ingest
        self.records = Counter("driftd_records", "Records accepted.", ["source"], registry=r)
        self.rejected = Counter(
            "driftd_records_rejected",
            "Requests or records refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "driftd_records_duplicate",
            "Records or labels re-sent for an id already stored.",
            registry=r,
        )
        self.labels = Counter("driftd_labels", "Delayed labels accepted.", registry=r)
        self.label_delay = Histogram(
            "driftd_label_delay_seconds",
            "Time from a record to its label.",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        # serving
        self.predictions = Counter("driftd_predictions", "Predictions served.", registry=r)
        self.predict_duration = Histogram(
            "driftd_predict_duration_seconds",
            "Time to answer POST /v1/predict, storage included.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_version = Gauge(
            "driftd_model_version", "Version of the serving model (0: none).", registry=r
        )
        self.model_info = Gauge(
            "driftd_model_info", "The serving model.", ["version", "estimator"], registry=r
        )
        self.model_load_failures = Counter(
            "driftd_model_load_failures",
            "Model versions refused at load (integrity, trust, warm-up).",
            registry=r,
        )
        # monitor
        self.drift_detected = Counter(
            "driftd_drift_detected", "Detector firings.", ["signal", "feature"], registry=r
        )
        self.drift_alarms = Counter(
            "driftd_drift_alarms", "Drift alarms raised.", ["kind"], registry=r
        )
        # retraining
        self.retrain_triggers = Counter(
            "driftd_retrain_triggers", "Retrain requests, by reason.", ["reason"], registry=r
        )
        self.retrain_skipped = Counter(
            "driftd_retrain_skipped",
            "Retrain requests or jobs skipped, by why.",
            ["reason"],
            registry=r,
        )
        self.retrain_deferred = Counter(
            "driftd_retrain_deferred",
            "Drift retrains that were due but had to wait (they start once they may), by why.",
            ["reason"],
            registry=r,
        )
        self.retrain_runs = Counter(
            "driftd_retrain_runs", "Finished retrain jobs, by outcome.", ["outcome"], registry=r
        )
        self.retrain_duration = Histogram(
            "driftd_retrain_duration_seconds",
            "Wall time of a retrain job: snapshot, fit, evaluation, gate and deploy.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.retrain_pending = Gauge(
            "driftd_retrain_pending",
            "Retrain jobs waiting (0 or 1) or running (counted apart).",
            ["state"],
            registry=r,
        )
        self.gate_score = Gauge(
            "driftd_gate_score",
            "Last holdout score at the gate, by model.",
            ["model", "metric"],
            registry=r,
        )
        self.gate_threshold = Gauge(
            "driftd_gate_threshold",
            "The gate's absolute threshold on the metric (absent when none is set).",
            ["metric"],
            registry=r,
        )
        self.deployed_at = Gauge(
            "driftd_model_deployed_timestamp_seconds",
            "When the serving model was deployed.",
            registry=r,
        )
        self.rollbacks = Counter(
            "driftd_rollbacks", "Rollbacks, by reason.", ["reason"], registry=r
        )
        for reason in TRIGGER_REASONS:
            self.retrain_triggers.labels(reason)
        for reason in SKIP_REASONS:
            self.retrain_skipped.labels(reason)
        for reason in DEFER_REASONS:
            self.retrain_deferred.labels(reason)
        for outcome in OUTCOMES:
            self.retrain_runs.labels(outcome)
        for state in ("waiting", "running"):
            self.retrain_pending.labels(state)
        for reason in ("operator", "guard"):
            self.rollbacks.labels(reason)
        # alerts
        self.alerts_sent = Counter(
            "driftd_alerts_sent", "Alerts delivered to a receiver, by kind.", ["kind"], registry=r
        )
        self.alerts_failed = Counter(
            "driftd_alerts_failed", "Alert deliveries that failed after every retry.", registry=r
        )
        for kind in ALERT_KINDS:
            self.alerts_sent.labels(kind)
        # broker sources (service/jetstream.py); series made by declare_source
        self.source_messages = Counter(
            "driftd_source_messages",
            "Broker messages handled, by outcome: acked (stored, or duplicates of stored ids),"
            " termed (refused input, never delivered again), naked (not stored this time: the"
            " broker delivers it again later).",
            ["source", "kind", "outcome"],
            registry=r,
        )
        self.source_redeliveries = Counter(
            "driftd_source_redeliveries",
            "Broker messages delivered more than once (their ids are then duplicates).",
            ["source", "kind"],
            registry=r,
        )
        self.source_pending = Gauge(
            "driftd_source_pending_messages",
            "Consumer lag: messages not delivered yet (undelivered), delivered and not yet"
            " acknowledged (unacked).",
            ["source", "state"],
            registry=r,
        )
        self.source_connected = Gauge(
            "driftd_source_connected",
            "1 while the source is connected to its broker and consuming, 0 otherwise.",
            ["source"],
            registry=r,
        )
        self.source_connect_failures = Counter(
            "driftd_source_connect_failures",
            "Attempts to connect to (and set up the consumer on) the broker that failed, and"
            " connections lost; each is retried with backoff.",
            ["source"],
            registry=r,
        )
        self.live = _LiveCollector()
        r.register(self.live)
        for source in SOURCES:
            self.records.labels(source)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for kind in ("data_drift", "concept_drift", "performance_drop_estimated"):
            self.drift_alarms.labels(kind)

    def declare_source(self, source: str, kinds: Iterable[str]) -> None:
        """Create a broker source's series so that they export zeros from the start."""
        self.records.labels(source)
        self.source_connected.labels(source).set(0)
        self.source_connect_failures.labels(source)
        for state in ("undelivered", "unacked"):
            self.source_pending.labels(source, state)
        for kind in kinds:
            self.source_redeliveries.labels(source, kind)
            for outcome in SOURCE_OUTCOMES:
                self.source_messages.labels(source, kind, outcome)

    def declare_features(
        self, signals: Iterable[tuple[str, str]], categorical: Iterable[str]
    ) -> None:
        """Create the per-feature series so that they export zeros from the start."""
        for signal, feature in signals:
            self.drift_detected.labels(signal, feature)
        self.live.categorical = list(categorical)

    def read_live(
        self,
        *,
        detectors: StateReader,
        store_records: Callable[[], int],
        live_score: Callable[[], tuple[str, float | None]],
        unseen: Callable[[], Mapping[str, int]],
        estimated: Callable[[], Mapping[str, Mapping[str, float]]] = dict,
    ) -> None:
        """Where the scrape-time gauges read the daemon's live state from."""
        live = self.live
        live.detectors, live.store_records = detectors, store_records
        live.live_score, live.unseen, live.estimated = live_score, unseen, estimated

    def set_model(self, version: int, manifest: dict[str, Any]) -> None:
        self.model_version.set(version)
        self.model_info.clear()
        self.model_info.labels(str(version), str(manifest.get("estimator", "unknown"))).set(1)
