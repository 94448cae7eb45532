"""driftd's KSWIN takes river.drift.KSWIN's decisions, on the same data and seed, much faster."""

from __future__ import annotations

import pickle
import random
import time

import numpy as np
import pytest
from river import drift

from driftd.monitor import kswin as fast


def river_run(values: list[float], **params: object) -> tuple[list[int], drift.KSWIN]:
    detector = drift.KSWIN(**params)
    out = []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            out.append(i)
    return out, detector


def fast_run(detector: fast.KSWIN, values: list[float], seed: int) -> list[int]:
    """Feed in random batch sizes, 1 to 900 records."""
    sizes = random.Random(seed)
    out: list[int] = []
    start = 0
    while start < len(values):
        size = sizes.randint(1, 900)
        out += [start + o for o in detector.update_many(values[start : start + size])]
        start += size
    return out


def data(seed: int, n: int = 4500) -> list[float]:
    rng = np.random.default_rng(seed)
    parts = [
        rng.normal(0.0, 1.0, n // 3),
        rng.normal(0.7, 1.0, n // 3),
        rng.integers(0, 4, n - 2 * (n // 3)).astype(float),  # ties
    ]
    return np.concatenate(parts).tolist()


PARAMS = [
    {},
    {"alpha": 0.05},
    {"alpha": 0.0001, "window_size": 300, "stat_size": 50},
    {"alpha": 0.1, "window_size": 50, "stat_size": 10},
    {"window_size": 400, "stat_size": 40},  # n = 360 > 256: the exact scalar sampler
]


@pytest.mark.parametrize(
    "seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in range(2, 10))]
)
@pytest.mark.parametrize(
    "params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults"
)
def test_same_decisions_as_river(seed: int, params: dict[str, object]) -> None:
    values = data(seed)
    expected, reference = river_run(values, seed=seed, **params)
    detector = fast.KSWIN(seed=seed, **params)  # type: ignore[arg-type]
    assert fast_run(detector, values, seed) == expected
    assert detector.n == reference.n
    assert detector.p_value == pytest.approx(reference.p_value, abs=1e-12)
    assert detector.drift_detected == reference.drift_detected
    assert len(expected) > 0


def test_same_decisions_past_the_shared_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detectors that outlive the shared row prefix continue the same random sequence."""
    monkeypatch.setattr(fast, "_PREFIX_ROWS", 300)
    monkeypatch.setattr(fast, "_SHARED", {})
    values = np.random.default_rng(11).normal(0.0, 1.0, 5000).tolist()
    expected, _ = river_run(values, seed=5, alpha=1e-6)
    first = fast.KSWIN(seed=5, alpha=1e-6)
    assert fast_run(first, values, 1) == expected
    second = fast.KSWIN(seed=5, alpha=1e-6)  # reads the now-decoded prefix
    assert fast_run(second, values, 2) == expected
    assert first._own is not None


@pytest.mark.parametrize("cut", [50, 2100, 4321])
def test_pickled_detector_continues_identically(cut: int) -> None:
    values = data(7)
    detector = fast.KSWIN(seed=7)
    head = detector.update_many(values[:cut])
    clone = pickle.loads(pickle.dumps(detector))  # noqa: S301 - bytes this test just wrote
    expected, _ = river_run(values, seed=7)
    tail = [cut + o for o in clone.update_many(values[cut:])]
    assert head + tail == expected


def test_single_updates_match_river() -> None:
    values = data(3, 1500)
    detector = fast.KSWIN(alpha=0.01, seed=3)
    got = []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            got.append(i)
    assert got == river_run(values, alpha=0.01, seed=3)[0]


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        fast.KSWIN(alpha=2.0)
    with pytest.raises(ValueError, match="stat_size"):
        fast.KSWIN(window_size=10, stat_size=10)


@pytest.mark.slow
def test_at_least_100_times_faster_than_river() -> None:
    values = np.random.default_rng(0).normal(0.0, 1.0, 200_000)
    fast.KSWIN(seed=1).update_many(values[:2000])  # scipy import, p-value tables
    detector = fast.KSWIN(seed=1)
    t = time.perf_counter()
    for start in range(0, len(values), 1000):
        detector.update_many(values[start : start + 1000])
    ours = len(values) / (time.perf_counter() - t)
    reference = drift.KSWIN(seed=1)
    sample = values[:3000].tolist()
    t = time.perf_counter()
    for x in sample:
        reference.update(x)
    theirs = len(sample) / (time.perf_counter() - t)
    assert ours / theirs >= 100
