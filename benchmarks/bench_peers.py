"""Figure 1: monitor throughput against the machine's limit and against a per-batch peer.

Same rows for everyone: ``--records`` records of 20 standard-normal features (numpy
``default_rng(0)``), as the list of dicts the daemon hands the monitor, in batches of 1,000.

  bare loop  the practical limit: a Python loop over the same river ADWIN detectors (the
             monitor's Bonferroni-corrected delta), ``update`` and a ``drift_detected`` check;
  monitor    driftd's ``Monitor.update`` (ADWIN, default MonitorConfig);
  evidently  the report a user would run instead: Evidently's ``DataDriftPreset`` on windows of
             10,000 rows against the first window as reference (DataFrame build + Report.run),
             in its own environment (benchmarks/peers/.venv, see benchmarks/peers/setup.sh).

Every rate is printed as a ratio to the bare loop measured in the same run.

Run by hand:  .venv/bin/python benchmarks/bench_peers.py [--runs 5] [--records 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PEERS_PYTHON, ROOT, bare_adwin_loop, fmt, stats

BATCH = 1000


def make_rows(n: int, n_features: int, seed: int = 0) -> list[dict[str, float | str]]:
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(n_features)]
    return [dict(zip(names, row, strict=True)) for row in rng.normal(size=(n, n_features)).tolist()]


def monitor_rate(rows: list[dict[str, float | str]], n_features: int) -> float:
    """Records/s of driftd's Monitor over ``rows`` (ADWIN, default config)."""
    from driftd.ingest.schema import Feature, Schema
    from driftd.monitor import Monitor, MonitorConfig

    schema = Schema(features=tuple(Feature(f"x{i}") for i in range(n_features)))
    monitor = Monitor(schema, MonitorConfig())
    t = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        monitor.update(start, rows[start : start + BATCH], None, now=0.0)
    return len(rows) / (time.perf_counter() - t)


def bare_rate(rows: list[dict[str, float | str]], n_features: int) -> float:
    """Records/s of the simplest correct loop over the same river detectors."""
    return bare_adwin_loop(rows, n_features, BATCH)[0]


def evidently(records: int, runs: int, window: int = 10_000) -> dict[str, Any]:
    """Run the peer in its own interpreter; {'error': ...} when it is not set up or fails."""
    if not PEERS_PYTHON.exists():
        return {"error": f"{PEERS_PYTHON} missing: run sh benchmarks/peers/setup.sh"}
    script = ROOT / "benchmarks" / "peers" / "evidently_drift.py"
    cmd = [str(PEERS_PYTHON), str(script), "--records", str(records), "--window", str(window)]
    try:
        out = subprocess.run(
            [*cmd, "--runs", str(runs)], capture_output=True, text=True, check=True, timeout=3600
        )
    except subprocess.CalledProcessError as exc:
        return {"error": f"evidently failed: {exc.stderr.strip().splitlines()[-1:]}"}
    except subprocess.TimeoutExpired:
        return {"error": "evidently timed out"}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run(runs: int = 5, records: int = 100_000, peer: bool = True) -> dict[str, Any]:
    rows = make_rows(records, 20)
    bare_rate(rows[:5000], 20)  # imports, warm caches
    bare, mon = [], []
    for i in range(runs):
        bare.append(bare_rate(rows, 20))
        mon.append(monitor_rate(rows, 20))
        print(
            f"  run {i + 1}: bare {bare[-1]:,.0f} rec/s, monitor {mon[-1]:,.0f} rec/s",
            file=sys.stderr,
        )
    out: dict[str, Any] = {
        "records": records,
        "features": 20,
        "bare": stats(bare),
        "monitor": stats(mon),
        "monitor_vs_bare": stats([m / b for m, b in zip(mon, bare, strict=True)]),
    }
    if peer:
        # 3 reports of 10,000 a run: one takes seconds, and the per-record rate is the figure.
        ev = evidently(min(max(records, 30_000), 40_000), runs)
        out["evidently"] = ev
        if "runs" in ev:
            rates = [r["records"] / (r["frame_seconds"] + r["report_seconds"]) for r in ev["runs"]]
            report_only = [r["records"] / r["report_seconds"] for r in ev["runs"]]
            out["evidently_rate"] = stats(rates)
            out["evidently_report_only_rate"] = stats(report_only)
            out["evidently_vs_bare"] = stats([e / b for e, b in zip(rates, bare, strict=False)])
            out["monitor_vs_evidently"] = stats([m / e for m, e in zip(mon, rates, strict=False)])
    return out


def show(res: dict[str, Any]) -> None:
    print(f"Figure 1: monitor throughput, {res['records']:,} records x 20 numeric, ADWIN")
    print(f"  bare river loop      {fmt(res['bare'])} records/s  (baseline 1.00)")
    print(f"  driftd Monitor       {fmt(res['monitor'])} records/s")
    print(f"    ratio to bare      {fmt(res['monitor_vs_bare'], 2)}")
    ev = res.get("evidently")
    if ev is None:
        return
    if "error" in ev:
        print(f"  evidently            left out: {ev['error']}")
        return
    print(
        f"  evidently {ev['version']} DataDriftPreset, windows of {ev['window']:,}:"
        f" {fmt(res['evidently_rate'])} records/s"
        f" (Report.run alone {fmt(res['evidently_report_only_rate'])})"
    )
    print(f"    ratio to bare      {fmt(res['evidently_vs_bare'], 3)}")
    print(f"    monitor / evidently {fmt(res['monitor_vs_evidently'], 1)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--no-peer", action="store_true", help="skip the Evidently subprocess")
    args = ap.parse_args()
    show(run(args.runs, args.records, peer=not args.no_peer))


if __name__ == "__main__":
    main()
