"""Detection on the DEFAULT monitor config: a scenario matrix, beside river's bare detectors.

Every scenario streams seeded records through driftd's ``Monitor`` built with
``MonitorConfig()`` (what a new user gets) on a schema of 20 features, and, on the same
stream, through the river detector a user would reach for instead (default parameters, on the
one stream that changed). Per scenario, over ``--seeds`` seeds (default 20):

* alarm delay: records from the change to driftd's first *alarm* (what reaches the retrain
  trigger); "no alarm" counts seeds without one before the stream ends;
* detection delay: to driftd's first detection of that signal (an alarm may need more);
* change-point error: |estimated change point - true change| of that first alarm;
* river: records from the change to the bare detector's first detection after it.

Stationary streams give false alarms per 1,000,000 records (x 20 features): normal, heavy-
tailed (Student t with 3 degrees of freedom), skewed (log-normal) and correlated numeric
features, categorical, both mixed, and a Bernoulli(0.1) error stream. The targets are printed beside
each figure; a miss says by how much.

Run by hand, one benchmark at a time:  .venv/bin/python benchmarks/detection.py
(``--seeds 5 --stationary 200000`` for a quick look).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine
from river import drift

from driftd.ingest.columns import Rows
from driftd.ingest.schema import Feature, Schema
from driftd.monitor import Monitor, MonitorConfig, MonitorEvent

N_FEATURES = 20
CHANGE = 10_000
BATCH = 1_000
CATEGORIES = ("a", "b", "c", "d", "e")


@dataclass
class Stream:
    """One scenario's records: numeric block, categorical columns, or an error stream."""

    numeric: np.ndarray | None = None  # (n, k)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    errors: np.ndarray | None = None  # 0/1 per labelled prediction
    watched: list[float] | None = None  # what the bare river detector is fed


@dataclass(frozen=True)
class Scenario:
    name: str
    make: Callable[[int], Stream]
    length: int
    river: tuple[Callable[[], Any], ...]
    signal: str  # the signal that should detect it: feature, category, error
    target: int | None = None  # alarm delay target, records
    cp_target: int | None = None  # change-point error target, records
    change: int = CHANGE


def schema(numeric: int, categorical: int = 0) -> Schema:
    feats = [Feature(f"x{i}") for i in range(numeric)]
    feats += [Feature(f"c{i}", "categorical") for i in range(categorical)]
    return Schema(features=tuple(feats))


def gaussian(n: int, rng: np.random.Generator, k: int = N_FEATURES) -> np.ndarray:
    return rng.normal(0.0, 1.0, (n, k))


def mean_shift(shift: float) -> Callable[[int], Stream]:
    def make(seed: int) -> Stream:
        x = gaussian(2 * CHANGE, np.random.default_rng(seed))
        x[CHANGE:, 0] += shift
        return Stream(numeric=x, watched=x[:, 0].tolist())

    return make


def variance(ratio: float) -> Callable[[int], Stream]:
    def make(seed: int) -> Stream:
        x = gaussian(4 * CHANGE, np.random.default_rng(seed))
        x[CHANGE:, 0] *= ratio**0.5
        return Stream(numeric=x, watched=x[:, 0].tolist())

    return make


def ramp(shift: float, over: int) -> Callable[[int], Stream]:
    def make(seed: int) -> Stream:
        n = CHANGE + over + 2 * CHANGE
        x = gaussian(n, np.random.default_rng(seed))
        x[CHANGE : CHANGE + over, 0] += np.linspace(0, shift, over, endpoint=False)
        x[CHANGE + over :, 0] += shift
        return Stream(numeric=x, watched=x[:, 0].tolist())

    return make


def correlation(rho: float) -> Callable[[int], Stream]:
    def make(seed: int) -> Stream:
        rng = np.random.default_rng(seed)
        x = gaussian(4 * CHANGE, rng)
        # x1 becomes rho * x0 + sqrt(1 - rho^2) * noise: both marginals stay standard normal
        x[CHANGE:, 1] = rho * x[CHANGE:, 0] + (1 - rho**2) ** 0.5 * x[CHANGE:, 1]
        return Stream(numeric=x, watched=(x[:, 0] * x[:, 1]).tolist())

    return make


