"""The benchmark suite: every figure, sequentially, each against a baseline of the same run.

    .venv/bin/python benchmarks/run.py            # full: 5 runs a figure, ~50 min on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # smoke: 3 runs, smaller sizes, ~8 min
    .venv/bin/python benchmarks/run.py --only 1,2 # some figures

Figures (docs/benchmarks.md explains each and holds the latest table):
  1 monitor vs bare river loop vs Evidently (bench_peers)   4 reaction time (bench_reaction)
  2 HTTP ingest + profile (bench_http)                      5 freshness matrix, default config
  3 predict latency idle / training / swaps (bench_latency) 6 scaling curves + PNGs (bench_scaling)
  8 scale-out: PostgreSQL beside SQLite, JetStream beside HTTP, N models of a leader and a
    standby each (bench_cluster; 3 runs, ~20 min; needs PostgreSQL and nats-server, else it
    is left out with the reason)

The parts run one after the other: run in parallel they would measure each other. The
Evidently figure needs `sh benchmarks/peers/setup.sh` once (its own venv); without it that
figure is left out with the reason. Results: printed, and written to
benchmarks/results/latest.json and latest.txt (gitignored).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cluster
import bench_http
import bench_latency
import bench_peers
import bench_reaction
import bench_scaling
import freshness
from _common import ROOT, machine

RESULTS = ROOT / "benchmarks" / "results"


def figures(quick: bool) -> dict[str, tuple[str, Callable[[], Any], Callable[[Any], None]]]:
    runs = 3 if quick else 5
    return {
        "1": (
            "monitor throughput",
            lambda: bench_peers.run(runs, 30_000 if quick else 100_000),
            bench_peers.show,
        ),
        "2": (
            "HTTP ingest",
            lambda: bench_http.run(
                runs, batches=20 if quick else 100, seconds=2.0 if quick else 5.0, with_profile=True
            ),
            bench_http.show,
        ),
        "3": (
            "predict latency",
            lambda: bench_latency.run(runs, 3.0 if quick else 6.0),
            bench_latency.show,
        ),
        "4": ("reaction time", lambda: bench_reaction.run(runs), bench_reaction.show),
        "5": (
            "freshness",
            lambda: freshness.run_matrix(
                freshness.STREAMS[:2] if quick else freshness.STREAMS, [0, 1000], [1], [2000.0]
            ),
            freshness.show,
        ),
        "6": ("scaling", lambda: bench_scaling.run(runs, quick), bench_scaling.show),
        # Three runs even in the full suite: one run starts 36 daemons and takes ~7 min.
        "8": ("scale-out", lambda: bench_cluster.run(3, quick), bench_cluster.show),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs and smaller sizes (smoke run)")
    ap.add_argument("--only", default="1,2,3,4,5,6,8", help="comma-separated figure numbers")
    ap.add_argument(
        "--output", help="write results/NAME.json and .txt instead of latest (a partial run)"
    )
    args = ap.parse_args()
    info = machine()
    header = (
        f"machine: {info['cores']} cores, {info['cpu']}, {info['memory_gb']} GB;"
        f" Python {info['python']}, SQLite {info['sqlite']};"
        f" {', '.join(f'{k} {v}' for k, v in info['libraries'].items())}\n"
        f"command: .venv/bin/python benchmarks/run.py{' --quick' if args.quick else ''};"
        f" every figure: median (min-max) of {3 if args.quick else 5} runs unless stated"
    )
    print(header, flush=True)
    results: dict[str, Any] = {"machine": info, "quick": args.quick, "figures": {}}
    text = [header]
    table = figures(args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for key in args.only.split(","):
        name, measure, show = table[key.strip()]
        print(f"\n== figure {key}: {name} ==", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            res = measure()
        except Exception as exc:  # noqa: BLE001 - one failing figure must not lose the others
            res = {"error": f"{type(exc).__name__}: {exc}"}
        took = time.perf_counter() - t
        out = io.StringIO()
        if "error" in res and len(res) == 1:
            out.write(f"Figure {key} ({name}): failed: {res['error']}\n")
        else:
            with contextlib.redirect_stdout(out):
                show(res)
        out.write(f"  (figure {key} took {took:.0f} s)\n")
        print("\n" + out.getvalue(), end="", flush=True)
        text.append(out.getvalue())
        results["figures"][key] = {"name": name, "seconds": took, "result": res}
        if args.output:
            (RESULTS / f"{args.output}.json").write_text(json.dumps(results, indent=1, default=str))
            (RESULTS / f"{args.output}.txt").write_text("\n".join(text))
            continue
        (RESULTS / "latest.json").write_text(json.dumps(results, indent=1, default=str))
        (RESULTS / "latest.txt").write_text("\n".join(text))


if __name__ == "__main__":
    main()
