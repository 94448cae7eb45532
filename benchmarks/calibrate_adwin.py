"""ADWIN's false detections per record on normal scores: the table the monitor's confidence
is read from (``driftd.monitor.scores.CALIBRATION``).

Each stationary stream of ``--length`` records is scored against its first 100 values, as the
monitor does, and fed at the monitor's scale to river's ADWIN, reset after each detection. The
rate is detections per record, with a 95% Poisson interval. The first table is the calibration
(a normal feature, by ``delta``); the second checks that the rate does not depend on the
feature's distribution, at a ``delta`` where detections are frequent enough to compare; the
third is the error stream's run length: raw 0/1 errors at four error rates, at its ``delta``.

Run by hand, one benchmark at a time:  .venv/bin/python benchmarks/calibrate_adwin.py
(about 15 minutes on 2 cores; ``--records 1e7 --most 0`` for a quick look). Each calibration
point runs ``--records`` records, and on until 20 detections or ``--most`` records.
"""

from __future__ import annotations

import argparse
import operator
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine
from river import drift

from driftd.monitor.scores import CALIBRATION, SCALE, NormalScores
from driftd.monitor.watch import CONFIDENCE

Draw = Callable[[np.random.Generator, int], np.ndarray]

DISTRIBUTIONS: dict[str, Draw] = {
    "normal": lambda rng, n: rng.normal(size=n),
    "Student t(3)": lambda rng, n: rng.standard_t(3, n),
    "log-normal": lambda rng, n: rng.lognormal(size=n),
    "uniform": lambda rng, n: rng.random(n),
    "count, Poisson(3)": lambda rng, n: rng.poisson(3, n).astype(float),
    "0/1 flag, 20% ones": lambda rng, n: (rng.random(n) < 0.2).astype(float),
}


def detections(values: list[float], delta: float) -> int:
    """How many times ADWIN fires over ``values``, reset after each firing."""
    count = start = 0
    while start < len(values):
        helper = drift.ADWIN(delta=delta)._helper
        try:
            start += operator.indexOf(map(helper.update, values[start:]), True) + 1
        except ValueError:
            break
        count += 1
    return count


def rate(
    draw: Draw,
    delta: float,
    records: float,
    length: int,
    *,
    scored: bool = True,
    first_seed: int = 10_000,
    enough: int = 0,
    most: float = 0,
) -> tuple[int, int]:
    """Detections and records over ``records`` records of streams of ``length``, and on
    until ``enough`` detections or ``most`` records; each stream is fed as the monitor feeds
    a numeric feature (normal scores), or raw (``scored`` False, as the error stream)."""
    found = total = 0
    seed = 0
    while total < records or (found < enough and total < most):
        x = draw(np.random.default_rng(first_seed + seed), length)
        if scored:
            scores = NormalScores(1).feed(x[:, None])
            assert scores is not None
            x = scores[:, 0]
        found += detections(x.tolist(), delta)
        total += length
        seed += 1
    return found, total


def errors(p: float) -> Draw:
    """A classifier's 0/1 errors, each 1 with probability ``p``."""
    return lambda rng, n: (rng.random(n) < p).astype(float)


def interval(k: int) -> tuple[float, float]:
    """A 95% interval of a Poisson mean from one count (Wilson-Hilferty)."""

    def quantile(df: float, z: float) -> float:
        return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3

    low = 0.0 if k == 0 else quantile(2 * k, -1.96) / 2
    return low, quantile(2 * k + 2, 1.96) / 2


def line(name: str, delta: float, found: int, total: int, seconds: float) -> str:
    low, high = interval(found)
    per = 1e8 / total
    return (
        f"| {name} | {delta:g} | {found} in {total:.1e} | {found * per:.2f}"
        f" ({low * per:.2f}-{high * per:.2f}) |  ({seconds:.0f} s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=float, default=3e8, help="records per calibration point")
    ap.add_argument(
        "--most", type=float, default=2e9, help="records per point, to reach 20 detections"
    )
    ap.add_argument("--check", type=float, default=1e8, help="records per distribution")
    ap.add_argument("--errors", type=float, default=2e8, help="labels per error rate")
    ap.add_argument("--length", type=int, default=1_000_000, help="records per stream")
    args = ap.parse_args()
    print(machine())
    print(f"scores at {SCALE:g}x, 100 reference values; streams of {args.length:,} records\n")
    header = "| stream | delta | detections | per 10⁸ records (95%) |\n|---|---|---|---|"
    print(header)
    for delta, recorded in CALIBRATION:
        t = time.perf_counter()
        found, total = rate(
            DISTRIBUTIONS["normal"], delta, args.records, args.length, enough=20, most=args.most
        )
        print(
            line("normal", delta, found, total, time.perf_counter() - t)
            + f" in the table: {recorded * 1e8:.2f}",
            flush=True,
        )
    print(f"\n{header}")
    delta = max(d for d, _ in CALIBRATION)
    for name, draw in DISTRIBUTIONS.items():
        t = time.perf_counter()
        found, total = rate(draw, delta, args.check, args.length)
        print(line(name, delta, found, total, time.perf_counter() - t), flush=True)
    delta = CONFIDENCE["adwin"][1]
    print(f"\nA classifier's 0/1 errors, raw, at the error stream's delta {delta:g}")
    print(header)
    for p in (0.02, 0.1, 0.3, 0.5):
        t = time.perf_counter()
        found, total = rate(
            errors(p), delta, args.errors, args.length, scored=False, first_seed=20_000
        )
        name = f"errors, rate {p:g}"
        print(line(name, delta, found, total, time.perf_counter() - t), flush=True)


if __name__ == "__main__":
    main()