def category_share(before: float, after: float) -> Callable[[int], Stream]:
    """19 numeric features and one categorical whose first category goes before -> after (the
    others share the rest evenly)."""

    def make(seed: int) -> Stream:
        rng = np.random.default_rng(seed)
        n = 3 * CHANGE
        rest = len(CATEGORIES) - 1

        def draw(m: int, p: float) -> np.ndarray:
            probs = [p] + [(1 - p) / rest] * rest
            return rng.choice(len(CATEGORIES), size=m, p=probs)

        codes = np.concatenate([draw(CHANGE, before), draw(n - CHANGE, after)])
        values = [CATEGORIES[c] for c in codes]
        return Stream(
            numeric=gaussian(n, rng, N_FEATURES - 1),
            categorical={"c0": values},
            watched=(codes == 0).astype(float).tolist(),
        )

    return make


def several(k: int, shift: float) -> Callable[[int], Stream]:
    """``k`` of the 20 features shift by ``shift`` sd at once."""

    def make(seed: int) -> Stream:
        x = gaussian(2 * CHANGE, np.random.default_rng(seed))
        x[CHANGE:, :k] += shift
        return Stream(numeric=x, watched=x[:, 0].tolist())

    return make


def heavy_tailed_shift(shift: float) -> Callable[[int], Stream]:
    """20 Student t(3) features; one moves by ``shift`` scale units."""

    def make(seed: int) -> Stream:
        x = np.random.default_rng(seed).standard_t(3, (2 * CHANGE, N_FEATURES))
        x[CHANGE:, 0] += shift
        return Stream(numeric=x, watched=x[:, 0].tolist())

    return make


def discrete(kind: str) -> Callable[[int], Stream]:
    """One discrete-valued feature among 19 normal ones: a count (Poisson 3 -> 4) or a 0/1
    flag (20% -> 30% ones, whose MAD is 0)."""

    def make(seed: int) -> Stream:
        rng = np.random.default_rng(seed)
        x = gaussian(3 * CHANGE, rng)
        n_after = 2 * CHANGE
        if kind == "count":
            x[:, 0] = np.concatenate([rng.poisson(3, CHANGE), rng.poisson(4, n_after)])
        else:
            x[:, 0] = np.concatenate([rng.random(CHANGE) < 0.2, rng.random(n_after) < 0.3])
        return Stream(numeric=x, watched=x[:, 0].tolist())

    return make


def error_rate(before: float, after: float) -> Callable[[int], Stream]:
    def make(seed: int) -> Stream:
        rng = np.random.default_rng(seed)
        n = 4 * CHANGE
        p = np.where(np.arange(n) < CHANGE, before, after)
        bits = (rng.random(n) < p).astype(float)
        return Stream(errors=bits, watched=bits.tolist())

    return make


SCENARIOS = [
    Scenario(
        "one of 20 features +1 sd", mean_shift(1.0), 2 * CHANGE, (drift.ADWIN,), "feature", 60, 100
    ),
    Scenario(
        "one of 20 features +0.5 sd", mean_shift(0.5), 2 * CHANGE, (drift.ADWIN,), "feature", 200
    ),
    Scenario(
        "one of 20 features variance 1 -> 3",
        variance(3.0),
        4 * CHANGE,
        (drift.ADWIN,),
        "feature",
        600,
        500,
    ),
    Scenario(
        "one category 20% -> 40%",
        category_share(0.2, 0.4),
        3 * CHANGE,
        (drift.ADWIN,),
        "category",
        250,
    ),
    Scenario(
        "x0, x1 correlation 0 -> 0.9", correlation(0.9), 4 * CHANGE, (drift.ADWIN,), "feature", 1000
    ),
    Scenario(
        "+1 sd over 20,000 records", ramp(1.0, 20_000), 5 * CHANGE, (drift.ADWIN,), "feature", 3000
    ),
    Scenario("5 of 20 features +0.5 sd", several(5, 0.5), 2 * CHANGE, (drift.ADWIN,), "feature"),
    Scenario(
        "one of 20 t(3) features +1", heavy_tailed_shift(1.0), 2 * CHANGE, (drift.ADWIN,), "feature"
    ),
    Scenario("a count, Poisson 3 -> 4", discrete("count"), 3 * CHANGE, (drift.ADWIN,), "feature"),
    Scenario(
        "a 0/1 flag, 20% -> 30% ones", discrete("flag"), 3 * CHANGE, (drift.ADWIN,), "feature"
    ),
    Scenario(
        "label-only: error rate 0.1 -> 0.2",
        error_rate(0.1, 0.2),
        4 * CHANGE,
        (drift.binary.HDDMA, drift.ADWIN),
        "error",
        400,
        300,
    ),
    Scenario(
        "label-only: error rate 0.1 -> 0.3",
        error_rate(0.1, 0.3),
        4 * CHANGE,
        (drift.binary.HDDMA, drift.ADWIN),
        "error",
        150,
        300,
    ),
]


