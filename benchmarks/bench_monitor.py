"""Throughput of the Monitor against a bare loop over the same river ADWIN detectors.

Both sides see the same 100,000 records of 20 standard-normal features, in batches of 1,000
(list of dicts, as the daemon hands them over), with the same ADWIN parameters (the
monitor's delta for 20 features). The bare loop is the simplest correct code:
for each record, for each feature, ``detector.update(value)`` and a ``drift_detected`` check.
Also printed: driftd's KSWIN against river's KSWIN on one stationary stream, with default
parameters and in the worst case for driftd (alpha so small it never fires, fresh seed).

Run by hand:  .venv/bin/python benchmarks/bench_monitor.py [--runs 5] [--records 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bare_adwin_loop
from river import drift

from driftd.ingest.schema import Feature, Schema
from driftd.monitor import KSWIN, Monitor, MonitorConfig

N_FEATURES = 20
BATCH = 1000


def make_rows(n: int, seed: int) -> list[dict[str, float | str]]:
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(N_FEATURES)]
    return [dict(zip(names, row, strict=True)) for row in rng.normal(size=(n, N_FEATURES)).tolist()]


def run_monitor(rows: list[dict[str, float | str]]) -> tuple[float, int]:
    schema = Schema(features=tuple(Feature(f"x{i}") for i in range(N_FEATURES)))
    monitor = Monitor(schema, MonitorConfig())
    found = 0
    t = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        found += len(monitor.update(start, rows[start : start + BATCH], None, now=0.0))
    return len(rows) / (time.perf_counter() - t), found


def run_bare(rows: list[dict[str, float | str]]) -> tuple[float, int]:
    return bare_adwin_loop(rows, N_FEATURES, BATCH)


def kswin_speedup(seed: int = 1, alpha: float = 0.005) -> tuple[float, float]:
    """Records/s of driftd's and river's KSWIN on one stationary stream."""
    values = np.random.default_rng(0).normal(size=200_000)
    KSWIN(seed=10**6, alpha=alpha).update_many(values[:2000])  # scipy import, p-value tables
    ours = KSWIN(seed=seed, alpha=alpha)
    t = time.perf_counter()
    for start in range(0, len(values), BATCH):
        ours.update_many(values[start : start + BATCH])
    fast = len(values) / (time.perf_counter() - t)
    theirs = drift.KSWIN(seed=seed, alpha=alpha)
    sample = values[:4000].tolist()
    t = time.perf_counter()
    for x in sample:
        theirs.update(x)
    return fast, len(sample) / (time.perf_counter() - t)


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    rows = make_rows(args.records, seed=0)
    monitor_rates, bare_rates, ratios = [], [], []
    print(f"{args.records:,} records x {N_FEATURES} numeric features, ADWIN, batches of {BATCH}")
    for run in range(args.runs):
        bare, bare_found = run_bare(rows)
        mon, mon_found = run_monitor(rows)
        monitor_rates.append(mon)
        bare_rates.append(bare)
        ratios.append(mon / bare)
        print(
            f"run {run}: monitor {mon:,.0f} records/s ({mon_found} events), "
            f"bare loop {bare:,.0f} records/s ({bare_found} detections), ratio {mon / bare:.2f}"
        )
    print(f"monitor   records/s: {summary(monitor_rates)}")
    print(f"bare loop records/s: {summary(bare_rates)}")
    print(
        f"ratio monitor / bare: median {statistics.median(ratios):.2f}"
        f" (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    speeds = [kswin_speedup() for _ in range(3)]
    ours = [s[0] for s in speeds]
    theirs = [s[1] for s in speeds]
    print(f"KSWIN driftd records/s: {summary(ours)}")
    print(f"KSWIN river  records/s: {summary(theirs)}")
    print(f"KSWIN speed-up: median {statistics.median(o / t for o, t in speeds):.0f}x")
    # Worst case: a detector that never fires, on a seed no detector decoded before, so every
    # subsample row is decoded from the random stream (no reuse of the shared prefix).
    worst = [kswin_speedup(seed=1000 + run, alpha=1e-12) for run in range(3)]
    print(
        "KSWIN speed-up, never firing, fresh seed: median "
        f"{statistics.median(o / t for o, t in worst):.0f}x"
        f" ({summary([o for o, _ in worst])} records/s)"
    )


if __name__ == "__main__":
    main()
