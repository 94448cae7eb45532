"""Freshness: how well does the served model track a drifting stream?

The real daemon, driven through its HTTP API at a fixed rate (predict, then the label, for every
record), against four baselines run in the same process on the same records:

  static    the bootstrap model, never retrained;
  periodic  retrained every 5,000 records on the last 5,000 (the cron-job approach);
  river-drr river's DriftRetrainingClassifier (Hoeffding tree, DDM);
  river-arf river's ARFClassifier (adaptive random forest).

Streams (60,000 records in equal segments; the first 5,000 train the first model and are not
scored): Agrawal functions 0->2->4, SEA variants 0->1->2->3, STAGGER 0->1->2. Prequential
accuracy over records 5,000..60,000, overall and for the 2,000 records after each drift.

Run by hand:  .venv/bin/python benchmarks/freshness.py [--rate 2000] [--streams agrawal,sea]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from driftd.streams import STREAMS, SyntheticStream

TOTAL = 60_000
BOOT = 5_000
AFTER = 2_000  # records after each drift scored apart: how fast does accuracy recover?

PLANS = {
    "agrawal": (0, 2, 4),
    "sea": (0, 1, 2, 3),
    "stagger": (0, 1, 2),
}


def stream(name: str, seed: int) -> tuple[list[dict[str, Any]], list[int], list[int]]:
    concepts = PLANS[name]
    s = SyntheticStream(name, concepts, TOTAL // len(concepts), seed)  # type: ignore[arg-type]
    pairs = s.take(TOTAL)
    return [x for x, _ in pairs], [y for _, y in pairs], s.drift_points(TOTAL)


def daemon_config(name: str, state: Path, boot: Path) -> str:
    feats = ", ".join(f'{{ name = "{f}", kind = "{k}" }}' for f, k in STREAMS[name].items())
    return f"""
[server]
port = 0
[state]
dir = "{state}"
[schema]
features = [{feats}]
[model]
estimator = "sklearn.ensemble.HistGradientBoostingClassifier"
params = {{ max_iter = 100, random_state = 0 }}
[bootstrap]
data = "{boot}"
rows = {BOOT}
[retrain]
cooldown_seconds = 2
min_new_labels = 100
min_rows_after_drift = 300
window_rows = 5000
[gate]
min_holdout = 50
[guard]
records = 0
[log]
format = "json"
level = "warning"
"""


def run_daemon(name: str, xs: list[dict[str, Any]], ys: list[int], rate: float) -> list[int]:
    """Prequential correctness (1/0) of the daemon's served predictions, records BOOT..TOTAL."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        boot = d / "boot.csv"
        with boot.open("w", newline="") as fh:
            w = csv.writer(fh)
            names = list(STREAMS[name])
            w.writerow([*names, "label"])
            for x, y in zip(xs[:BOOT], ys[:BOOT], strict=True):
                w.writerow([x[n] for n in names] + [y])
        cfg = d / "d.toml"
        cfg.write_text(daemon_config(name, d / "state", boot))
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftd", "run", "--config", str(cfg)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DRIFTD_LOG_LEVEL": "info"},
        )
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                url = f"http://127.0.0.1:{m.group(1)}"
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True).start()
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                while c.get("/readyz").status_code != 200:
                    time.sleep(0.1)
                correct = _drive(c, xs, ys, rate)
                found = c.get("/v1/events", params={"limit": 1000}).json()["events"]
                alarms = [e["record_index"] for e in found if e["kind"] == "drift_alarm"]
                runs = [
                    (e["record_index"], e["outcome"], e.get("rows"))
                    for e in found
                    if e["kind"] == "retrain_finished"
                ]
                deploys = [(e["id"], e.get("version")) for e in found if e["kind"] == "deploy"]
                print(
                    f"  daemon: alarms at {sorted(a for a in alarms if a)}; "
                    f"{len(runs)} retrains {sorted((o, r) for _, o, r in runs)}; "
                    f"{len(deploys)} deploys",
                    file=sys.stderr,
                )
                return correct
        finally:
            proc.terminate()
            proc.wait(30)