def monitor_for(stream: Stream, config: MonitorConfig) -> Monitor:
    if stream.errors is not None:
        return Monitor(schema(N_FEATURES), config)
    k = stream.numeric.shape[1] if stream.numeric is not None else 0
    return Monitor(schema(k, len(stream.categorical)), config)


def play(stream: Stream, config: MonitorConfig) -> list[MonitorEvent]:
    """Every event the monitor raises over the stream, fed in batches as the daemon does."""
    monitor = monitor_for(stream, config)
    events: list[MonitorEvent] = []
    if stream.errors is not None:
        bits = stream.errors
        for start in range(0, len(bits), BATCH):
            part = bits[start : start + BATCH]
            idx = list(range(start, start + len(part)))
            preds = [0] * len(part)
            labels = [int(b) for b in part]  # a wrong prediction is an error of 1
            events += monitor.update_outcomes(idx, preds, labels, now=float(start))
        return events
    assert stream.numeric is not None
    names = [f"x{i}" for i in range(stream.numeric.shape[1])]
    n = len(stream.numeric)
    for start in range(0, n, BATCH):
        block = stream.numeric[start : start + BATCH]
        if stream.categorical:
            rows: Any = [
                {name: col[i] for name, col in stream.categorical.items()}
                for i in range(start, start + len(block))
            ]
        else:
            rows = Rows(block, names)
        events += monitor.update(start, rows, None, now=float(start), numeric=block)
    return events


def river_delay(make: Callable[[], Any], values: list[float], change: int) -> int | None:
    detector = make()
    for i, v in enumerate(values):
        detector.update(v)
        if detector.drift_detected and i >= change:
            return i - change
    return None


@dataclass
class Result:
    alarm: list[int | None] = field(default_factory=list)
    detection: list[int | None] = field(default_factory=list)
    cp_error: list[int] = field(default_factory=list)
    river: dict[str, list[int | None]] = field(default_factory=dict)


def run_scenario(sc: Scenario, seeds: range, config: MonitorConfig) -> Result:
    out = Result()
    for seed in seeds:
        stream = sc.make(seed)
        events = play(stream, config)
        after = [e for e in events if e.index >= sc.change]
        alarm = next((e for e in after if e.kind == "alarm"), None)
        det = next((e for e in after if e.kind == "detection" and e.signal == sc.signal), None)
        out.alarm.append(None if alarm is None else alarm.index - sc.change)
        out.detection.append(None if det is None else det.index - sc.change)
        if alarm is not None:
            out.cp_error.append(abs(alarm.change_point - sc.change))
        assert stream.watched is not None
        for make in sc.river:
            name = make.__name__
            out.river.setdefault(name, []).append(river_delay(make, stream.watched, sc.change))
    return out


def median(values: list[int | None]) -> str:
    found = [v for v in values if v is not None]
    if not found:
        return "-"
    missed = len(values) - len(found)
    text = f"{statistics.median(found):,.0f}"
    return text + (f" ({missed} missed)" if missed else "")


def verdict(value: list[int | None] | list[int], target: int | None) -> str:
    found = [v for v in value if v is not None]
    if target is None:
        return ""
    if not value:
        return f"MISS (no alarm; target <= {target:,})"
    if len(found) < len(value):
        return (
            f"MISS (target <= {target:,}; {len(value) - len(found)} of {len(value)} seeds without)"
        )
    got = statistics.median(found)
    if got <= target:
        return f"ok (<= {target:,})"
    return f"MISS by {got - target:,.0f} (target <= {target:,})"


