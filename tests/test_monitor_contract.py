"""The same checks over every detector kind the monitor offers (river's contract-suite style)."""

from __future__ import annotations

import copy
import doctest
import importlib
import pickle

import numpy as np
import pytest
from river import drift

from driftd.ingest.schema import Feature, Schema
from driftd.monitor import DETECTORS, Monitor, MonitorConfig, Watch
from driftd.monitor.checkpoint import frame, unframe
from driftd.monitor.config import BINARY_DETECTORS, NUMERIC_DETECTORS
from tests import streams

KINDS = sorted(DETECTORS)
MODULES = [
    "alarms",
    "categories",
    "estimated",
    "events",
    "_index",
    "kswin",
    "live",
    "monitor",
    "scores",
    "watch",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    """Every component's seeded docstring example prints exactly what it shows."""
    module = importlib.import_module(f"driftd.monitor.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


def stream(kind: str, seed: int) -> list[float]:
    """A stream with a few changes, binary for the error-stream detectors."""
    rng = np.random.default_rng(seed)
    if kind in BINARY_DETECTORS:
        rates = np.repeat([0.1, 0.4, 0.1, 0.5], 3000)
        errors = rng.random(len(rates)) < rates
        # FHDDM detects a fall of its input's mean: the monitor feeds it correctness
        return (~errors if kind == "fhddm" else errors).astype(float).tolist()
    means = np.repeat([0.0, 2.0, -1.0, 3.0], 3000)
    return (rng.normal(0.0, 1.0, len(means)) + means).tolist()


def params(kind: str) -> dict[str, object]:
    return {"seed": 3} if kind == "kswin" else {}


def hits(watch: Watch, values: list[float], batch: int = 700) -> list[tuple[int, int, int]]:
    out = []
    for start in range(0, len(values), batch):
        out += [(h.at, h.level, h.change) for h in watch.feed(values[start : start + batch])]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_detector_detects_the_changes_of_the_contract_stream(kind: str) -> None:
    found = hits(Watch(kind, params(kind)), stream(kind, 0))
    drifts = [at for at, level, _ in found if level == 2]
    assert any(3000 <= at < 6000 for at in drifts)
    assert all(change <= at for at, _, change in found)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_repeatability_and_batch_size_independence(kind: str) -> None:
    values = stream(kind, 1)
    first = hits(Watch(kind, params(kind)), values, batch=700)
    assert first == hits(Watch(kind, params(kind)), values, batch=700)
    assert first == hits(Watch(kind, params(kind)), values, batch=1)
    assert first == hits(Watch(kind, params(kind)), values, batch=4096)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", [1500, 4000])
def test_pickle_round_trip_gives_identical_future_decisions(kind: str, cut: int) -> None:
    values = stream(kind, 2)
    watch = Watch(kind, params(kind))
    hits(watch, values[:cut])
    clone = pickle.loads(pickle.dumps(watch))  # noqa: S301 - bytes this test just wrote
    restricted = unframe(frame(watch, {}), {})
    deep = copy.deepcopy(watch)
    expected = hits(watch, values[cut:])
    assert expected == hits(clone, values[cut:])
    assert expected == hits(restricted, values[cut:])
    assert expected == hits(deep, values[cut:])


@pytest.mark.parametrize("kind", KINDS)
def test_reset_forgets_the_reference(kind: str) -> None:
    values = stream(kind, 3)
    watch = Watch(kind, params(kind))
    hits(watch, values[:5000])
    watch.reset()
    assert watch.origin == watch.pos == 5000
    fresh = Watch(kind, params(kind))
    fresh.pos = fresh.origin = fresh.warning_start = 5000
    fresh._low = fresh._high = 5000
    assert hits(watch, values[5000:]) == hits(fresh, values[5000:])


def test_adwin_fast_path_takes_river_adwin_decisions() -> None:
    values = stream("adwin", 4) + stream("adwin", 5)
    river_adwin = drift.ADWIN()
    expected = []
    for i, x in enumerate(values):
        river_adwin.update(x)
        if river_adwin.drift_detected:
            expected.append((i, river_adwin.width))
    watch = Watch("adwin")
    got = [(h.at, h.stats["width"]) for h in watch.feed(values)]
    assert got == expected
    assert len(expected) >= 3


@pytest.mark.parametrize("kind", NUMERIC_DETECTORS)
def test_monitor_round_trip_per_numeric_detector(kind: str) -> None:
    schema = Schema(features=(Feature("a"), Feature("b")), task="regression")
    config = MonitorConfig(numeric_detector=kind, regression_error_detector="page_hinkley")
    rows = streams.records({"a": np.array(stream("adwin", 6)), "b": np.array(stream("adwin", 7))})
    preds, targets = streams.regression_outcomes(len(rows), 6000, 8)
    monitor = Monitor(schema, config)
    monitor.update(0, rows[:5000], preds[:5000], now=0.0)
    monitor.update_outcomes(list(range(5000)), preds[:5000], targets[:5000], now=0.0)
    restored = Monitor.loads(monitor.dumps(), schema, config)
    tail = (5000, rows[5000:], preds[5000:])
    expected = monitor.update(*tail, now=1.0)
    expected += monitor.update_outcomes(
        list(range(5000, len(rows))), preds[5000:], targets[5000:], now=1.0
    )
    got = restored.update(*tail, now=1.0)
    got += restored.update_outcomes(
        list(range(5000, len(rows))), preds[5000:], targets[5000:], now=1.0
    )
    assert got == expected
    assert any(e.kind == "detection" for e in expected)


@pytest.mark.parametrize(
    "kind", ["ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin", "page_hinkley"]
)
def test_monitor_round_trip_and_rebaseline_per_error_detector(kind: str) -> None:
    schema = Schema(features=(Feature("a"),))
    config = MonitorConfig(error_detector=kind)  # type: ignore[arg-type]
    preds, labels = streams.error_bits(12_000, 6000, 9, 0.1, 0.4)
    monitor = Monitor(schema, config)
    monitor.update_outcomes(list(range(5000)), preds[:5000], labels[:5000], now=0.0)
    restored = Monitor.loads(monitor.dumps(), schema, config)
    idx = list(range(5000, 12_000))
    expected = monitor.update_outcomes(idx, preds[5000:], labels[5000:], now=1.0)
    assert expected == restored.update_outcomes(idx, preds[5000:], labels[5000:], now=1.0)
    assert any(e.kind == "alarm" and e.alarm == "concept_drift" for e in expected)
    monitor.rebaseline(12_000)
    assert monitor._error.origin == monitor._error.pos
    assert next(s for s in monitor.detector_states() if s.signal == "error").state == 0


def every_signal(
    seed: int, n: int = 12_000
) -> tuple[list[dict[str, float | str]], list[int], list[dict[str, float]], list[int]]:
    """A classification stream where every default signal has something to find after record
    6,000: a mean shift (x0), a variance change (x1), a correlation (x2, x3), a category's
    share (c), the predictions, their confidence, and the errors."""
    rng = np.random.default_rng(seed)
    after = np.arange(n) >= n // 2
    x = rng.normal(0, 1, (n, 4))
    x[after, 0] += 1.0
    x[after, 1] *= 3**0.5
    x[after, 3] = 0.9 * x[after, 2] + 0.19**0.5 * x[after, 3]
    share = np.where(after, 0.5, 0.2)
    cats = np.where(rng.random(n) < share, "a", rng.choice(["b", "c", "d"], n))
    p1 = np.clip(np.where(after, 0.6, 0.9) + rng.normal(0, 0.05, n), 0.5, 1.0)
    preds = (rng.random(n) < np.where(after, 0.6, 0.3)).astype(int).tolist()
    probas = [
        {"0": 1 - p, "1": p} if y == 1 else {"0": p, "1": 1 - p}
        for p, y in zip(p1.tolist(), preds, strict=True)
    ]
    labels = [
        y if rng.random() < (0.6 if a else 0.9) else 1 - y
        for y, a in zip(preds, after.tolist(), strict=True)
    ]
    rows: list[dict[str, float | str]] = [
        {"x0": a, "x1": b, "x2": c, "x3": d, "c": str(k)}
        for (a, b, c, d), k in zip(x.tolist(), cats.tolist(), strict=True)
    ]
    return rows, preds, probas, labels


SIGNALS_SCHEMA = Schema(
    features=(*(Feature(f"x{i}") for i in range(4)), Feature("c", "categorical"))
)


def play_all(
    monitor: Monitor,
    data: tuple[list[dict[str, float | str]], list[int], list[dict[str, float]], list[int]],
    start: int,
    stop: int,
    batch: int,
) -> list[tuple[object, ...]]:
    rows, preds, probas, labels = data
    out = []
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        events = monitor.update(lo, rows[lo:hi], preds[lo:hi], now=0.0, probas=probas[lo:hi])
        events += monitor.update_outcomes(list(range(lo, hi)), preds[lo:hi], labels[lo:hi], now=0.0)
        out += [(e.kind, e.alarm, e.signal, e.feature, e.index, e.change_point) for e in events]
    # The decisions, not the order two calls returned them in (outcomes follow each batch).
    return sorted(out, key=repr)


def test_every_signal_fires_on_its_change_and_decides_the_same_whatever_the_batch_size() -> None:
    data = every_signal(seed=5)
    events = play_all(Monitor(SIGNALS_SCHEMA, MonitorConfig()), data, 0, 12_000, 1000)
    fired = {(signal, feature) for kind, _, signal, feature, *_ in events if kind == "detection"}
    assert {
        ("feature", "x0"),
        ("feature", "x1"),
        ("category", "c"),
        ("prediction", None),
        ("error", None),
        ("estimated", None),
    } <= fired, fired
    assert fired & {("feature", "x2"), ("feature", "x3")}, fired  # the correlated pair
    for batch in (4, 250, 1000, 3000):  # 4: a pass of served predictions
        assert (
            play_all(Monitor(SIGNALS_SCHEMA, MonitorConfig()), data, 0, 12_000, batch) == events
        ), batch


@pytest.mark.parametrize("cut", [3000, 6500])
def test_every_signal_round_trips_through_a_checkpoint_mid_stream(cut: int) -> None:
    data = every_signal(seed=6)
    monitor = Monitor(SIGNALS_SCHEMA, MonitorConfig())
    play_all(monitor, data, 0, cut, 500)
    restored = Monitor.loads(monitor.dumps(), SIGNALS_SCHEMA, MonitorConfig())
    assert play_all(restored, data, cut, 12_000, 500) == play_all(monitor, data, cut, 12_000, 500)
    # Seeded repeatability: a second monitor over the same records decides the same.
    again = Monitor(SIGNALS_SCHEMA, MonitorConfig())
    assert play_all(again, data, 0, 12_000, 500) == play_all(
        Monitor(SIGNALS_SCHEMA, MonitorConfig()), data, 0, 12_000, 500
    )