def _drive(c: httpx.Client, xs: list[dict[str, Any]], ys: list[int], rate: float) -> list[int]:
    batch = 100
    interval = batch / rate
    correct: list[int] = []
    next_at = time.monotonic()
    for i in range(BOOT, TOTAL, batch):
        part = range(i, min(i + batch, TOTAL))
        r = c.post("/v1/predict", json={"instances": [xs[k] for k in part]})
        r.raise_for_status()
        body = r.json()
        labels = [{"id": rid, "label": ys[k]} for rid, k in zip(body["ids"], part, strict=True)]
        c.post("/v1/labels", json=labels).raise_for_status()
        correct += [int(p == ys[k]) for p, k in zip(body["predictions"], part, strict=True)]
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return correct


def _matrix(name: str, xs: list[dict[str, Any]]) -> np.ndarray:
    kinds = STREAMS[name]
    cats = {f: sorted({x[f] for x in xs}) for f, k in kinds.items() if k == "categorical"}
    cols = []
    for f, k in kinds.items():
        if k == "numeric":
            cols.append(np.array([x[f] for x in xs], dtype=float)[:, None])
        else:
            idx = {v: i for i, v in enumerate(cats[f])}
            onehot = np.zeros((len(xs), len(cats[f])))
            onehot[np.arange(len(xs)), [idx[x[f]] for x in xs]] = 1
            cols.append(onehot)
    return np.hstack(cols)


def run_sklearn(name: str, xs: list[dict[str, Any]], ys: list[int], every: int | None) -> list[int]:
    """Static (every=None) or periodic retraining of the same estimator as the daemon."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = _matrix(name, xs), np.array(ys)

    def fit(lo: int, hi: int) -> Any:
        return HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(X[lo:hi], y[lo:hi])

    model = fit(0, BOOT)
    correct: list[int] = []
    for start in range(BOOT, TOTAL, every or TOTAL):
        stop = min(start + (every or TOTAL), TOTAL)
        correct += (model.predict(X[start:stop]) == y[start:stop]).astype(int).tolist()
        if every:
            model = fit(max(0, stop - every), stop)
    return correct


def run_river(xs: list[dict[str, Any]], ys: list[int], make: Callable[[], Any]) -> list[int]:
    model = make()
    for x, y in zip(xs[:BOOT], ys[:BOOT], strict=True):
        model.learn_one(x, y)
    correct = []
    for x, y in zip(xs[BOOT:], ys[BOOT:], strict=True):
        correct.append(int(model.predict_one(x) == y))
        model.learn_one(x, y)
    return correct


def river_models() -> dict[str, Callable[[], Any]]:
    from river import drift, forest, tree

    return {
        "river-drr": lambda: drift.DriftRetrainingClassifier(
            model=tree.HoeffdingTreeClassifier(), drift_detector=drift.binary.DDM()
        ),
        "river-arf": lambda: forest.ARFClassifier(seed=0),
    }


def report(correct: list[int], drifts: list[int]) -> tuple[float, float]:
    overall = sum(correct) / len(correct)
    after = [
        sum(correct[p - BOOT : p - BOOT + AFTER]) / AFTER
        for p in drifts
        if p - BOOT + AFTER <= len(correct)
    ]
    return overall, statistics.mean(after) if after else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--streams", default="agrawal,sea,stagger")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--windows", action="store_true", help="print accuracy per 2,500 records")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; {TOTAL:,} records per stream,", end=" ")
    print(f"first {BOOT:,} train the first model")
    print(f"{'stream':<9} {'approach':<10} {'accuracy':>9} {'after drift':>12} {'vs static':>10}")
    for name in args.streams.split(","):
        xs, ys, drifts = stream(name, args.seed)
        results: dict[str, list[int]] = {}
        t = time.perf_counter()
        results["driftd"] = run_daemon(name, xs, ys, args.rate)
        print(f"  ({name}: daemon took {time.perf_counter() - t:.1f} s)", file=sys.stderr)
        results["static"] = run_sklearn(name, xs, ys, None)
        results["periodic"] = run_sklearn(name, xs, ys, 5000)
        for label, make in river_models().items():
            results[label] = run_river(xs, ys, make)
        base, _ = report(results["static"], drifts)
        if args.windows:
            for label, correct in results.items():
                w = [sum(correct[k : k + 2500]) / 2500 for k in range(0, len(correct) - 2499, 2500)]
                print(f"  {label:<10} " + " ".join(f"{a:.2f}" for a in w), file=sys.stderr)
        for label, correct in results.items():
            overall, after = report(correct, drifts)
            print(f"{name:<9} {label:<10} {overall:>9.4f} {after:>12.4f} {overall / base:>10.3f}")


if __name__ == "__main__":
    main()
