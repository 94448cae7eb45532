"""The full crash matrix: kill -9 a daemon under traffic at many seeded random instants.

The harness and its checks are the ones in ``tests/test_crash.py`` (read its module docstring);
this script runs them for more kills and prints the report: kills survived / run, the instants
hit (requests in flight, training child running, publish temp directory or alias temp file left,
checkpoint temp file left, retrain job running, version published before the alias moved),
acknowledged records and labels, retrains, deploys and rollbacks.

Run by hand (about 9 s a kill here: 100 kills took 893 s on 2 busy cores):
  .venv/bin/python benchmarks/crash_matrix.py --kills 100 [--seed N] [--json out.json]
or through pytest:  DRIFTD_CRASH_KILLS=100 .venv/bin/pytest tests/test_crash.py -k kill_9
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package

from tests.test_crash import SEED, CrashMatrix


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--json", type=Path, default=None, help="write the per-kill results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = CrashMatrix(
            Path(tmp), seed=args.seed, log=lambda s: print(s, file=sys.stderr, flush=True)
        ).run(args.kills)
    print(report.text())
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "survived": report.survived,
                    "run": len(report.kills),
                    "tags": report.tag_counts(),
                    "kills": [
                        {
                            "round": k.round,
                            "mode": k.mode,
                            "delay": round(k.delay, 4),
                            "restart_seconds": round(k.restart_seconds, 2),
                            "tags": sorted(k.tags),
                            "problems": k.problems,
                        }
                        for k in report.kills
                    ],
                },
                indent=1,
            )
        )
    ok = report.survived == len(report.kills) and not report.failed_requests
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
