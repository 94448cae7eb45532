"""The engine: what happens to traffic, independent of HTTP and of the process.

Everything that touches the store's writer or the monitor runs one at a time, in arrival order,
so that a record's index, its storage and its pass through the detectors agree: a prediction, a
batch of records, a batch of labels, and a model swap (which the lifecycle runs in order through
:meth:`Engine.run`, so that the detectors rebaseline at the record the new model starts at).
That work goes to one worker thread (:meth:`Engine.submit`), which holds the engine's lock for
each piece. The HTTP routes, the demo source and replay all call the same methods. The engine
owns the monitor and its checkpoint; which model serves is the lifecycle's
(:mod:`driftd.models.lifecycle`), read here once per request.

A prediction's class probabilities are stored raw, as the model gave them, and the estimate is
fed them calibrated by the serving version: the stored rows stay what the model said whatever a
version's calibration was, so that a later calibrator can be fitted on them and their labels.

A prediction from the HTTP API is answered once it is committed, and passes through the monitor
in order just after its answer is sent (:meth:`Engine.monitor_soon`): the monitor's alarms do
not need to be ahead of the answer, and the client should not wait for them. Every other piece
of work passes what is committed through the monitor first, so the detectors still see every
record in index order and a swap rebaselines them at the right one.

Predictions are committed in groups (:meth:`Engine.submit_predict`): whoever takes them takes
every request waiting, answers them from one model call and stores them in one transaction,
then answers each. Concurrent clients share one commit and one pass through sklearn's input
checks instead of queueing for one each.

* An idle engine on a store that commits quickly (:meth:`Engine.settle_here`): the event loop,
  having read the requests that arrived together, takes the lock and settles them itself. A
  hop to the worker and back costs more than a small prediction does, and nothing is waiting
  that they could jump ahead of.
* Otherwise (large requests, a slow model or commit, other work waiting) the worker does.

On a store that several daemons of the model share (``shared``), a record's pass through the
monitor is not part of its write: whichever daemon stored it, the leader's engine reads it back
in index order (:meth:`Engine.follow`), the same path that catches a restored monitor up with
its checkpoint. The indices are in commit order there, so that reading after the last index
seen misses nothing. How far the monitor got goes with its events, in one transaction, so that
a leader taking over knows which alarms were raised already.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from driftd.config import StoreConfig
from driftd.ingest.batch import Batch
from driftd.ingest.columns import Columns
from driftd.ingest.schema import Label, LabelRecord, LabelType, Record, Schema, label_type_of
from driftd.ingest.validation import InvalidInput, bad_probabilities, mistyped_labels
from driftd.metrics import Metrics
from driftd.models.inputs import rows_to_matrix
from driftd.models.serving import LiveModel, Probabilities, Serving
from driftd.monitor import (
    CheckpointMismatch,
    DetectorState,
    Monitor,
    MonitorConfig,
    MonitorEvent,
)
from driftd.monitor.estimated import Estimate
from driftd.store import Blob, IngestResult, Joined, RecordStore

__all__ = [
    "INLINE_GROUP",
    "INLINE_INSTANCES",
    "MONITOR_BATCH",
    "Engine",
    "NoModel",
    "PredictResult",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT = "monitor.ckpt"
LABEL_TYPE = "label_type"  # the store's state key for the class type the first label fixed
FOLLOWED = "monitor_followed"  # the store's state key for how far the leader's monitor got
# The largest request the event loop predicts itself (settle_here), and the most instances of
# a group of requests it does: the loop serves nothing else meanwhile, so larger ones go to
# the worker, where the loop stays free to read other requests.
INLINE_INSTANCES = 16
INLINE_GROUP = 64
# Nor does it for a model whose requests of one group take longer than this, smoothed over the
# last ten or so, on the loop or the worker alike (a 30 ms boosted model would hold up health
# checks and scrapes; the worker leaves the loop free while the model's C code runs without
# the GIL). Measured on the worker too, a model back under it returns to the loop.
INLINE_SECONDS = 0.002
# How many committed predictions wait for the monitor before a response sends them there
# (monitor_soon). A pass costs about 55 us of fixed work and 4 us a record (20 inputs), and
# a request that arrives meanwhile waits for it. A pass of 4 fits in the time one client
# takes to read an answer and send its next request; one of 16 (about 0.2 ms) did not, and
# was one client's p99 (1.54 -> 1.29 of a bare endpoint's, A/B in one run). Passes of 1 cost
# eight clients their throughput (1.20 against 1.28 of the bare endpoint's for 4, 1.29 for
# 16). The daemon's tick passes the rest, so that none waits more than about 0.1 s.
MONITOR_BATCH = 4
# The most committed records the event loop passes through the monitor itself (about 1 ms);
# a longer backlog goes to the worker.
INLINE_MONITOR = 256


class NoModel(RuntimeError):
    """No model is serving yet (the registry is empty and the first model is not trained)."""


@dataclass(slots=True)
class PredictResult:
    predictions: list[Label]
    ids: list[str]
    version: int
    duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Stored:
    """A committed batch as the monitor is to see it: its records from index ``start`` on."""

    start: int
    features: Sequence[Mapping[str, float | str]]
    predictions: Sequence[Label | None] | None
    numeric: npt.NDArray[np.float64] | None
    probas: Sequence[Mapping[str, float] | None] | None
    joined: list[Joined]
    now: float


@dataclass(frozen=True, slots=True)
class _Asked:
    """One prediction request: its instances, its ids (or ``None``), when it arrived, and the
    future its answer goes to."""

    instances: list[dict[str, float | str]]
    ids: list[str] | None
    now: float
    answer: Future[PredictResult] = field(default_factory=Future)


class Engine:
    """One daemon's traffic path. :meth:`open` before use, :meth:`close` after.

    ``on_alarm`` and ``on_joined`` (see :meth:`subscribe`) are called in order with traffic
    (holding the engine's lock, on the worker or the event loop) with each monitor alarm and
    each batch of labels that met their predictions.
    """

    def __init__(
        self,
        schema: Schema,
        store: RecordStore,
        serving: Serving,
        metrics: Metrics,
        *,
        monitor: MonitorConfig,
        retention: StoreConfig,
        checkpoint: Blob,
        shared: bool = False,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.schema = schema
        self.store = store
        self.serving = serving
        self.metrics = metrics
        self.monitor_config = monitor
        self.retention = retention
        self.checkpoint_blob = checkpoint
        self.shared = shared
        self.clock = clock
        self.timer = timer  # what an inline prediction took (see INLINE_SECONDS)
        self._inline_cost = (0, 0.0)  # the serving version's, smoothed
        self.monitor = Monitor(schema, monitor)
        self.monitor_index = 0
        self.monitor_join = 0  # the last join the monitor has seen, by the store's numbering
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftd-ingest")
        self._closed = False
        self._on_alarm: Callable[[MonitorEvent], None] = lambda _: None
        self._on_joined: Callable[[list[Joined]], None] = lambda _: None
        self._store_records = 0
        self._label_type: LabelType | None = schema.label_type
        self._asked: list[_Asked] = []  # predictions waiting for the worker, in arrival order
        self._asked_lock = threading.Lock()  # guards _asked and the counts of queued work
        self._drain_queued = False
        self._lock = threading.Lock()  # held by whoever runs traffic: the worker or settle_here
        self._queued = 0  # pieces of work submitted to the worker and not finished
        self._unmonitored: list[_Stored] = []  # committed, not yet monitored, in order
        self._unmonitored_rows = 0
        self._monitor_queued = False
        self._checkpoint_due = False
        self._stale = False  # the monitor is past the last committed followed round

    # -- lifecycle -------------------------------------------------------------------------
    def subscribe(
        self,
        *,
        on_alarm: Callable[[MonitorEvent], None],
        on_joined: Callable[[list[Joined]], None],
    ) -> None:
        """Where alarms and joined labels go (the retrainer); called in order with traffic."""
        self._on_alarm, self._on_joined = on_alarm, on_joined

    def open(self, *, monitor: bool = True) -> None:
        """Restore the monitor from its checkpoint, catch up on records stored after it, and
        export the live gauges. The store is open already. A standby on a shared store (not
        ``monitor``) leaves the monitor to the leader until :meth:`take_over`."""
        self.metrics.declare_features(
            ((s.signal, s.feature or "") for s in self.monitor.detector_states()),
            self.schema.categorical,
        )
        if monitor:
            self._restore_monitor()
        self.metrics.read_live(
            detectors=lambda: (
                (s.signal, s.feature or "", s.state, s.estimate)
                for s in self.monitor.detector_states()
            ),
            store_records=lambda: self._store_records,
            live_score=lambda: self.monitor.live_score,
            estimated=lambda: {m: e.as_dict() for m, e in self.monitor.estimated_scores.items()},
            unseen=lambda: self.monitor.unseen_categories,
        )
        self._store_records = self.store.counts()["records"]
        self._label_type = (
            self.schema.label_type
            or self.store.get_state(LABEL_TYPE)
            or self.store.first_label_type()
        )

    def close(self, *, checkpoint: bool = True) -> None:
        """Write the checkpoint (unless a standby's) and stop the worker after its work."""
        try:
            if checkpoint:
                self.checkpoint()
        except Exception:
            log.exception("could not write the monitor checkpoint at shutdown")
        self._closed = True
        self._worker.shutdown(wait=True)

    @property
    def healthy(self) -> bool:
        """The worker takes work (false once closed)."""
        return not self._closed

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the worker and wait for it (from any thread but the worker)."""
        return self.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn`` on the worker, in order with traffic, once the monitor has seen every
        record committed before it (from any thread but the worker)."""
        return self._submit(fn, *args, monitor_first=True)

    def _submit(self, fn: Callable[..., T], *args: Any, monitor_first: bool) -> Future[T]:
        with self._asked_lock:
            self._queued += 1
        try:
            return self._worker.submit(self._ordered, fn, args, monitor_first)
        except BaseException:
            with self._asked_lock:
                self._queued -= 1
            raise

    def _ordered(self, fn: Callable[..., T], args: tuple[Any, ...], monitor_first: bool) -> T:
        with self._lock:
            try:
                if monitor_first:
                    self._monitor_pending()
                return fn(*args)
            finally:
                with self._asked_lock:  # still holding the lock: idle means nothing is waiting
                    self._queued -= 1

    def rebaseline(self) -> None:
        """A new model serves from the next record: the detectors start over (in order).
        On a shared store the checkpoint is due at once, so that a leader taking over after
        this deploy starts from the reset detectors, not from before them."""
        self.monitor.rebaseline(self.monitor_index)
        self._checkpoint_due = self.shared

    @property
    def checkpoint_due(self) -> bool:
        """A checkpoint should be written now, not at the next interval (see rebaseline)."""
        return self._checkpoint_due

    # -- traffic (in order: on the worker, or on the event loop holding the lock) ---------
    def predict(
        self, instances: list[dict[str, float | str]], ids: list[str] | None, now: float
    ) -> PredictResult:
        """One request's predictions, stored and monitored before they return (in order: on
        the worker, or in a process that has no other traffic, such as replay)."""
        asked = _Asked(instances, ids, now)
        live = self._live()
        preds, probas = self._answers(live, [asked])
        result = self._commit(live, [asked], preds, probas)[0]
        self._monitor_pending()
        return result

    def submit_predict(
        self,
        instances: list[dict[str, float | str]],
        ids: list[str] | None,
        now: float,
        *,
        here: bool = False,
    ) -> Future[PredictResult]:
        """Queue a prediction request (from any thread); its answer comes once it is committed,
        together with every other request waiting when they are taken: by the worker, or with
        ``here`` by the caller's next :meth:`settle_here` when it can (the event loop)."""
        asked = _Asked(instances, ids, now)
        with self._asked_lock:
            self._asked.append(asked)
        if not here:
            self._queue_drain()
        return asked.answer

    def settle_here(self) -> bool:
        """Predict, commit and answer the requests waiting, here and now (on the event loop,
        after it read the requests that arrived together), when nothing else waits for the
        engine, they are few (:data:`INLINE_GROUP`), the store's commit does not wait
        (``RecordStore.quick_commit``) and the model is quick (:data:`INLINE_SECONDS`): no hop
        to the worker and back. Otherwise the worker takes them. Returns whether they were
        settled here. The monitor sees them at :meth:`monitor_soon`."""
        if self._settled_here():
            return True
        self._queue_drain()
        return False

    def _queue_drain(self) -> None:
        """Have the worker take the requests waiting, unless it is about to already."""
        with self._asked_lock:
            queue = bool(self._asked) and not self._drain_queued
            self._drain_queued = self._drain_queued or queue
        if queue:
            self._submit(self._drain, monitor_first=False)  # answers before the monitor

    def _settled_here(self) -> bool:
        if not self.store.quick_commit:
            return False
        current, (version, cost) = self.serving.current, self._inline_cost
        if current is not None and current.version == version and cost > INLINE_SECONDS:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            with self._asked_lock:
                if self._queued or self._closed:  # work that arrived first is waiting
                    return False
                if sum(len(a.instances) for a in self._asked) > INLINE_GROUP:
                    return False
                group, self._asked = self._asked, []
            self._settle([a for a in group if a.answer.set_running_or_notify_cancel()])
            return True
        finally:
            self._lock.release()

    def monitor_soon(self, batch: int = MONITOR_BATCH) -> None:
        """Pass the committed predictions the monitor has not seen yet through it, once there
        are ``batch`` of them (see :data:`MONITOR_BATCH`): here, on the event loop after it
        sent their answers, when the engine is idle and they are few, else on the worker. The
        daemon's tick calls it with ``batch=1``, so that none waits long."""
        rows = self._unmonitored_rows
        if rows < max(batch, 1):
            return
        if self._lock.acquire(blocking=False):
            try:
                with self._asked_lock:
                    idle = not self._queued
                if idle and rows <= INLINE_MONITOR:
                    self._monitor_pending()
                    return
            finally:
                self._lock.release()
        with self._asked_lock:
            queued, self._monitor_queued = self._monitor_queued, True
        if not queued:
            self.submit(_nothing)  # which passes them through the monitor first

    def _monitor_pending(self) -> None:
        """The monitor's pass over what was committed without it, in commit order (holding the
        lock). A failure is logged and the pass goes on: the records are stored, and the
        traffic behind them must not stop."""
        with self._asked_lock:
            self._monitor_queued = False
        while self._unmonitored:
            pending, self._unmonitored = self._unmonitored, []
            self._unmonitored_rows = 0
            try:
                self._monitor(pending)
            except Exception:
                log.exception("the monitor could not pass over %d committed batches", len(pending))

    def _drain(self) -> None:
        """Answer every prediction waiting (on the worker). The ones that arrive meanwhile
        queue the next drain."""
        with self._asked_lock:
            group, self._asked, self._drain_queued = self._asked, [], False
        self._settle([a for a in group if a.answer.set_running_or_notify_cancel()])

    def _settle(self, group: list[_Asked]) -> None:
        """Predict and store ``group`` as one batch, leave it to the monitor's next pass and
        answer each request. A failure before the store write is retried a request at a time,
        so that it reaches only the request it belongs to; one after it reaches every request
        of the transaction."""
        if not group:
            return
        start = self.timer()  # what a group the loop could take costs (see INLINE_SECONDS)
        try:
            live = self._live()
            preds, probas = self._answers(live, group)
        except Exception as exc:  # noqa: BLE001 - raised again in the request's route
            if len(group) == 1:
                group[0].answer.set_exception(exc)
            else:
                for asked in group:
                    self._settle([asked])
            return
        try:
            results = self._commit(live, group, preds, probas)
        except Exception as exc:  # noqa: BLE001 - raised again in every request's route
            for asked in group:
                asked.answer.set_exception(exc)
            return
        if sum(len(a.instances) for a in group) <= INLINE_GROUP:
            self._took(live.version, self.timer() - start)  # what it costs the loop
        for asked, result in zip(group, results, strict=True):
            asked.answer.set_result(result)

    def _took(self, version: int, seconds: float) -> None:
        """A request that could have been predicted on the event loop took ``seconds``."""
        last, cost = self._inline_cost
        self._inline_cost = (version, 0.9 * (cost if last == version else 0.0) + 0.1 * seconds)

    def _live(self) -> LiveModel:
        live = self.serving.current  # read once: these requests use this model to the end
        if live is None:
            raise NoModel("no model yet")
        return live

    def _answers(
        self, live: LiveModel, group: list[_Asked]
    ) -> tuple[list[Label], Probabilities | None]:
        """The model's predictions (and probabilities, for a classifier) for every instance of
        ``group``, in order, from one call."""
        instances = (
            group[0].instances if len(group) == 1 else [x for a in group for x in a.instances]
        )
        X = rows_to_matrix(self.schema, instances)
        preds, probas = live.answer(X, probabilities=self.schema.task == "classification")
        if self._label_type is None and preds:  # the first model's classes fix the type
            self._fix_label_type(label_type_of(preds[0]))
        return preds, probas

    def _commit(
        self,
        live: LiveModel,
        group: list[_Asked],
        preds: list[Label],
        probas: Probabilities | None,
    ) -> list[PredictResult]:
        """Store ``group``'s records in one transaction, each at the time its request arrived,
        run the monitor over them, and split the result back into one answer per request."""
        instances: list[dict[str, float | str]] = group[0].instances
        ts: float | list[float] = group[0].now
        ids: Sequence[str | None] | None = group[0].ids
        if len(group) > 1:
            instances = [x for a in group for x in a.instances]
            ts = [a.now for a in group for _ in a.instances]
            ids = None
            if any(a.ids is not None for a in group):  # the store makes up the others
                ids = [a.ids[k] if a.ids else None for a in group for k in range(len(a.instances))]
        now = max(a.now for a in group)
        batch = Batch(
            instances,
            ts,
            ids=ids,
            predictions=preds,
            model_version=live.version,
            probas=None if probas is None else probas.raw,
        )
        result = self.store.add_records(batch, source="predict", received=now)
        self.metrics.predictions.inc(len(instances))
        self._stored(result, "predict")
        stored = self._kept(result, batch, now, None if probas is None else probas.calibrated)
        if stored is not None:
            self._unmonitored.append(stored)
            self._unmonitored_rows += len(stored.features)
        return _split(group, preds, result, live.version)

    def add_records(
        self, records: Sequence[Record] | Columns, source: str, now: float
    ) -> IngestResult:
        batch = records.batch(now) if isinstance(records, Columns) else _batch(records, now)
        fixes = self._check_label_types(prediction=batch.predictions, label=batch.labels)
        if batch.probas is not None:
            batch = dataclasses.replace(
                batch, probas=self._check_probas(batch.probas, batch.predictions)
            )
        result = self.store.add_records(batch, source=source, received=now)
        if fixes is not None:
            self._fix_label_type(fixes)
        self._stored(result, source)
        stored = self._kept(result, batch, now, batch.probas)
        if stored is not None:
            self._monitor([stored])
        return result

    def _stored(self, result: IngestResult, source: str) -> None:
        self.metrics.records.labels(source).inc(result.accepted)
        self._store_records += result.accepted
        if result.duplicates:
            self.metrics.duplicates.inc(len(result.duplicates))

    def _kept(
        self,
        result: IngestResult,
        batch: Batch,
        now: float,
        probas: Sequence[Mapping[str, float] | None] | None,
    ) -> _Stored | None:
        """What the monitor is to see of a stored batch: the records it kept (not the re-sent
        ones), with ``probas`` (the calibrated probabilities of a prediction, where the store
        keeps the raw ones), and the labels that met them. ``None`` on a shared store, whose
        leader reads them back (:meth:`follow`)."""
        if self.shared:
            return None
        features, predictions = batch.features, batch.predictions
        if result.inserted is not None:
            kept = result.inserted
            features = [f for f, k in zip(features, kept, strict=True) if k]
            if predictions is not None:
                predictions = [p for p, k in zip(predictions, kept, strict=True) if k]
            if probas is not None:
                probas = [p for p, k in zip(probas, kept, strict=True) if k]
        if predictions is not None and all(p is None for p in predictions):
            predictions = None
        start = result.inserted_idx[0] if result.inserted_idx else self.monitor_index + 1
        return _Stored(start, features, predictions, result.numeric, probas, result.joined, now)

    def _monitor(self, stored: list[_Stored]) -> None:
        """Pass stored batches through the monitor, consecutive ones in one call (its fixed
        cost is most of a small batch's), and the labels that met them through the outcome
        detectors."""
        for run in _runs(stored):
            last = run[-1]
            if last.features:
                events = self.monitor.update(
                    run[0].start,
                    [f for b in run for f in b.features],
                    _joined_column(run, lambda b: b.predictions),
                    last.now,
                    numeric=_numeric(run),
                    probas=_joined_column(run, lambda b: b.probas),
                )
                self.monitor_index = last.start + len(last.features) - 1
                self._record_events(events, last.now)
            for b in run:
                self._joined(b.joined, b.now)

    def add_labels(self, labels: Sequence[LabelRecord], now: float) -> dict[str, Any]:
        fixes = self._check_label_types(label=[lb["label"] for lb in labels])
        result = self.store.add_labels(
            [(lb["id"], lb["label"], lb.get("timestamp", now)) for lb in labels]
        )
        if fixes is not None:
            self._fix_label_type(fixes)
        accepted = len(labels) - len(result.duplicates)
        self.metrics.labels.inc(accepted)
        if result.duplicates:
            self.metrics.duplicates.inc(len(result.duplicates))
        self._joined(result.joined, now)
        return {
            "accepted": accepted,
            "joined": len(result.joined),
            "pending": result.pending,
            "duplicates": result.duplicates,
        }

    def _check_label_types(self, **columns: Sequence[Label | None] | None) -> LabelType | None:
        """Refuse class labels (and predictions) of another type than the stored ones, as
        :class:`InvalidInput`. Unless the schema fixes the type, the serving model's classes or
        the first label stored do; a model fitted on ``1`` and ``"1"`` alike would answer
        strings to consumers of integers, and a champion could no longer be scored against its
        challenger. Returns the type this batch fixes, for the caller to keep once the batch is
        stored (a refused batch fixes nothing), or ``None``."""
        if self.schema.task != "classification":
            return None
        if self._label_type is None and self.shared:  # another daemon may have fixed it
            self._label_type = self.store.get_state(LABEL_TYPE)
        fixed = self._label_type or self._served_label_type()
        if fixed is None:
            given = (v for values in columns.values() if values for v in values if v is not None)
            first = next(given, None)
            if first is None:
                return None
            fixed = label_type_of(first)
        errors = mistyped_labels(fixed, columns)
        if errors:
            raise InvalidInput(errors)
        return fixed if self._label_type is None else None

    def _check_probas(
        self,
        probas: Sequence[Mapping[str, float] | None],
        predictions: Sequence[Label | None] | None,
    ) -> Sequence[Mapping[str, float] | None]:
        """Refuse probabilities that do not sum to 1 or name other classes than the serving
        model's, as :class:`InvalidInput`: an estimate made from them would be meaningless.
        Returns them in the serving model's class order (its last class is the positive one
        of a binary model), as sent when no model serves."""
        live = self.serving.current
        known = live.class_names() if live is not None else None
        errors = bad_probabilities(probas, predictions, known)
        if errors:
            raise InvalidInput(errors)
        if known is None:
            return probas
        return [None if p is None else {k: p[k] for k in known} for p in probas]

    def _served_label_type(self) -> LabelType | None:
        """The class type of the serving model's classes, if one serves: a first model fitted
        on a history file fixes the type before any label has been stored."""
        live = self.serving.current
        classes = getattr(live.model, "classes_", None) if live is not None else None
        return label_type_of(classes[0]) if classes is not None and len(classes) else None

    def _fix_label_type(self, fixed: LabelType) -> None:
        self._label_type = fixed
        self.store.put_state(LABEL_TYPE, fixed)
        log.info("class labels are of type %s from now on", fixed)

    def _joined(self, joined: list[Joined], now: float) -> None:
        if not joined or self.shared:
            return
        for j in joined:
            self.metrics.label_delay.observe(j.delay)
        events = self._outcomes(joined, now)
        self._record_events(events, now)
        self._on_joined(joined)

    def _outcomes(self, joined: list[Joined], now: float) -> list[MonitorEvent]:
        events = self.monitor.update_outcomes(
            [j.idx for j in joined], [j.prediction for j in joined], [j.label for j in joined], now
        )
        self.monitor_join = max(self.monitor_join, joined[-1].seq)
        return events

    def _record_events(self, events: list[MonitorEvent], now: float) -> None:
        if events:
            self.store.add_events(self._event_rows(events, now))
            self._count(events)

    @staticmethod
    def _event_rows(
        events: list[MonitorEvent], now: float
    ) -> list[tuple[str, dict[str, Any], float, int | None]]:
        """The events' rows for the store."""
        return [
            ("drift_alarm" if e.kind == "alarm" else f"drift_{e.kind}", e.as_dict(), now, e.index)
            for e in events
        ]

    def _count(self, events: list[MonitorEvent]) -> None:
        """Count recorded events and pass each alarm on (after they are committed)."""
        for e in events:
            if e.kind == "detection":
                self.metrics.drift_detected.labels(e.signal, e.feature or "").inc()
            elif e.kind == "alarm" and e.alarm is not None:
                self.metrics.drift_alarms.labels(e.alarm).inc()
                estimated = e.alarm == "performance_drop_estimated"
                if not estimated or self.monitor_config.estimated_retrain:
                    self._on_alarm(e)
                log.warning(
                    "drift alarm (%s) at record %d, change point %d",
                    e.alarm,
                    e.index,
                    e.change_point,
                )

    # -- monitor checkpoint ----------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write the detector state atomically (header line, then the monitor's bytes)."""

        def dump() -> tuple[int, int, bytes] | None:
            if self._stale:  # never checkpoint a position whose events did not commit
                return None
            self._checkpoint_due = False
            return self.monitor_index, self.monitor_join, self.monitor.dumps()

        dumped = self.run(dump)
        if dumped is None:
            return
        index, join, data = dumped
        header = {
            "format": 1,
            "last_index": index,
            "last_join": join,
            "schema": self.schema.fingerprint(),
        }
        self.checkpoint_blob.write(json.dumps(header).encode() + b"\n" + data)

    def take_over(self) -> None:
        """A standby became the leader: restore the monitor from the shared checkpoint and
        catch up, quietly up to where the last leader's monitor got (its events and alarms are
        recorded), then follow (on the worker)."""
        self.run(self._restore_monitor)

    def follow(self, *, budget: float = 0.05) -> int:
        """Pass what every daemon stored since the monitor last looked through it, in store
        order, recording events and passing on alarms and joined labels (the leader, on a
        shared store; on the worker). Returns the records and outcomes read.

        It holds the worker for about ``budget`` seconds at most, so that requests waiting
        behind it are served while other daemons keep writing; the daemon's tick calls it
        again. Each round's events commit with the position the monitor reached; alarms and
        joined labels are passed on only after that commit. A round that cannot commit puts the
        monitor back where the last commit left it (the shared checkpoint, then a quiet replay),
        so that nothing is recorded twice or skipped."""
        if self._stale:  # the last round did not commit: start again from what did
            self._restore_monitor()
            self._stale = False
        n = 0
        until = time.monotonic() + budget
        while True:
            now = self.clock()
            batch = self.store.records_after(self.monitor_index, limit=2000)
            record_events = self._monitor_records(batch, now) if batch else []
            joined = self.store.joined_after(self.monitor_join, limit=2000)
            outcome_events = self._outcomes(joined, now) if joined else []
            if not batch and not joined:
                return n
            events = record_events + outcome_events
            followed = {"index": self.monitor_index, "join": self.monitor_join}
            try:
                self.store.add_events(self._event_rows(events, now), state=(FOLLOWED, followed))
            except BaseException:
                log.warning(
                    "could not record a followed round; the monitor goes back to its "
                    "last committed position"
                )
                self._restore_monitor()
                raise
            self._count(events)
            for j in joined:
                self.metrics.label_delay.observe(j.delay)
            if joined:
                self._on_joined(joined)
            n += len(batch) + len(joined)
            if time.monotonic() >= until:
                return n

    def _monitor_records(
        self, batch: list[tuple[int, dict[str, float | str], Label | None]], now: float
    ) -> list[MonitorEvent]:
        preds = [b[2] for b in batch]
        events = self.monitor.update(
            batch[0][0],
            [b[1] for b in batch],
            preds if any(p is not None for p in preds) else None,
            now,
        )
        self.monitor_index = batch[-1][0]
        return events

    def _restore_monitor(self) -> None:
        last, last_join = 0, 0
        raw = self.checkpoint_blob.read() or b""
        if raw:
            try:
                head, _, body = raw.partition(b"\n")
                header = json.loads(head)
                self.monitor = Monitor.loads(body, self.schema, self.monitor_config)
                last = int(header["last_index"])
                # A checkpoint from before joins were numbered: nothing is known to replay.
                last_join = int(header.get("last_join", self.store.last_join))
                log.info("monitor restored from its checkpoint at record %d", last)
            except CheckpointMismatch as exc:
                self._monitor_reset(f"checkpoint written under another configuration ({exc})")
            except (ValueError, KeyError, TypeError, EOFError) as exc:
                self._monitor_reset(f"checkpoint unreadable ({type(exc).__name__}: {exc})")
        self.monitor_index = last
        # Catch up with records stored after the checkpoint (a crash between checkpoints),
        # quietly: their events were recorded before the crash. On a shared store that is as
        # far as the last leader's monitor got; a standby follows the rest.
        if self.shared:
            got = self.store.get_state(FOLLOWED) or {}
            upto, upto_join = int(got.get("index", 0)), int(got.get("join", 0))
        else:
            upto = upto_join = 2**62
        replayed = 0
        while self.monitor_index < upto:
            limit = min(10_000, upto - self.monitor_index)
            batch = [
                b for b in self.store.records_after(self.monitor_index, limit=limit) if b[0] <= upto
            ]
            if not batch:
                break
            self._monitor_records(batch, self.clock())
            replayed += len(batch)
        if replayed:
            log.info("monitor caught up on %d record(s) stored after its checkpoint", replayed)
        # And the outcomes joined after it, in the order they joined, into the error detector.
        self.monitor_join = last_join
        outcomes = 0
        while self.monitor_join < upto_join:
            limit = min(10_000, upto_join - self.monitor_join)
            joined = [
                j
                for j in self.store.joined_after(self.monitor_join, limit=limit)
                if j.seq <= upto_join
            ]
            if not joined:
                break
            self._outcomes(joined, self.clock())
            outcomes += len(joined)
        if outcomes:
            log.info("monitor caught up on %d outcome(s) joined after its checkpoint", outcomes)

    def _monitor_reset(self, why: str) -> None:
        log.warning("monitor starts fresh: %s", why)
        self.monitor = Monitor(self.schema, self.monitor_config)
        self.store.add_event("monitor_reset", {"reason": why}, ts=self.clock())

    # -- reads and chores ------------------------------------------------------------------
    @property
    def live_score(self) -> tuple[str, float | None]:
        """The serving model's windowed score on labelled traffic: (metric, value or None)."""
        return self.monitor.live_score

    @property
    def estimated_scores(self) -> dict[str, Estimate]:
        """The live score estimated from class probabilities, before labels (see the monitor)."""
        return self.monitor.estimated_scores

    def detector_states(self) -> list[DetectorState]:
        """Every detector's state and estimate, for the report and the gauges."""
        return self.monitor.detector_states()

    def status(self) -> dict[str, Any]:
        """The store's counts, the detectors and the live score."""
        metric, value = self.monitor.live_score
        return {
            "store": self.store.counts(),
            "monitor": self.monitor.status(),
            "live_score": {"metric": metric, "value": value},
        }

    def trim(self) -> int:
        """Apply the retention settings; returns the records deleted."""
        cfg = self.retention
        deleted = self.store.trim(
            max_rows=cfg.retention_rows, max_age=cfg.retention_seconds, now=self.clock()
        )
        if deleted:
            self._store_records = self.store.counts()["records"]
        return deleted


def _split(
    group: list[_Asked], preds: list[Label], result: IngestResult, version: int
) -> list[PredictResult]:
    """One answer per request of a group stored as one batch: its predictions, its ids, and
    the ids of its records that were stored already (re-sent)."""
    if len(group) == 1:
        return [PredictResult(preds, list(result.ids), version, result.duplicates)]
    out, start = [], 0
    for asked in group:
        end = start + len(asked.instances)
        ids = list(result.ids[start:end])
        kept = result.inserted[start:end] if result.inserted is not None else None
        again = [] if kept is None else [i for i, k in zip(ids, kept, strict=True) if not k]
        out.append(PredictResult(preds[start:end], ids, version, again))
        start = end
    return out


def _batch(records: Sequence[Record], now: float) -> Batch:
    """Validated records as the store's columns; a record without a time gets ``now``."""
    given: set[str] = set().union(*records)  # the optional fields any record has
    return Batch(
        [r["features"] for r in records],
        [r.get("timestamp", now) for r in records] if "timestamp" in given else now,
        ids=[r.get("id") for r in records] if "id" in given else None,
        predictions=[r.get("prediction") for r in records] if "prediction" in given else None,
        labels=[r.get("label") for r in records] if "label" in given else None,
        probas=[r.get("proba") for r in records] if "proba" in given else None,
    )


def _nothing() -> None:
    """A piece of work whose only use is the monitor's pass that goes first (see submit)."""


def _runs(stored: list[_Stored]) -> list[list[_Stored]]:
    """``stored`` cut where the indices do not follow on (a batch of re-sent records only)."""
    runs: list[list[_Stored]] = []
    for b in stored:
        if runs and runs[-1][-1].start + len(runs[-1][-1].features) == b.start and b.features:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _joined_column(run: list[_Stored], column: Callable[[_Stored], Sequence[Any] | None]) -> Any:
    """One column of a run's batches end to end, ``None`` where a batch lacks it, or ``None``
    when every batch does."""
    columns = [column(b) for b in run]
    if all(c is None for c in columns):
        return None
    if len(columns) == 1:
        return columns[0]
    return [v for b, c in zip(run, columns, strict=True) for v in (c or [None] * len(b.features))]


def _numeric(run: list[_Stored]) -> npt.NDArray[np.float64] | None:
    blocks = [b.numeric for b in run if b.features]
    if any(x is None for x in blocks):
        return None
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)  # type: ignore[arg-type]
