"""Detection delay and false alarms of every detector driftd offers, on seeded streams.

For each detector, seeds 0-9:
  * delay: records from the change to the first detection at or after it (median over
    seeds; "missed" counts seeds with no detection within the post-change part);
  * false alarms per million records on a stationary stream (10 x 100,000 records).
Numeric detectors: a 0.5 sd mean shift, a 1 -> 3 sd variance shift (standard normal stream).
Error-stream detectors: a 0/1 error rate jumping 0.1 -> 0.3.
Detectors run with driftd's defaults (MonitorConfig, one feature: no Bonferroni factor).

Run by hand:  .venv/bin/python benchmarks/bench_detectors.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import streams

from driftd.monitor.categories import CategoryWatch
from driftd.monitor.watch import Watch

SEEDS = range(10)
N, CHANGE = 20_000, 10_000
STATIONARY = 100_000


def _params(kind: str, seed: int) -> dict[str, object]:
    return {"seed": seed} if kind == "kswin" else {}


def delay(kind: str, values: list[float], seed: int) -> int | None:
    for hit in Watch(kind, _params(kind, seed)).feed(values):
        if hit.level == 2 and hit.at >= CHANGE:
            return hit.at - CHANGE
    return None


def false_alarms(kind: str, make: object) -> float:
    count = 0
    for seed in SEEDS:
        values = make(seed)  # type: ignore[operator]
        hits = Watch(kind, _params(kind, seed)).feed(values)
        count += sum(1 for h in hits if h.level == 2)
    return count / (len(SEEDS) * STATIONARY) * 1e6


def row(kind: str, delays: list[int | None], fa: float, seconds: float) -> str:
    found = [d for d in delays if d is not None]
    med = f"{statistics.median(found):.0f}" if found else "-"
    missed = len(delays) - len(found)
    return f"| {kind} | {med} | {missed} | {fa:.0f} | {seconds:.1f} |"


def categorical() -> None:
    """Indicator ADWINs (top 10 + other) on a 4-category stream whose shares shift."""
    print(
        "\nCategory frequencies a/b/c/d 0.5/0.3/0.15/0.05 -> 0.3/0.3/0.15/0.25, CategoryWatch"
        " (top 10 + other, reference 1000)\n| stream | median delay | missed |"
        " false alarms / 1M | records/s |\n|---|---|---|---|---|"
    )
    delays: list[int | None] = []
    for seed in SEEDS:
        hits = CategoryWatch(10, 1000).feed(streams.categories(N, CHANGE, seed))
        after = [h.at - CHANGE for h in hits if h.at >= CHANGE]
        delays.append(after[0] if after else None)
    fired = 0
    seconds = 0.0
    for seed in SEEDS:
        values = streams.categories(STATIONARY, STATIONARY, 100 + seed)
        t = time.perf_counter()
        fired += len(CategoryWatch(10, 1000).feed(values))
        seconds += time.perf_counter() - t
    found = [d for d in delays if d is not None]
    med = f"{statistics.median(found):.0f}" if found else "-"
    rate = len(SEEDS) * STATIONARY / seconds
    fa = fired / (len(SEEDS) * STATIONARY) * 1e6
    print(f"| categorical | {med} | {len(delays) - len(found)} | {fa:.0f} | {rate:,.0f} |")


def main() -> None:
    header = (
        "| detector | median delay | missed | false alarms / 1M | seconds |\n|---|---|---|---|---|"
    )
    for title, make in (
        ("mean shift 0.5 sd", lambda s: streams.mean_shift(N, CHANGE, s, 0.5).tolist()),
        ("variance 1 -> 3 sd", lambda s: streams.variance_shift(N, CHANGE, s, 3.0).tolist()),
    ):
        print(f"\nNumeric detectors, {title} at record {CHANGE}\n{header}")
        for kind in ("adwin", "kswin", "page_hinkley"):
            t = time.perf_counter()
            delays = [delay(kind, make(s), s) for s in SEEDS]
            fa = false_alarms(
                kind, lambda s: streams.mean_shift(STATIONARY, STATIONARY, 100 + s).tolist()
            )
            print(row(kind, delays, fa, time.perf_counter() - t))
    for after in (0.3, 0.2):
        print(f"\nError-stream detectors, error rate 0.1 -> {after} at record {CHANGE}\n{header}")
        for kind in ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin", "page_hinkley"):
            flip = kind == "fhddm"  # FHDDM watches correctness (a fall of its mean)

            def bits(
                seed: int, n: int, change: int, flip: bool = flip, after: float = after
            ) -> list[float]:
                pred, lab = streams.error_bits(n, change, seed, 0.1, after)
                pairs = zip(pred, lab, strict=True)
                return [float((p == y) if flip else (p != y)) for p, y in pairs]

            t = time.perf_counter()
            delays = [delay(kind, bits(s, N, CHANGE), s) for s in SEEDS]
            fa = false_alarms(kind, lambda s: bits(100 + s, STATIONARY, STATIONARY))
            print(row(kind, delays, fa, time.perf_counter() - t))


if __name__ == "__main__":
    main()
    categorical()