def stationary(config: MonitorConfig, seeds: range, length: int) -> dict[str, float]:
    """Alarms (and detections) per 1,000,000 records on streams that never change."""
    kinds: dict[str, Callable[[int], Stream]] = {
        "20 numeric": lambda s: Stream(numeric=gaussian(length, np.random.default_rng(s))),
        "20 numeric, Student t(3)": lambda s: Stream(
            numeric=np.random.default_rng(s).standard_t(3, (length, N_FEATURES))
        ),
        "20 numeric, log-normal": lambda s: Stream(
            numeric=np.random.default_rng(s).lognormal(0.0, 1.0, (length, N_FEATURES))
        ),
        "20 numeric, pairwise correlation 0.5": lambda s: Stream(numeric=_correlated(length, s)),
        "20 categorical": lambda s: _categorical(length, s, N_FEATURES),
        "10 numeric + 10 categorical": lambda s: _mixed(length, s),
        "Bernoulli(0.1) errors": lambda s: Stream(
            errors=(np.random.default_rng(s).random(length) < 0.1).astype(float)
        ),
    }
    out: dict[str, float] = {}
    for name, make in kinds.items():
        alarms = detections = 0
        for seed in seeds:
            events = play(make(1000 + seed), config)
            alarms += sum(e.kind == "alarm" for e in events)
            detections += sum(e.kind == "detection" for e in events)
        total = len(seeds) * length
        out[f"{name}: alarms / 1M"] = alarms / total * 1e6
        out[f"{name}: detections / 1M"] = detections / total * 1e6
    return out


def _correlated(n: int, seed: int) -> np.ndarray:
    """Standard normal features, every pair correlated 0.5 (one shared factor)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 1))
    return np.sqrt(0.5) * shared + np.sqrt(0.5) * gaussian(n, rng)


def _categorical(n: int, seed: int, k: int) -> Stream:
    rng = np.random.default_rng(seed)
    cols = {f"c{i}": [CATEGORIES[c] for c in rng.integers(0, len(CATEGORIES), n)] for i in range(k)}
    return Stream(numeric=np.empty((n, 0)), categorical=cols)


def _mixed(n: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    cols = {
        f"c{i}": [CATEGORIES[c] for c in rng.integers(0, len(CATEGORIES), n)] for i in range(10)
    }
    return Stream(numeric=gaussian(n, rng, 10), categorical=cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--stationary", type=int, default=1_000_000, help="records per stationary seed")
    ap.add_argument("--stationary-seeds", type=int, default=1)
    ap.add_argument("--only", default="", help="scenario names containing this text")
    args = ap.parse_args()
    config = MonitorConfig()
    print(machine())
    print(f"config: MonitorConfig() defaults: {dataclasses.asdict(config)}")
    print(f"{args.seeds} seeds; change at record {CHANGE:,}; batches of {BATCH:,}\n")
    print(
        "| scenario | driftd alarm delay | target | driftd detection delay | change-point error"
        " | river bare detector |\n|---|---|---|---|---|---|"
    )
    seeds = range(args.seeds)
    for sc in SCENARIOS:
        if args.only and args.only not in sc.name:
            continue
        t = time.perf_counter()
        r = run_scenario(sc, seeds, config)
        cp = median(list(r.cp_error)) if r.cp_error else "-"
        cp_note = f" {verdict(r.cp_error, sc.cp_target)}" if sc.cp_target else ""
        bare = ", ".join(f"{name} {median(v)}" for name, v in r.river.items())
        print(
            f"| {sc.name} | {median(r.alarm)} | {verdict(r.alarm, sc.target)} |"
            f" {median(r.detection)} | {cp}{cp_note} | {bare} |"
            f"  ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    if args.stationary:
        print(f"\nStationary: {args.stationary_seeds} x {args.stationary:,} records each")
        t = time.perf_counter()
        for name, value in stationary(
            config, range(args.stationary_seeds), args.stationary
        ).items():
            print(f"  {name:45} {value:8.1f}")
        print(f"  ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
