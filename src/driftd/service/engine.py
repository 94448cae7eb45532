"""The engine: what happens to traffic and models, independent of HTTP and of the process.

It ties the store, the registry, the serving reference, the monitor and the metrics together.
Everything that touches the store's writer or the monitor runs on one worker thread, in
arrival order, so a record's index, its storage and its pass through the detectors agree; the
HTTP handlers, the demo source and replay all call the same methods.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from driftd._fs import atomic_write
from driftd.config import Config
from driftd.errors import IntegrityError
from driftd.ingest.batch import Batch
from driftd.ingest.columns import Columns
from driftd.ingest.schema import Label, LabelRecord, Record, Schema
from driftd.ingest.validation import Validators
from driftd.metrics import Metrics
from driftd.models.inputs import rows_to_matrix
from driftd.models.registry import Registry, Version
from driftd.models.serving import LiveModel, Serving, WarmupError
from driftd.monitor import CheckpointMismatch, Monitor, MonitorEvent
from driftd.store import IngestResult, Joined, Store

__all__ = ["Engine", "NoModel", "PredictResult"]

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT = "monitor.ckpt"


class NoModel(RuntimeError):
    """No model is serving yet (the registry is empty and bootstrap has not finished)."""


@dataclass(slots=True)
class PredictResult:
    predictions: list[Label]
    ids: list[str]
    version: int
    duplicates: list[str] = field(default_factory=list)


class Loader(Protocol):
    """Loads verified artifact bytes elsewhere (the training worker) and returns the model, or
    ``None`` when it cannot now; raises :class:`IntegrityError` for bytes it refuses."""

    def __call__(
        self, data: bytes, /, *, extra_trusted: Iterable[str], cancel: threading.Event
    ) -> Any: ...


class Engine:
    """One daemon's working parts. ``open()`` before use, ``close()`` after."""

    def __init__(
        self, config: Config, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.schema: Schema = config.schema_obj()
        self.validators = Validators(self.schema)
        self.metrics = metrics
        self.clock = clock
        self.state_dir = config.state_dir
        self.store = Store(self.state_dir / "driftd.sqlite3", self.schema)
        self.registry: Registry | None = None
        self.serving = Serving()
        self.monitor = Monitor(self.schema, config.monitor)
        self.monitor_index = 0
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftd-ingest")
        self.cancel = threading.Event()
        self.on_alarm: Callable[[MonitorEvent], None] | None = None
        self.on_joined: Callable[[list[Joined]], None] | None = None
        self.loader: Loader | None = None  # the daemon's training worker
        self.bootstrap_state = "idle"
        self.bootstrap_error: str | None = None
        self.bootstrap_failures = 0
        self.bootstrap_retry_at = 0.0
        self.started = clock()
        self.load_failures: list[str] = []
        self._store_records = 0
        self._previous: LiveModel | None = None  # the champion before the last swap, loaded

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        _serve_single_threaded()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        self.store.open()
        self.registry = Registry(
            self.state_dir / "models", extra_trusted=self.config.model.trusted_types
        )
        self.registry.sweep()
        for leftover in self.state_dir.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
        self.metrics.declare_features(
            ((s.signal, s.feature or "") for s in self.monitor.detector_states()),
            self.schema.categorical,
        )
        self._restore_monitor()
        self.load_champion()
        m = self.metrics.live
        m.detectors = lambda: (
            (s.signal, s.feature or "", s.state, s.estimate) for s in self.monitor.detector_states()
        )
        m.store_records = lambda: self._store_records
        m.live_score = lambda: self.monitor.live_score
        m.unseen = lambda: self.monitor.unseen_categories
        self._store_records = self.store.counts()["records"]

    def close(self) -> None:
        try:
            self.checkpoint()
        except Exception:
            log.exception("could not write the monitor checkpoint at shutdown")
        self.worker.shutdown(wait=True)
        self.store.close()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the ingest worker and wait for it (from any thread but the worker)."""
        return self.worker.submit(fn, *args).result()

    # -- models ----------------------------------------------------------------------------
    @property
    def reg(self) -> Registry:
        if self.registry is None:
            raise RuntimeError("the engine is not open")
        return self.registry

    def load_champion(self) -> None:
        """Serve the champion; if it fails verification, the newest valid version, and say so."""
        aliases = self.reg.aliases()
        numbers = self.reg.numbers()
        candidates = ([aliases.champion] if aliases.champion in numbers else []) + [
            n for n in reversed(numbers) if n != aliases.champion
        ]
        for number in candidates:
            try:
                live = self._load(number)
            except (IntegrityError, WarmupError) as exc:
                self.metrics.model_load_failures.inc()
                self.load_failures.append(f"v{number:06d}: {exc}")
                log.error("refusing model v%06d: %s", number, exc)
                self.store.add_event(
                    "model_load_failed", {"version": number, "error": str(exc)}, ts=self.clock()
                )
                continue
            if number != aliases.champion:
                why = (
                    f"champion v{aliases.champion:06d} failed to load; serving v{number:06d}"
                    if aliases.champion is not None
                    else f"no champion alias; serving the newest valid version v{number:06d}"
                )
                self.serving.fallback_reason = why
                log.warning("%s", why)
                self.store.add_event(
                    "model_fallback", {"version": number, "reason": why}, ts=self.clock()
                )
                self.reg.set_champion(number)
            self._activate(live, event=None)
            return
        if numbers:
            log.error("no model version in %s could be loaded", self.reg.root)

    def _load(self, number: int, warmup: Any = None, *, model: Any = None) -> LiveModel:
        """Verify a version's bytes, load them (unless ``model`` is them already loaded), warm
        the model up."""
        version, data = self.reg.read(number)
        if model is None and self.loader is not None:
            try:
                model = self.loader(data, extra_trusted=self.reg.extra_trusted, cancel=self.cancel)
            except IntegrityError as exc:
                raise IntegrityError(f"{version.name}: {exc}") from exc
            except Exception:  # whatever went wrong there, load it here
                log.exception(
                    "loading %s in the training worker failed; loading it here", version.name
                )
        if model is None:
            model = self.reg.loads(version, data)
        live = LiveModel(number, model, version.manifest, self.clock())
        rows = warmup if warmup is not None else self._warmup_rows(version)
        live.warm_up(rows)
        return live

    def _warmup_rows(self, version: Version) -> Any:
        rows = version.manifest.get("warmup") or []
        if not rows:
            raise WarmupError(f"{version.name}: manifest has no warm-up rows")
        try:
            return rows_to_matrix(self.schema, rows)
        except (KeyError, ValueError, TypeError) as exc:
            raise WarmupError(
                f"{version.name}: warm-up rows do not match the schema ({exc})"
            ) from exc

    def _activate(self, live: LiveModel, *, event: dict[str, Any] | None) -> None:
        old = self.serving.swap(live)
        self._previous = old if self.config.model.keep_previous else None
        self.metrics.set_model(live.version, live.manifest)
        if event is not None:
            self.store.add_event("deploy", {**event, "version": live.version}, ts=self.clock())

    def deploy(
        self, artifact: bytes, manifest: dict[str, Any], warmup: Any, *, model: Any = None
    ) -> Version:
        """The swap primitive: publish an immutable version, verify it on disk and load it, warm
        it up, then (on the worker) move the champion alias, swap the reference and rebaseline.

        ``model`` is ``artifact`` already loaded (by the training process, with the same trusted
        types): then only the published bytes are read back and verified, and that object
        serves, so the serving process does not spend the load's GIL time beside requests."""
        version = self.reg.publish(artifact, manifest)
        live = self._load(version.number, warmup, model=model)
        self._switch(live, "deploy", {"reason": manifest.get("reason"), "job": manifest.get("job")})
        log.info("deployed v%06d (%s)", version.number, manifest.get("reason"))
        return version

    def activate(self, number: int, *, event: str, details: dict[str, Any]) -> LiveModel:
        """Serve an existing version again (rollback): the previous champion if it is still
        loaded (verified and warmed up when it was), else verify, warm up; then switch."""
        kept = self._previous
        if kept is not None and kept.version == number:
            live = LiveModel(kept.version, kept.model, kept.manifest, self.clock())
        else:
            live = self._load(number)
        self._switch(live, event, details)
        return live

    def _switch(self, live: LiveModel, event: str, details: dict[str, Any]) -> None:
        """Move the alias (here: its fsyncs must not hold up requests queued on the worker),
        then, on the worker and in order with ingest, swap the reference and rebaseline. A crash
        between the two serves the new champion after the restart, as intended."""
        aliases = self.reg.set_champion(live.version)

        def switch() -> None:
            self.serving.fallback_reason = None
            self._activate(live, event=None)
            self.store.add_event(
                event,
                {**details, "version": live.version, "previous": aliases.previous},
                ts=self.clock(),
            )
            self.monitor.rebaseline(self.monitor_index, self.clock())

        self.run(switch)

    # -- traffic (on the worker) -----------------------------------------------------------
    def predict(
        self, instances: list[dict[str, float | str]], ids: list[str] | None, now: float
    ) -> PredictResult:
        live = self.serving.current  # read once: this request uses this model to the end
        if live is None:
            raise NoModel(self._no_model_reason())
        X = rows_to_matrix(self.schema, instances)
        preds = live.predict(X)
        batch = Batch(instances, now, ids=ids, predictions=preds, model_version=live.version)
        result = self.store.add_records(batch, source="predict", received=now)
        self.metrics.predictions.inc(len(instances))
        self._after_ingest(result, batch, "predict", now)
        return PredictResult(preds, list(result.ids), live.version, result.duplicates)

    def add_records(
        self, records: Sequence[Record] | Columns, source: str, now: float
    ) -> IngestResult:
        batch = records.batch(now) if isinstance(records, Columns) else _batch(records, now)
        result = self.store.add_records(batch, source=source, received=now)
        self._after_ingest(result, batch, source, now)
        return result

    def _after_ingest(self, result: IngestResult, batch: Batch, source: str, now: float) -> None:
        self.metrics.records.labels(source).inc(result.accepted)
        self._store_records += result.accepted
        if result.duplicates:
            self.metrics.duplicates.inc(len(result.duplicates))
        if result.accepted:
            features, predictions = batch.features, batch.predictions
            if result.inserted is not None:  # leave out the re-sent records
                kept = result.inserted
                features = [f for f, k in zip(features, kept, strict=True) if k]
                if predictions is not None:
                    predictions = [p for p, k in zip(predictions, kept, strict=True) if k]
            if predictions is not None and all(p is None for p in predictions):
                predictions = None
            events = self.monitor.update(
                result.inserted_idx[0], features, predictions, now, numeric=result.numeric
            )
            self.monitor_index = result.inserted_idx[-1]
            self._record_events(events, now)
        if result.joined:
            self._outcomes(result.joined, now)
        if self.on_joined is not None and result.joined:
            self.on_joined(result.joined)

    def add_labels(self, labels: Sequence[LabelRecord], now: float) -> dict[str, Any]:
        result = self.store.add_labels(
            [(lb["id"], lb["label"], lb.get("timestamp", now)) for lb in labels]
        )
        accepted = len(labels) - len(result.duplicates)
        self.metrics.labels.inc(accepted)
        if result.duplicates:
            self.metrics.duplicates.inc(len(result.duplicates))
        self._outcomes(result.joined, now)
        if self.on_joined is not None and result.joined:
            self.on_joined(result.joined)
        return {
            "accepted": accepted,
            "joined": len(result.joined),
            "pending": result.pending,
            "duplicates": result.duplicates,
        }

    def _outcomes(self, joined: list[Joined], now: float) -> None:
        for j in joined:
            self.metrics.label_delay.observe(j.delay)
        if not joined:
            return
        events = self.monitor.update_outcomes(
            [j.idx for j in joined], [j.prediction for j in joined], [j.label for j in joined], now
        )
        self._record_events(events, now)

    def _record_events(self, events: list[MonitorEvent], now: float) -> None:
        if not events:
            return
        rows = []
        for e in events:
            if e.kind == "detection":
                self.metrics.drift_detected.labels(e.signal, e.feature or "").inc()
            elif e.kind == "alarm" and e.alarm is not None:
                self.metrics.drift_alarms.labels(e.alarm).inc()
                if self.on_alarm is not None:
                    self.on_alarm(e)
                log.warning(
                    "drift alarm (%s) at record %d, change point %d",
                    e.alarm,
                    e.index,
                    e.change_point,
                )
            kind = "drift_alarm" if e.kind == "alarm" else f"drift_{e.kind}"
            rows.append((kind, e.as_dict(), now, e.index))
        self.store.add_events(rows)

    # -- monitor checkpoint ----------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write the detector state atomically (header line, then the monitor's bytes)."""

        def dump() -> tuple[int, bytes]:
            return self.monitor_index, self.monitor.dumps()

        index, data = self.run(dump)
        header = {"format": 1, "last_index": index, "schema": self.schema.fingerprint()}
        atomic_write(self.state_dir / CHECKPOINT, json.dumps(header).encode() + b"\n" + data)

    def _restore_monitor(self) -> None:
        path = self.state_dir / CHECKPOINT
        last = 0
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        if raw:
            try:
                head, _, body = raw.partition(b"\n")
                header = json.loads(head)
                self.monitor = Monitor.loads(body, self.schema, self.config.monitor)
                last = int(header["last_index"])
                log.info("monitor restored from its checkpoint at record %d", last)
            except CheckpointMismatch as exc:
                self._monitor_reset(f"checkpoint written under another configuration ({exc})")
            except (ValueError, KeyError, TypeError, EOFError) as exc:
                self._monitor_reset(f"checkpoint unreadable ({type(exc).__name__}: {exc})")
        self.monitor_index = last
        # Catch up with records stored after the checkpoint (a crash between checkpoints).
        replayed = 0
        while True:
            batch = self.store.records_after(self.monitor_index)
            if not batch:
                break
            preds = [b[2] for b in batch]
            self.monitor.update(
                batch[0][0],
                [b[1] for b in batch],
                preds if any(p is not None for p in preds) else None,
                self.clock(),
            )
            self.monitor_index = batch[-1][0]
            replayed += len(batch)
        if replayed:
            log.info("monitor caught up on %d record(s) stored after its checkpoint", replayed)

    def _monitor_reset(self, why: str) -> None:
        log.warning("monitor starts fresh: %s", why)
        self.monitor = Monitor(self.schema, self.config.monitor)
        self.store.add_event("monitor_reset", {"reason": why}, ts=self.clock())

    # -- bootstrap -------------------------------------------------------------------------
    def _no_model_reason(self) -> str:
        if self.bootstrap_state == "training":
            return "no model yet: the first model is being trained"
        if self.bootstrap_state == "failed":
            wait = max(0.0, self.bootstrap_retry_at - self.clock())
            return f"no model: bootstrap failed ({self.bootstrap_error}); retrying in {wait:.0f} s"
        if self.config.bootstrap.data is None:
            have = self.store.labelled_count()
            return (
                f"no model yet: waiting for {self.config.bootstrap.min_rows} labelled records"
                f" to train the first one ({have} so far)"
            )
        return "no model yet"

    def bootstrap_due(self) -> bool:
        """Whether the first model should be trained now (no model, and data to train on). A
        failed bootstrap is retried after the retrain cooldown, doubled after each failure."""
        if self.serving.current is not None or self.bootstrap_state == "training":
            return False
        if self.bootstrap_state == "failed" and self.clock() < self.bootstrap_retry_at:
            return False
        if self.config.bootstrap.data is not None:
            return True
        return self.store.labelled_count() >= self.config.bootstrap.min_rows

    # -- reads -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        live = self.serving.current
        model: dict[str, Any] | None = None
        if live is not None:
            model = {
                "version": live.version,
                "estimator": live.manifest.get("estimator"),
                "created": live.manifest.get("created"),
                "reason": live.manifest.get("reason"),
                "metrics": live.manifest.get("metrics"),
                "loaded_at": live.loaded_at,
                "fallback": self.serving.fallback_reason,
            }
        metric, value = self.monitor.live_score
        return {
            "ready": live is not None,
            "uptime_seconds": round(self.clock() - self.started, 3),
            "model": model,
            "bootstrap": {
                "state": self.bootstrap_state,
                "error": self.bootstrap_error,
                "failures": self.bootstrap_failures,
            },
            "store": self.store.counts(),
            "monitor": self.monitor.status(),
            "live_score": {"metric": metric, "value": value},
            "recent_events": [e.as_dict() for e in self.store.events(limit=10)],
        }

    def models(self) -> dict[str, Any]:
        aliases = self.reg.aliases()
        return {
            "aliases": aliases.as_dict(),
            "serving": self.serving.current.version if self.serving.current else None,
            "versions": [
                {k: v for k, v in ver.manifest.items() if k != "warmup"}
                for ver in reversed(self.reg.versions())
            ],
        }

    def trim(self) -> int:
        cfg = self.config.store
        deleted = self.store.trim(
            max_rows=cfg.retention_rows, max_age=cfg.retention_seconds, now=self.clock()
        )
        if deleted:
            self._store_records = self.store.counts()["records"]
        return deleted


def _serve_single_threaded() -> None:
    """Limit OpenMP and BLAS to one thread in the serving process.

    Predictions here are a few rows at a time, where a thread pool only adds wake-up latency,
    and on a busy host its spinning threads compete with the request path (a single-row
    HistGradientBoosting predict was measured at over 400 ms under load with the default
    pools). Training runs in its own process and keeps every core.
    """
    import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime so that the limit reaches it
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _batch(records: Sequence[Record], now: float) -> Batch:
    """Validated records as the store's columns; a record without a time gets ``now``."""
    given: set[str] = set().union(*records)  # the optional fields any record has
    return Batch(
        [r["features"] for r in records],
        [r.get("timestamp") or now for r in records] if "timestamp" in given else now,
        ids=[r.get("id") for r in records] if "id" in given else None,
        predictions=[r.get("prediction") for r in records] if "prediction" in given else None,
        labels=[r.get("label") for r in records] if "label" in given else None,
    )
