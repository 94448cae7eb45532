"""The drift monitor on seeded synthetic streams: detections, alarms, checkpoints, rebaselines."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest

from driftd.ingest.columns import Rows
from driftd.ingest.schema import Feature, Schema
from driftd.monitor import (
    AlarmConfig,
    CheckpointMismatch,
    DetectorState,
    Monitor,
    MonitorConfig,
    MonitorEvent,
)
from driftd.monitor.changepoint import RecentValues
from driftd.monitor.scores import CALIBRATION, delta_for
from tests import streams

CHANGE = 5000


def numeric_schema(n: int = 1, task: str = "classification") -> Schema:
    return Schema(features=tuple(Feature(name) for name in streams.feature_names(n)), task=task)  # type: ignore[arg-type]


def feed(
    monitor: Monitor, rows: list[dict[str, float | str]], batch: int = 500
) -> list[MonitorEvent]:
    events: list[MonitorEvent] = []
    for start in range(0, len(rows), batch):
        events += monitor.update(start, rows[start : start + batch], None, now=float(start))
    return events


def first(events: list[MonitorEvent], kind: str = "detection", at: int = CHANGE) -> MonitorEvent:
    found = [e for e in events if e.kind == kind and e.index >= at]
    assert found, f"no {kind} after record {at}: {events}"
    return found[0]


@pytest.mark.parametrize("seed", range(3))
def test_abrupt_mean_shift_is_detected_within_200_records(seed: int) -> None:
    monitor = Monitor(numeric_schema())
    rows = streams.records({"x0": streams.mean_shift(10_000, CHANGE, seed, shift=1.0)})
    events = feed(monitor, rows)
    assert not [e for e in events if e.index < CHANGE]
    hit = first(events)
    assert (hit.signal, hit.feature) == ("feature", "x0")
    assert hit.index - CHANGE <= 200
    assert CHANGE - 500 <= hit.change_point <= hit.index
    assert hit.stats["mean_before"] == pytest.approx(0.0, abs=0.2)
    # in normal-score units: the window ADWIN kept straddles the change, so it rose by less
    # than the 0.9 a whole sd moves a normal feature's score
    assert hit.stats["mean_after"] - hit.stats["mean_before"] > 0.2
    # one feature: one drifting feature is enough for a data-drift alarm
    alarm = first(events, "alarm")
    assert (alarm.alarm, alarm.index, alarm.change_point) == (
        "data_drift",
        hit.index,
        hit.change_point,
    )


@pytest.mark.parametrize("seed", range(3))
def test_variance_shift_is_detected_within_1000_records(seed: int) -> None:
    monitor = Monitor(numeric_schema())
    rows = streams.records({"x0": streams.variance_shift(12_000, CHANGE, seed, scale=3.0)})
    events = feed(monitor, rows)
    assert not [e for e in events if e.index < CHANGE]
    assert first(events).index - CHANGE <= 1000


@pytest.mark.parametrize("seed", range(3))
def test_category_frequency_shift_is_detected_within_500_records(seed: int) -> None:
    schema = Schema(features=(Feature("colour", "categorical"),))
    monitor = Monitor(schema)
    rows = [{"colour": c} for c in streams.categories(10_000, CHANGE, seed)]
    events = feed(monitor, rows[: CHANGE + 1500])
    assert not [e for e in events if e.index < CHANGE]
    hit = first(events)
    assert (hit.signal, hit.feature) == ("category", "colour")
    assert hit.index - CHANGE <= 500
    assert hit.stats["category"] in ("a", "d", "__other__")
    assert monitor.unseen_categories == {"colour": 0}
    state = next(s for s in monitor.detector_states() if s.signal == "category")
    assert state.state == 2
    assert state.estimate > 0.05


@pytest.mark.parametrize("seed", range(3))
def test_error_rate_jump_raises_a_concept_drift_alarm_within_600_labels(seed: int) -> None:
    monitor = Monitor(numeric_schema())
    predictions, labels = streams.error_bits(20_000, 10_000, seed, 0.1, 0.3)
    events: list[MonitorEvent] = []
    for start in range(0, 20_000, 250):
        idx = list(range(start, start + 250))
        events += monitor.update_outcomes(
            idx, predictions[start : start + 250], labels[start : start + 250], now=1.0
        )
    assert not [e for e in events if e.kind != "warning" and e.index < 10_000]
    alarm = first(events, "alarm", 10_000)
    assert (alarm.alarm, alarm.signal, alarm.feature) == ("concept_drift", "error", None)
    assert alarm.index - 10_000 <= 600
    assert 9_800 <= alarm.change_point <= alarm.index  # the estimate: where the rise began
    metric, value = monitor.live_score
    assert metric == "accuracy"
    assert value == pytest.approx(0.7, abs=0.05)


def test_regression_error_stream_detects_a_larger_absolute_error() -> None:
    monitor = Monitor(numeric_schema(task="regression"))
    predictions, targets = streams.regression_outcomes(20_000, 10_000, seed=1)
    events = monitor.update_outcomes(list(range(20_000)), predictions, targets, now=1.0)
    hit = first(events, "detection", 10_000)
    assert hit.signal == "error"
    assert hit.index - 10_000 <= 300
    assert first(events, "alarm", 10_000).alarm == "concept_drift"
    metric, value = monitor.live_score
    assert metric == "mae"
    assert value == pytest.approx(1.6, abs=0.15)  # E|N(0, 2)| = 2 * sqrt(2 / pi)


def test_stationary_stream_of_200k_records_and_20_features_raises_no_alarm() -> None:
    monitor = Monitor(numeric_schema(20))
    events: list[MonitorEvent] = []
    for start, rows in streams.gaussian_batches(200_000, 20, seed=7):
        events += monitor.update(start, rows, None, now=float(start))
    assert [e for e in events if e.kind == "alarm"] == []
    assert monitor.next_index == 200_000
    assert all(s.state == 0 for s in monitor.detector_states())


@pytest.mark.parametrize("seed", range(3))
def test_on_the_default_config_a_drift_in_one_of_20_features_raises_an_alarm(seed: int) -> None:
    """The alarm is what reaches the retrain trigger: a shift confined to one feature of 20 must
    raise one, naming that feature, soon after the change (detection.py: 47 records
    median over 20 seeds for +1 sd)."""
    monitor = Monitor(numeric_schema(20))
    rng = np.random.default_rng(seed)
    block = rng.normal(0.0, 1.0, (2 * CHANGE, 20))
    block[CHANGE:, 7] += 1.0
    names = streams.feature_names(20)
    events: list[MonitorEvent] = []
    for start in range(0, 2 * CHANGE, 1000):
        rows = streams.records({n: block[start : start + 1000, i] for i, n in enumerate(names)})
        events += monitor.update(start, rows, None, now=float(start))
    alarm = first(events, "alarm")
    assert alarm.alarm == "data_drift" and alarm.stats["features"] == ["x7"]
    assert alarm.index - CHANGE < 200


def test_data_drift_alarm_needs_k_features_within_w_records() -> None:
    # the mean detectors alone: a window straddling a step also has a larger variance
    alarm = AlarmConfig(features=2, window=1000, suppress=1000)
    config = MonitorConfig(alarm=alarm, second_moments=False)
    monitor = Monitor(numeric_schema(3), config)
    x0 = streams.mean_shift(20_000, 5_000, 0, 2.0)
    x1 = streams.mean_shift(20_000, 12_000, 1, 2.0)  # 7,000 records later: outside the window
    x2 = streams.mean_shift(20_000, 12_000, 2, 2.0)  # with x1: two features in one window
    events = feed(monitor, streams.records({"x0": x0, "x1": x1, "x2": x2}))
    detections = [(e.feature, e.index // 1000) for e in events if e.kind == "detection"]
    assert [f for f, _ in detections[:1]] == ["x0"]
    assert {f for f, _ in detections[1:3]} == {"x1", "x2"}
    alarms = [e for e in events if e.kind == "alarm"]
    assert len(alarms) == 1
    assert alarms[0].alarm == "data_drift"
    assert sorted(alarms[0].stats["features"]) == ["x1", "x2"]
    assert 11_000 <= alarms[0].change_point <= alarms[0].index


def test_a_detector_firing_again_within_the_suppression_span_is_not_reported() -> None:
    # the mean detector alone: a window straddling a step also has a larger variance
    alarm = AlarmConfig(features=1, window=100, suppress=5000)
    config = MonitorConfig(alarm=alarm, second_moments=False)
    monitor = Monitor(numeric_schema(), config)
    x = streams.mean_shift(12_000, 4_000, 3, 2.0)
    x[5_000:] += 2.0  # a second shift 1,000 records after the first: suppressed
    x[10_000:] += 2.0  # a third, 6,000 records after the first: reported again
    events = feed(monitor, streams.records({"x0": x}))
    detections = [e.index for e in events if e.kind == "detection"]
    assert len(detections) == 2
    assert detections[0] < 4_300
    assert detections[1] >= 10_000
    assert monitor.status()["counts"]["suppressed"] >= 1


def test_unseen_categories_are_counted_and_never_raise() -> None:
    schema = Schema(features=(Feature("x0"), Feature("colour", "categorical")))
    monitor = Monitor(schema, MonitorConfig(category_reference=100))
    rows = [{"x0": 0.0, "colour": "red" if i % 2 else "blue"} for i in range(200)]
    monitor.update(0, rows, None, now=0.0)
    fresh = [{"x0": 0.0, "colour": name} for name in ["green", "red", "mauve", "green"]]
    monitor.update(200, fresh, None, now=1.0)
    assert monitor.unseen_categories == {"colour": 3}
    assert monitor.status()["unseen_examples"] == {"colour": ["green", "mauve"]}


def test_unseen_categories_during_the_reference_phase_are_not_counted() -> None:
    schema = Schema(features=(Feature("colour", "categorical"),))
    monitor = Monitor(schema, MonitorConfig(category_reference=100))
    monitor.update(0, [{"colour": str(i)} for i in range(50)], None, now=0.0)
    assert monitor.unseen_categories == {"colour": 0}


def test_a_monitor_of_categorical_features_only_checkpoints_and_restores() -> None:
    """A schema with no numeric feature (STAGGER's) once failed its checkpoint."""
    schema = Schema(features=(Feature("colour", "categorical"), Feature("size", "categorical")))
    monitor = Monitor(schema, MonitorConfig(category_reference=100))
    rows = [{"colour": "red" if i % 3 else "blue", "size": str(i % 2)} for i in range(500)]
    monitor.update(0, rows, [i % 2 for i in range(500)], now=0.0)
    restored = Monitor.loads(monitor.dumps(), schema, MonitorConfig(category_reference=100))
    more = [{"colour": "red", "size": "1"}] * 300
    assert restored.update(500, more, [1] * 300, now=1.0) == monitor.update(
        500, more, [1] * 300, now=1.0
    )


def test_predictions_of_a_classifier_feed_a_category_watch() -> None:
    monitor = Monitor(numeric_schema())
    rows = [{"x0": 0.0}] * 10_000
    preds = [int(c == "a") for c in streams.categories(10_000, CHANGE, 5)]
    events = monitor.update(0, rows, preds, now=0.0)
    hit = first(events)
    assert (hit.signal, hit.feature) == ("prediction", None)
    assert hit.index - CHANGE <= 500


def test_predictions_may_be_missing_for_some_records() -> None:
    monitor = Monitor(numeric_schema(task="regression"))
    rows = [{"x0": 0.0}] * 4
    assert monitor.update(0, rows, [1.0, None, 2.0, None], now=0.0) == []
    assert monitor._prediction.pos == 2


def test_rebaseline_resets_every_detector_and_the_swap_raises_nothing() -> None:
    monitor = Monitor(numeric_schema())
    predictions, labels = streams.error_bits(6000, 6000, 0)
    monitor.update(
        0, streams.records({"x0": streams.mean_shift(6000, 6000, 0)}), predictions, now=0.0
    )
    monitor.update_outcomes(list(range(6000)), predictions, labels, now=0.0)
    assert monitor.live_score[1] is not None
    monitor.rebaseline(6000)
    assert monitor.live_score[1] is None
    states = monitor.detector_states()
    assert all(s.state == 0 for s in states)
    assert monitor._error.pos == monitor._error.origin
    # late labels of the previous model's predictions are ignored ...
    bad = [1 - y for y in labels]
    assert monitor.update_outcomes(list(range(6000)), bad, labels, now=2.0) == []
    assert monitor.live_score[1] is None
    # ... and the new model's traffic, shifted relative to the old reference, starts a new one
    rows = streams.records({"x0": streams.mean_shift(4000, 0, 9, shift=3.0)})
    events = monitor.update(6000, rows, [0] * 4000, now=3.0)
    assert events == []


def test_predictions_must_match_the_records() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 records"):
        Monitor(numeric_schema()).update(0, [{"x0": 1.0}] * 3, [1, 0], now=0.0)


def test_replayed_records_are_skipped() -> None:
    monitor = Monitor(numeric_schema())
    rows = streams.records({"x0": streams.mean_shift(1000, 1000, 0)})
    monitor.update(0, rows, None, now=0.0)
    assert monitor.update(500, rows[500:], None, now=1.0) == []
    assert monitor._numeric["x0"].pos == 1000
    monitor.update(900, rows[900:] + rows[:50], None, now=1.0)
    assert monitor.next_index == 1050


def test_restore_keeps_a_building_drift_and_fires_no_burst() -> None:
    """A checkpoint taken mid-change, restored, sees exactly the events of an uninterrupted run."""
    schema = Schema(features=(*numeric_schema(3).features, Feature("colour", "categorical")))
    rows = streams.records(
        {
            "x0": streams.mean_shift(12_000, CHANGE, 0, 1.0),
            "x1": streams.variance_shift(12_000, CHANGE, 1),
            "x2": streams.mean_shift(12_000, 12_000, 2),
            "colour": np.array(streams.categories(12_000, CHANGE, 3)),
        }
    )
    predictions, labels = streams.error_bits(12_000, CHANGE, 4)

    def run(monitor: Monitor, start: int, stop: int) -> list[MonitorEvent]:
        events: list[MonitorEvent] = []
        for at in range(start, stop, 10):
            end = min(stop, at + 10)
            events += monitor.update(at, rows[at:end], predictions[at:end], now=float(at))
            events += monitor.update_outcomes(
                list(range(at, end)), predictions[at:end], labels[at:end], now=float(at)
            )
        return events

    straight = Monitor(schema)
    expected = run(straight, 0, 12_000)
    assert [e for e in expected if e.index >= CHANGE], "the streams must drift"
    halted = Monitor(schema)
    before = run(halted, 0, CHANGE + 30)  # inside the change, before any detector fired on it
    restored = Monitor.loads(halted.dumps(), schema, MonitorConfig())
    after = run(restored, CHANGE + 30, 12_000)
    assert before + after == expected
    assert restored.status() == straight.status()


def test_checkpoint_from_another_schema_or_detector_config_is_refused() -> None:
    monitor = Monitor(numeric_schema(2))
    data = monitor.dumps()
    with pytest.raises(CheckpointMismatch, match="schema"):
        Monitor.loads(data, numeric_schema(3), MonitorConfig())
    with pytest.raises(CheckpointMismatch, match="config"):
        Monitor.loads(data, numeric_schema(2), MonitorConfig(numeric_detector="page_hinkley"))
    with pytest.raises(CheckpointMismatch, match="config"):
        Monitor.loads(
            data, numeric_schema(2), MonitorConfig(detector_params={"adwin": {"delta": 0.01}})
        )
    with pytest.raises(CheckpointMismatch, match="not a driftd"):
        Monitor.loads(b"garbage", numeric_schema(2), MonitorConfig())
    # policy settings are not detector state: they may change across a restart
    relaxed = MonitorConfig(alarm=AlarmConfig(features=1, window=10, suppress=5))
    restored = Monitor.loads(data, numeric_schema(2), relaxed)
    assert restored._policy.features == 1
    assert restored.config is relaxed


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_loader_refuses_anything_but_monitor_classes() -> None:
    monitor = Monitor(numeric_schema())
    data = monitor.dumps()
    head = data[: data.index(b"\n", len(b"DRIFTD-MONITOR\n")) + 1]
    for payload in (_Exploit(), [getattr], {"f": dataclasses.replace}):
        with pytest.raises(CheckpointMismatch, match="refusing"):
            Monitor.loads(head + pickle.dumps(payload), numeric_schema(), MonitorConfig())


def test_monitor_config_defaults_load_and_validate() -> None:
    assert MonitorConfig().validate() == []
    bad = MonitorConfig(
        per_feature={"x0": "ddm"}, detector_params={"adwin": {"delta": 0.1, "nope": 1}, "zzz": {}}
    )
    errors = bad.validate()
    assert any(e.startswith("per_feature.x0: got 'ddm'") for e in errors)
    assert any(e.startswith("detector_params.adwin.nope: got an unknown parameter") for e in errors)
    assert any(e.startswith("detector_params.zzz: got an unknown detector") for e in errors)
    with pytest.raises(ValueError, match="per_feature"):
        Monitor(numeric_schema(), MonitorConfig(per_feature={"nope": "adwin"}))


def test_monitor_config_loads_from_toml() -> None:
    from driftd.config import load_text

    config = load_text(
        """
        [schema]
        features = [{name = "x0"}, {name = "x1"}]
        [monitor]
        numeric_detector = "kswin"
        per_feature = {x1 = "page_hinkley"}
        [monitor.detector_params.kswin]
        alpha = 0.001
        [monitor.alarm]
        features = 1
        """
    )
    monitor = Monitor(config.schema_obj(), config.monitor)
    assert monitor.status()["numeric_detectors"] == {"x0": "kswin", "x1": "page_hinkley"}
    # Bonferroni: alpha / 2 features
    assert monitor._numeric["x0"].detector.alpha == pytest.approx(0.0005)


def test_status_and_states_are_json_able() -> None:
    import json

    schema = Schema(features=(Feature("x0"), Feature("c", "categorical")))
    monitor = Monitor(schema)
    monitor.update(0, [{"x0": 1.0, "c": "a"}] * 10, [1] * 10, now=0.0)
    json.dumps(monitor.status())
    states = monitor.detector_states()
    assert [(s.signal, s.feature) for s in states] == [
        ("feature", "x0"),
        ("category", "c"),
        ("prediction", None),
        ("error", None),
        ("estimated", None),
    ]
    assert all(isinstance(s, DetectorState) for s in states)


def test_numeric_features_given_as_an_array_give_the_same_detections() -> None:
    """The engine hands the monitor the stored float block instead of the dicts' values: the
    detections, alarms and detector states must be the same either way."""
    schema = numeric_schema(4)
    rng = np.random.default_rng(3)
    data = rng.normal(size=(12_000, 4))
    data[CHANGE:, 1] += 1.0
    data[8000:, 3] *= 3.0
    names = schema.numeric
    rows: list[dict[str, float | str]] = [dict(zip(names, r.tolist(), strict=True)) for r in data]
    from_dicts, from_array = Monitor(schema), Monitor(schema)
    a: list[MonitorEvent] = []
    b: list[MonitorEvent] = []
    for start in range(0, len(rows), 700):
        a += from_dicts.update(start, rows[start : start + 700], None, now=float(start))
        b += from_array.update(
            start,
            rows[start : start + 700],
            None,
            now=float(start),
            numeric=data[start : start + 700],
        )
    assert a == b and any(e.kind == "detection" for e in a)
    assert from_dicts.detector_states() == from_array.detector_states()
    # a replayed batch (already seen) is skipped alike
    assert from_array.update(0, rows[:700], None, now=1.0, numeric=data[:700]) == []


@pytest.mark.parametrize("seed", range(3))
def test_an_alarm_carries_the_maximum_likelihood_change_point(seed: int) -> None:
    """Not the detector's bucket edge: the split of the feature's values since its regime
    began that best explains a shift in mean (detection.py: median error 1 record at
    +1 sd, against 160 from ADWIN's window)."""
    monitor = Monitor(numeric_schema(20))
    rng = np.random.default_rng(seed)
    block = rng.normal(0.0, 1.0, (2 * CHANGE, 20))
    block[CHANGE:, 3] += 1.0
    events: list[MonitorEvent] = []
    rows = Rows(block, streams.feature_names(20))
    for start in range(0, 2 * CHANGE, 1000):
        part = block[start : start + 1000]
        events += monitor.update(
            start, rows[start : start + 1000], None, float(start), numeric=part
        )
    alarm = first(events, "alarm")
    assert abs(alarm.change_point - CHANGE) <= 30
    assert alarm.change_point <= alarm.index


def test_a_concept_drift_alarm_carries_the_estimated_start_of_the_error_rise() -> None:
    monitor = Monitor(numeric_schema(1))
    preds, labels = streams.error_bits(30_000, CHANGE, 11, before=0.1, after=0.3)
    events: list[MonitorEvent] = []
    for start in range(0, len(preds), 500):
        idx = list(range(start, min(start + 500, len(preds))))
        p, y = preds[start : start + 500], labels[start : start + 500]
        events += monitor.update_outcomes(idx, p, y, 1.0)
    alarm = first(events, "alarm")
    assert alarm.alarm == "concept_drift"
    assert abs(alarm.change_point - CHANGE) <= 150


def test_recent_values_keep_the_newest_and_survive_a_checkpoint() -> None:
    recent = RecentValues(2, capacity=100)
    for start in range(0, 1000, 30):
        n = min(30, 1000 - start)
        recent.extend(np.column_stack([np.arange(start, start + n), -np.arange(start, start + n)]))
    first_kept, values = recent.window(0, 0, 1000)
    assert recent.end == 1000 and first_kept <= 900 and values[-1] == 999  # at least 100 kept
    assert values.tolist() == list(range(first_kept, 1000))
    again = pickle.loads(pickle.dumps(recent))  # noqa: S301 - its own bytes, as a checkpoint
    assert again.window(1, 950, 960)[1].tolist() == [-float(i) for i in range(950, 960)]
    again.extend(np.array([[1000.0, -1000.0]]))
    assert again.window(0, 999, 1001)[1].tolist() == [999.0, 1000.0]


def feed_block(monitor: Monitor, block: np.ndarray) -> list[MonitorEvent]:
    """Feed an array of records in batches of 1,000, as the daemon passes its stored block."""
    names = [f.name for f in monitor.schema.features]
    events: list[MonitorEvent] = []
    for start in range(0, len(block), 1000):
        part = block[start : start + 1000]
        events += monitor.update(start, Rows(part, names), None, float(start), numeric=part)
    return events


def test_on_the_default_config_a_variance_change_in_one_feature_alarms() -> None:
    """ADWIN watches the mean and missed 19 of 20 of these; the variance test sees them."""
    block = np.random.default_rng(4).normal(size=(4 * CHANGE, 20))
    block[CHANGE:, 5] *= 3**0.5
    alarm = first(feed_block(Monitor(numeric_schema(20)), block), "alarm")
    assert alarm.stats["test"] == "variance" and alarm.stats["features"] == ["x5"]
    assert alarm.index - CHANGE <= 600
    assert abs(alarm.change_point - CHANGE) <= 100


def test_on_the_default_config_a_correlation_change_alarms_and_names_the_pair() -> None:
    """Both marginals stay standard normal: only the pair's correlation goes 0 -> 0.9."""
    block = np.random.default_rng(5).normal(size=(4 * CHANGE, 20))
    block[CHANGE:, 9] = 0.9 * block[CHANGE:, 2] + (1 - 0.81) ** 0.5 * block[CHANGE:, 9]
    alarm = first(feed_block(Monitor(numeric_schema(20)), block), "alarm")
    assert alarm.stats["test"] == "correlation"
    assert sorted(alarm.stats["features"]) == ["x2", "x9"]
    assert alarm.index - CHANGE <= 1000


@pytest.mark.parametrize("tails", ["student_t", "lognormal", "correlated"])
def test_the_second_moment_tests_hold_their_budget_on_heavy_tails_and_correlation(
    tails: str,
) -> None:
    rng = np.random.default_rng(6)
    if tails == "student_t":
        block = rng.standard_t(3, (200_000, 20))
    elif tails == "lognormal":
        block = rng.lognormal(0.0, 1.0, (200_000, 20))
    else:
        block = 0.5**0.5 * rng.normal(size=(200_000, 1)) + 0.5**0.5 * rng.normal(size=(200_000, 20))
    events = feed_block(Monitor(numeric_schema(20)), block)
    assert [e for e in events if "test" in e.stats] == []


@pytest.mark.parametrize("tails", ["student_t", "lognormal"])
def test_a_heavy_tailed_or_skewed_feature_does_not_fool_the_mean_detectors(tails: str) -> None:
    """On raw values ADWIN raised about 300 false alarms per million such records; on normal
    scores the mean detectors err as on a normal feature (calibrate_adwin.py)."""
    rng = np.random.default_rng(12)
    if tails == "student_t":
        block = rng.standard_t(3, (200_000, 20))
    else:
        block = rng.lognormal(0.0, 1.0, (200_000, 20))
    robust = feed_block(Monitor(numeric_schema(20)), block)
    raw = feed_block(Monitor(numeric_schema(20), MonitorConfig(robust_scale=False)), block)
    alarms = [sum(e.kind == "alarm" for e in events) for events in (robust, raw)]
    assert alarms[0] == 0 and alarms[1] >= 20, alarms


def test_a_monotone_re_expression_of_a_feature_changes_no_decision() -> None:
    """The mean detectors see ranks: a feature logged in other units, or its logarithm,
    drifts at the same records."""
    rng = np.random.default_rng(3)
    block = rng.normal(size=(30_000, 5))
    block[12_000:, 0] += 0.5
    block[20_000:, 3] -= 1.0
    events = feed_block(Monitor(numeric_schema(5)), block)
    again = feed_block(Monitor(numeric_schema(5)), np.exp(block) * 1000.0)
    found = [(e.kind, e.feature, e.index) for e in events]
    assert [(e.kind, e.feature, e.index) for e in again] == found
    assert ("alarm", "x0") in {(kind, feature) for kind, feature, _ in found}


def test_the_mean_detectors_share_the_run_length_among_the_features() -> None:
    """Unset, ADWIN's delta is the one its calibration gives for the features' share of the
    budget: more features, or a longer run between false alarms, each get a smaller one."""

    def delta(n: int, **kw: Any) -> float:
        monitor = Monitor(numeric_schema(n), MonitorConfig(**kw))
        return float(monitor.status()["numeric_confidence"]["x0"])

    config = MonitorConfig()
    assert delta(20) == pytest.approx(delta_for(2 * config.false_alarm_run, 20))
    assert delta(40) < delta(20) < delta(5)
    assert delta(20, false_alarm_run=1e9) < delta(20)
    # one false detection per record, as calibrated, at the delta read off the table
    for d, rate in CALIBRATION:
        assert delta_for(1 / rate, 1) == pytest.approx(d)
    # a delta the user sets is divided among the features as before
    custom = MonitorConfig(detector_params={"adwin": {"delta": 0.01}})
    assert delta(20, detector_params=custom.detector_params) == pytest.approx(0.01 / 20)
