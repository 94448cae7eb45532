"""The drift monitor: river detectors on every feature, the predictions and the errors.

It owns detector state, the alarm policy and the live score, and turns a batch of records
(or of joined outcomes) into :class:`MonitorEvent` values. It never blocks on I/O and never
reads the clock: ``now`` is passed in, so tests and replays run at full speed.

Work is done column by column: each detector gets the whole batch's column in one call, and
alarm bookkeeping happens once per detection, not once per record.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.ingest.schema import Schema
from driftd.monitor._index import IndexMap
from driftd.monitor.alarms import AlarmPolicy
from driftd.monitor.categories import OTHER, CategoryWatch
from driftd.monitor.changepoint import RECENT, RecentValues, mean_change
from driftd.monitor.checkpoint import frame, unframe
from driftd.monitor.config import MonitorConfig
from driftd.monitor.estimated import Estimate, EstimatedScore
from driftd.monitor.events import AlarmKind, DetectorState, MonitorEvent, Signal
from driftd.monitor.live import LiveScore
from driftd.monitor.moments import SecondMoments
from driftd.monitor.scores import SCALE, NormalScores, delta_for
from driftd.monitor.watch import CONFIDENCE, DRIFT, Hit, Watch

__all__ = ["Monitor"]


Value = float | str
Label = int | str | float


class Monitor:
    """Drift detectors for one model's traffic, with the alarm policy and a live score.

    Parameters
    ----------
    schema
        The record schema: one detector per numeric feature, a category-frequency watch per
        categorical feature, a prediction and an error stream shaped by the task.
    config
        Detector kinds and parameters, the live-score window and the alarm policy.

    Examples
    --------
    >>> import random
    >>> from driftd.ingest.schema import Feature, Schema
    >>> rng = random.Random(0)
    >>> schema = Schema(features=(Feature("x"), Feature("colour", "categorical")))
    >>> monitor = Monitor(schema, MonitorConfig())
    >>> def batch(mean, colours):
    ...     return [{"x": rng.gauss(mean, 1), "colour": rng.choice(colours)} for _ in range(3000)]
    >>> monitor.update(0, batch(0, "rgb"), None, now=1.0)
    []
    >>> events = monitor.update(3000, batch(3, "rgbbbb"), None, now=2.0)
    >>> for e in events[:3]:
    ...     print(e.kind, e.alarm, e.signal, e.feature, e.index, e.change_point)
    detection None feature x 3039 3000
    alarm data_drift feature x 3039 3000
    detection None category colour 3135 3004

    """

    def __init__(self, schema: Schema, config: MonitorConfig | None = None) -> None:
        self.schema = schema
        self.config = config if config is not None else MonitorConfig()
        unknown = sorted(set(self.config.per_feature) - set(schema.numeric))
        if unknown:
            raise ValueError(
                f"monitor.per_feature: got {', '.join(unknown)}, expected numeric features of the"
                f" schema ({', '.join(schema.numeric)})"
            )
        self._build()

    # -- construction -------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.config
        schema = self.schema
        n_features = len(schema.features)
        factor = n_features if cfg.alarm.correct_for_features else 1
        kinds = {name: cfg.per_feature.get(name, cfg.numeric_detector) for name in schema.numeric}
        scored = cfg.robust_scale and "adwin" in kinds.values()
        # The mean detectors and the second-moment tests share the features' false-alarm
        # budget evenly: each family errs once per twice the run length.
        family_run = 2.0 * cfg.false_alarm_run
        corrected = cfg.alarm.correct_for_features
        tests = sum(kind == "adwin" for kind in kinds.values()) if corrected else 1

        def watch(kind: str) -> Watch:
            if scored and kind == "adwin":
                return Watch(kind, self._scored_params(family_run, tests, factor), scale=SCALE)
            return Watch(kind, self._params(kind, factor))

        self._numeric = {name: watch(kind) for name, kind in kinds.items()}
        self._categorical = {
            name: CategoryWatch(
                cfg.top_categories, cfg.category_reference, self._params("adwin", factor)
            )
            for name in schema.categorical
        }
        self._prediction: Watch | CategoryWatch
        if schema.task == "classification":
            self._prediction = CategoryWatch(
                cfg.top_categories, cfg.category_reference, self._params("adwin", 1)
            )
            kind = cfg.error_detector
        else:
            self._prediction = Watch(cfg.numeric_detector, self._params(cfg.numeric_detector, 1))
            kind = cfg.regression_error_detector
        self._error = Watch(kind, self._params(kind, 1))
        self._scores = (
            NormalScores(len(schema.numeric), warmup=cfg.robust_warmup) if scored else None
        )
        self._moments: SecondMoments | None = None
        if cfg.second_moments and schema.numeric:
            self._moments = SecondMoments(
                list(schema.numeric),
                window=cfg.moments_window,
                reference=cfg.moments_reference,
                run_length=family_run,
                pairs=len(schema.numeric) <= cfg.moments_pairs_max_features,
            )
        self._features_map = IndexMap()
        self._prediction_map = IndexMap()
        self._error_map = IndexMap()
        self._estimated_map = IndexMap()
        self._estimated: EstimatedScore | None = None
        self._estimated_watch: Watch | None = None
        if schema.task == "classification" and cfg.estimate_performance:
            self._estimated = EstimatedScore(cfg.live_window, cfg.live_min_labels)
            self._estimated_watch = Watch("adwin", self._params("adwin", 1))
        self._fresh_estimates()
        self._policy = AlarmPolicy(
            cfg.alarm.features, cfg.alarm.window, cfg.alarm.suppress, n_features
        )
        metric = schema.live_metric
        self._live = LiveScore(metric, cfg.live_window, cfg.live_min_labels)
        self._next_index = 0
        self._baseline = 0
        self._last_drift: dict[tuple[str, str | None], int] = {}
        self._change: dict[str, int] = {}
        self._counts = {"detection": 0, "warning": 0, "alarm": 0, "suppressed": 0}
        self._labels = 0
        self._last_alarm: dict[str, Any] | None = None

    def _fresh_estimates(self) -> None:
        """The recent values the change points are estimated from (feature and error
        streams, by stream position), and where each detector's current regime began."""
        self._recent = RecentValues(len(self.schema.numeric), start=self._features_map.length)
        self._recent_errors = RecentValues(1, start=self._error_map.length)
        self._recent_expected = RecentValues(1, start=self._estimated_map.length)
        self._recent_categories = RecentValues(
            len(self.schema.categorical), start=self._features_map.length, dtype="object"
        )
        self._categorical_order = {name: i for i, name in enumerate(self._categorical)}
        self._numeric_order = {name: i for i, name in enumerate(self._numeric)}
        self._regime: dict[tuple[Signal, str | None], int] = {}
        self._rebaselined: dict[Signal, int] = {}

    def _scored_params(self, run_length: float, tests: int, factor: int) -> dict[str, Any]:
        """ADWIN's parameters for a feature fed normal scores: unset, ``delta`` is the one at
        which ``tests`` such detectors together err once per ``run_length`` records; set by
        hand, it is divided by ``factor`` as for any detector."""
        params = dict(self.config.detector_params.get("adwin", {}))
        if "delta" in params:
            return self._params("adwin", factor)
        params["delta"] = delta_for(run_length, tests)
        return params

    def _params(self, kind: str, factor: int) -> dict[str, Any]:
        params = dict(self.config.detector_params.get(kind, {}))
        if kind == "kswin":
            params["seed"] = self.config.seed
        if kind in CONFIDENCE and factor > 1:
            name, default = CONFIDENCE[kind]
            params[name] = float(params.get(name, default)) / factor
        return params

    # -- feeding ------------------------------------------------------------------------------

    def update(
        self,
        start_index: int,
        features: Sequence[Mapping[str, Value]],
        predictions: Sequence[Label | None] | None,
        now: float,
        *,
        numeric: npt.NDArray[np.float64] | None = None,
        probas: Sequence[Mapping[str, float] | None] | None = None,
    ) -> list[MonitorEvent]:
        """Feed records ``start_index, start_index + 1, ...``; return what they revealed.

        Records below the next expected index were already seen (a replay after a restart)
        and are skipped. Predictions of records before the last :meth:`rebaseline` are
        ignored: they came from the previous model. ``numeric``, the numeric features as an
        ``(n, k)`` array in the schema's order, saves taking the columns out of the dicts.
        ``probas``, each prediction's class probabilities (class as a string -> probability),
        feed the estimated score.
        """
        if predictions is not None and len(predictions) != len(features):
            raise ValueError(
                f"update: got {len(predictions)} predictions for {len(features)} records,"
                " expected one per record (None where there is none)"
            )
        skip = self._next_index - start_index
        if skip > 0:
            features = features[skip:]
            predictions = predictions[skip:] if predictions is not None else None
            numeric = numeric[skip:] if numeric is not None else None
            probas = probas[skip:] if probas is not None else None
            start_index += skip
        n = len(features)
        if n == 0:
            return []
        raw: list[tuple[int, int, Signal, str | None, Hit]] = []
        fmap = self._features_map
        fmap.extend_range(start_index, n)
        order = 0
        columns: list[list[float]] | None = None
        if numeric is None and self._numeric:
            columns = [list(map(operator.itemgetter(name), features)) for name in self._numeric]
            numeric = np.array(columns, dtype=np.float64).T
        if numeric is not None:
            self._recent.extend(numeric)
            raw_fed = self._scores is None or any(w.kind != "adwin" for w in self._numeric.values())
            if columns is None and raw_fed:  # only a detector fed raw values needs the lists
                columns = numeric.T.tolist()
        scored_block = (
            self._scores.feed(numeric) if self._scores is not None and numeric is not None else None
        )
        scaled = scored_block.T.tolist() if scored_block is not None else None
        for name, watch in self._numeric.items():
            if self._scores is not None and watch.kind == "adwin":
                column = scaled[order] if scaled is not None else []  # [] during its warm-up
            else:
                assert columns is not None
                column = columns[order]
            raw.extend((fmap.index_at(h.at), order, "feature", name, h) for h in watch.feed(column))
            order += 1
        if self._moments is not None and numeric is not None:
            for m in self._moments.feed(numeric):
                hit = Hit(m.at, DRIFT, m.at - self._moments.window + 1, m.stats())
                raw.append((fmap.index_at(m.at), order, "feature", m.features[0], hit))
        categories = []
        for name, cats in self._categorical.items():
            column = list(map(operator.itemgetter(name), features))
            categories.append(column)
            raw.extend((fmap.index_at(h.at), order, "category", name, h) for h in cats.feed(column))
            order += 1
        if categories:
            self._recent_categories.extend_columns(categories)
        if predictions is not None:
            raw.extend(self._feed_predictions(start_index, predictions, order))
            if probas is not None and self._estimated is not None:
                raw.extend(self._feed_estimated(start_index, predictions, probas, order + 1))
        self._next_index = start_index + n
        return self._events(raw, now)

    def _feed_predictions(
        self, start: int, predictions: Sequence[Label | None], order: int
    ) -> list[tuple[int, int, Signal, str | None, Hit]]:
        offset = max(0, self._baseline - start)
        if offset == 0 and None not in predictions:
            values = list(predictions)
            self._prediction_map.extend_range(start, len(values))
        else:
            pairs = [
                (start + i, p) for i, p in enumerate(predictions) if p is not None and i >= offset
            ]
            values = [p for _, p in pairs]
            self._prediction_map.extend([i for i, _ in pairs])
        if not values:
            return []
        if isinstance(self._prediction, Watch):
            values = [float(v) for v in values if v is not None]
        pmap = self._prediction_map
        return [
            (pmap.index_at(h.at), order, "prediction", None, h)
            for h in self._prediction.feed(values)
        ]

    def _feed_estimated(
        self,
        start: int,
        predictions: Sequence[Label | None],
        probas: Sequence[Mapping[str, float] | None],
        order: int,
    ) -> list[tuple[int, int, Signal, str | None, Hit]]:
        """The probability of each predicted class into the estimate, and the expected error
        (one minus it) into its detector. Predictions of the model before a rebaseline and
        those without probabilities are left out."""
        assert self._estimated is not None
        assert self._estimated_watch is not None
        offset = max(0, self._baseline - start)
        at, confidence = [], []
        positives: list[tuple[float, bool]] | None = []
        for i in range(offset, len(predictions)):
            proba, pred = probas[i], predictions[i]
            if proba is None or pred is None or (c := proba.get(str(pred))) is None:
                continue
            at.append(start + i)
            confidence.append(c)
            if positives is not None and len(proba) == 2:
                # the positive class is the model's second (scikit-learn's classes_[1]); the
                # daemon's own probabilities come in the model's class order
                positive: str = list(proba)[-1]
                positives.append((proba[positive], str(pred) == positive))
            else:
                positives = None  # not a binary model: accuracy only
        if not at:
            return []
        self._estimated.extend(confidence, positives=positives)
        self._estimated_map.extend(at)
        expected = [1.0 - c for c in confidence]
        self._recent_expected.extend_columns([expected])
        emap = self._estimated_map
        return [
            (emap.index_at(h.at), order, "estimated", None, h)
            for h in self._estimated_watch.feed(expected)
        ]

    def update_outcomes(
        self,
        indices: Sequence[int],
        predictions: Sequence[Label],
        labels: Sequence[Label],
        now: float,
    ) -> list[MonitorEvent]:
        """Feed joined (prediction, label) pairs in label-arrival order.

        Classification feeds 0/1 errors, regression absolute errors, to the error detector
        and the live score. Outcomes of records before the last :meth:`rebaseline` are
        ignored: they judge the previous model.
        """
        if not (len(indices) == len(predictions) == len(labels)):
            raise ValueError(
                f"update_outcomes: got {len(indices)} indices, {len(predictions)} predictions and"
                f" {len(labels)} labels, expected equal lengths"
            )
        keep = [i for i, index in enumerate(indices) if index >= self._baseline]
        if len(keep) < len(indices):
            indices = [indices[i] for i in keep]
            predictions = [predictions[i] for i in keep]
            labels = [labels[i] for i in keep]
        if not indices:
            return []
        errors: list[float]
        if self.schema.task == "classification":
            wrong = [1.0 if p != y else 0.0 for p, y in zip(predictions, labels, strict=True)]
            self._live.extend([1.0 - w for w in wrong])
            # FHDDM detects a fall of its input's mean, so it watches correctness, not errors.
            errors = [1.0 - w for w in wrong] if self._error.kind == "fhddm" else wrong
        else:
            errors = [abs(float(p) - float(y)) for p, y in zip(predictions, labels, strict=True)]
            self._live.extend(errors)
        self._labels += len(indices)
        self._error_map.extend(indices)
        self._recent_errors.extend_columns([errors])
        raw: list[tuple[int, int, Signal, str | None, Hit]] = [
            (self._error_map.index_at(hit.at), 0, "error", None, hit)
            for hit in self._error.feed(errors)
        ]
        return self._events(raw, now)

    def rebaseline(self, index: int) -> None:
        """A new model serves from record ``index``: every detector and the live score start over.

        The alarm policy forgets pending detections too, so the swap itself raises nothing.
        """
        for watch in self._numeric.values():
            watch.reset()
        for cats in self._categorical.values():
            cats.reset()
        self._prediction.reset()
        self._error.reset()
        if self._estimated is not None and self._estimated_watch is not None:
            self._estimated.reset()
            self._estimated_watch.reset()
        if self._moments is not None:
            self._moments.reset()
        if self._scores is not None:
            self._scores.reset()
        self._live.reset()
        self._policy.reset()
        self._last_drift.clear()
        self._change.clear()
        self._regime.clear()
        self._rebaselined = {
            "feature": self._features_map.length,
            "error": self._error_map.length,
            "estimated": self._estimated_map.length,
        }
        self._baseline = max(self._baseline, index)

    # -- policy -------------------------------------------------------------------------------

    def _events(
        self, raw: list[tuple[int, int, Signal, str | None, Hit]], now: float
    ) -> list[MonitorEvent]:
        if not raw:
            return []
        raw.sort(key=lambda r: (r[0], r[1]))
        maps = {
            "feature": self._features_map,
            "category": self._features_map,
            "prediction": self._prediction_map,
            "error": self._error_map,
            "estimated": self._estimated_map,
        }
        events: list[MonitorEvent] = []
        for index, _, signal, feature, hit in raw:
            stats = dict(hit.stats)
            if signal == "error":
                stats["detector"] = self._error.kind
            elif signal == "feature" and feature is not None:
                stats["detector"] = self._numeric[feature].kind
            if hit.level != DRIFT:
                self._counts["warning"] += 1
                change = maps[signal].index_at(hit.change)
                events.append(
                    MonitorEvent("warning", None, signal, feature, index, now, change, stats)
                )
                continue
            key = (signal, feature, stats.get("category"), stats.get("test"))
            if not self._policy.admit(key, index):
                self._counts["suppressed"] += 1
                continue
            # estimated only for what is reported: a suppressed firing needs no change point
            change = maps[signal].index_at(self._estimate(signal, feature, hit))
            self._counts["detection"] += 1
            self._last_drift[(signal, feature)] = index
            events.append(
                MonitorEvent("detection", None, signal, feature, index, now, change, stats)
            )
            if signal in ("feature", "category") and feature is not None:
                self._change[feature] = change
                group = self._policy.feature_drift(feature, index)
                if group:
                    first = min(self._change.get(f, change) for f in group)
                    # a correlation names both features of the pair that changed
                    named = list(dict.fromkeys([*group, *stats.get("features", ())]))
                    alarm_stats = {"features": named, "needed": self._policy.needed}
                    if "test" in stats:
                        alarm_stats["test"] = stats["test"]
                    events.append(
                        self._alarm("data_drift", signal, feature, index, now, first, alarm_stats)
                    )
            elif signal == "error" and self._policy.concept_drift(index):
                events.append(self._alarm("concept_drift", signal, None, index, now, change, stats))
            elif (
                signal == "estimated"
                and (stats.get("mean_after") or 0.0) > (stats.get("mean_before") or 0.0)
                and self._policy.performance_drop(index)
            ):
                # Only a rise of the expected error: a model growing more confident is no alarm.
                kind = "performance_drop_estimated"
                events.append(self._alarm(kind, signal, None, index, now, change, stats))
        return events

    def _estimate(self, signal: Signal, feature: str | None, hit: Hit) -> int:
        """The stream position where the change the detector found most likely began: the
        maximum-likelihood split of the stream's values since its current regime began (see
        :mod:`driftd.monitor.changepoint`); the detector's own guess where there are no values
        (predictions)."""
        test = hit.stats.get("test")
        if signal == "feature" and test is not None and self._moments is not None:
            return self._estimate_moment(feature, hit)
        if signal == "category" and feature is not None:
            return self._estimate_category(feature, hit)
        if signal == "feature" and feature is not None:
            recent, column = self._recent, self._numeric_order[feature]
        elif signal == "error":
            recent, column = self._recent_errors, 0
        elif signal == "estimated":
            recent, column = self._recent_expected, 0
        else:
            return hit.change
        key = (signal, feature)
        start = self._regime.get(key, self._reset_at(signal))
        found = recent.change_point(column, start, hit.at + 1)
        if found is None:
            return hit.change
        self._regime[key] = found  # the next change is looked for after this one
        return found

    def _estimate_moment(self, feature: str | None, hit: Hit) -> int:
        """The change point of a variance or correlation change: the mean-shift split of the
        squared deviations, or of the pair's standardised products, since the regime began."""
        assert self._moments is not None
        names = hit.stats["features"]
        key: tuple[Signal, str | None] = ("feature", f"{hit.stats['test']}:{','.join(names)}")
        start = self._regime.get(key, self._reset_at("feature"))
        mean, sd = self._moments.reference_mean, self._moments.reference_sd
        cols = [self._numeric_order[n] for n in names]
        stop = hit.at + 1
        first, values = self._recent.window(cols[0], max(start, stop - RECENT), stop)
        z = (values - mean[cols[0]]) / sd[cols[0]]
        if hit.stats["test"] == "variance":
            series = z**2
        else:
            _, other = self._recent.window(cols[1], first, stop)
            series = z * (other - mean[cols[1]]) / sd[cols[1]]
        return self._split(key, first, series, hit)

    def _estimate_category(self, feature: str, hit: Hit) -> int:
        """The change point of a category's share: the mean-shift split of its indicator (or
        of "not in the top categories" for the other bucket) since the regime began."""
        category = hit.stats["category"]
        key: tuple[Signal, str | None] = ("category", f"{feature}:{category}")
        start = self._regime.get(key, self._reset_at("feature"))
        stop = hit.at + 1
        column = self._categorical_order[feature]
        first, values = self._recent_categories.window(column, max(start, stop - RECENT), stop)
        if category == OTHER:
            top = np.asarray(self._categorical[feature].categories, dtype=object)
            indicator = ~np.isin(values, top)
        else:
            indicator = values == category
        return self._split(key, first, np.asarray(indicator, dtype=np.float64), hit)

    def _split(
        self, key: tuple[Signal, str | None], first: int, series: npt.NDArray[np.float64], hit: Hit
    ) -> int:
        """The mean-shift split of ``series`` (stream positions from ``first``), remembered as
        where ``key``'s next change is looked for; the detector's guess when there is none."""
        k = mean_change(series)
        if k is None:
            return hit.change
        self._regime[key] = first + k
        return first + k

    def _reset_at(self, signal: Signal) -> int:
        """The stream position of the last rebaseline (0 before the first)."""
        return self._rebaselined.get(signal, 0)

    def _alarm(  # noqa: PLR0917 - an event's fields, in MonitorEvent's order
        self,
        kind: str,
        signal: Signal,
        feature: str | None,
        index: int,
        now: float,
        change: int,
        stats: dict[str, Any],
    ) -> MonitorEvent:
        self._counts["alarm"] += 1
        alarm: AlarmKind = (
            "data_drift"
            if kind == "data_drift"
            else "performance_drop_estimated"
            if kind == "performance_drop_estimated"
            else "concept_drift"
        )
        event = MonitorEvent("alarm", alarm, signal, feature, index, now, change, dict(stats))
        self._last_alarm = event.as_dict()
        return event

    # -- reading ------------------------------------------------------------------------------

    def _state(self, signal: str, feature: str | None, warning: bool) -> int:
        last = self._last_drift.get((signal, feature))
        if last is not None and self._next_index - last <= self.config.alarm.window:
            return 2
        return 1 if warning else 0

    def detector_states(self) -> list[DetectorState]:
        """One state per detector group: each feature, the predictions, the errors."""
        out = [
            DetectorState("feature", name, self._state("feature", name, False), w.estimate)
            for name, w in self._numeric.items()
        ]
        out += [
            DetectorState("category", name, self._state("category", name, False), c.estimate)
            for name, c in self._categorical.items()
        ]
        out.append(
            DetectorState(
                "prediction",
                None,
                self._state("prediction", None, False),
                self._prediction.estimate,
            )
        )
        out.append(
            DetectorState(
                "error", None, self._state("error", None, self._error.warning), self._error.estimate
            )
        )
        if self._estimated_watch is not None:
            w = self._estimated_watch
            out.append(
                DetectorState("estimated", None, self._state("estimated", None, False), w.estimate)
            )
        return out

    @property
    def live_score(self) -> tuple[str, float | None]:
        """``("accuracy", value)`` or ``("mae", value)``; the value is None until enough labels."""
        return self._live.metric, self._live.value

    @property
    def estimated_scores(self) -> dict[str, Estimate]:
        """The live score estimated from the probabilities (accuracy; F1 and ROC AUC for a
        binary model), empty until ``live_min_labels`` predictions with probabilities."""
        return self._estimated.scores() if self._estimated is not None else {}

    @property
    def unseen_categories(self) -> dict[str, int]:
        """Records per categorical feature whose category was not in the current reference."""
        return {name: c.unseen for name, c in self._categorical.items()}

    @property
    def next_index(self) -> int:
        """The index of the next record the monitor expects (replays below it are skipped)."""
        return self._next_index

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for ``GET /v1/status``."""
        metric, value = self.live_score
        return {
            "records": self._next_index,
            "labels": self._labels,
            "baseline_index": self._baseline,
            "live_score": {"metric": metric, "value": value, "count": self._live.count},
            "estimated_score": {m: e.as_dict() for m, e in self.estimated_scores.items()},
            "detectors": [s.as_dict() for s in self.detector_states()],
            "numeric_detectors": {name: w.kind for name, w in self._numeric.items()},
            "numeric_confidence": {
                name: w.params[CONFIDENCE[w.kind][0]]
                for name, w in self._numeric.items()
                if w.kind in CONFIDENCE and CONFIDENCE[w.kind][0] in w.params
            },
            "error_detector": self._error.kind,
            "unseen_categories": self.unseen_categories,
            "unseen_examples": {n: list(c.unseen_examples) for n, c in self._categorical.items()},
            "drifting_features": self._policy.drifting(),
            "counts": dict(self._counts),
            "last_alarm": self._last_alarm,
        }

    # -- checkpoint ---------------------------------------------------------------------------

    def dumps(self) -> bytes:
        """The monitor's full state, for :meth:`loads` after a restart."""
        header = {"schema": self.schema.fingerprint(), "config": self.config.fingerprint()}
        return frame(self, header)

    @classmethod
    def loads(cls, data: bytes, schema: Schema, config: MonitorConfig | None = None) -> Monitor:
        """Restore a monitor; raise :class:`CheckpointMismatch` if it was written under another
        schema or detector configuration. Alarm policy and live-window settings are taken from
        ``config`` (they may change between runs without losing detector state)."""
        config = config if config is not None else MonitorConfig()
        expected = {"schema": schema.fingerprint(), "config": config.fingerprint()}
        monitor = unframe(data, expected)
        if not isinstance(monitor, cls):
            from driftd.monitor.checkpoint import CheckpointMismatch

            raise CheckpointMismatch("checkpoint does not hold a monitor")
        monitor.schema = schema
        monitor.config = config
        if "_recent_expected" not in monitor.__dict__:  # from before these were estimated
            monitor._fresh_estimates()
        alarm = config.alarm
        monitor._policy.configure(alarm.features, alarm.window, alarm.suppress)
        monitor._live.configure(config.live_window, config.live_min_labels)
        if monitor._estimated is not None:
            monitor._estimated.configure(config.live_window, config.live_min_labels)
        return monitor

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["schema"], state["config"]  # passed back in by loads()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
