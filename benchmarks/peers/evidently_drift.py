"""The per-batch drift report a user would run instead of driftd: Evidently's DataDriftPreset.

Runs ONLY in benchmarks/peers/.venv (made by setup.sh); bench_peers.py starts it as a subprocess
and reads one JSON object from its stdout. The rows are the ones bench_monitor.py feeds the
Monitor (numpy default_rng(seed).normal, 20 columns): the first window is the reference, every
following window of --window rows is one report against it, as a cron job would run it.

Timed per window: building the DataFrame from the list of row dicts the daemon would hold
(``frame_seconds``) and ``Report.run`` (``report_seconds``). One untimed warm-up report first
(imports, numba/scipy caches).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import pandas as pd


def make_rows(n: int, n_features: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(n_features)]
    return [dict(zip(names, row, strict=True)) for row in rng.normal(size=(n, n_features)).tolist()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import evidently
    from evidently import Report
    from evidently.presets import DataDriftPreset

    rows = make_rows(args.records, args.features, args.seed)
    reference = pd.DataFrame(rows[: args.window])
    windows = [rows[i : i + args.window] for i in range(args.window, len(rows), args.window)]
    Report([DataDriftPreset()]).run(pd.DataFrame(windows[0]), reference)  # warm-up
    runs = []
    for _ in range(args.runs):
        frame = report = 0.0
        for part in windows:
            t = time.perf_counter()
            current = pd.DataFrame(part)
            t1 = time.perf_counter()
            Report([DataDriftPreset()]).run(current, reference)
            t2 = time.perf_counter()
            frame += t1 - t
            report += t2 - t1
        n = sum(len(p) for p in windows)
        runs.append({"records": n, "frame_seconds": frame, "report_seconds": report})
    json.dump(
        {
            "peer": "evidently",
            "version": evidently.__version__,
            "pandas": pd.__version__,
            "preset": "DataDriftPreset()",
            "window": args.window,
            "reports": len(windows),
            "runs": runs,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
