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

With --replay the daemon's code runs through driftd.offline.replay (the library API) instead of a
daemon over HTTP: the same config, records 5,000..60,000 played on a simulated clock at --rate
records per simulated second, batches of 100, labels delivered before the next batch, training
taking no simulated time. Deterministic per --seed; the gap to the HTTP figure is what training
latency and wall-clock scheduling cost.

Run by hand:  .venv/bin/python benchmarks/freshness.py [--rate 2000] [--streams agrawal,sea]
              .venv/bin/python benchmarks/freshness.py --replay [--seeds 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from driftd.ingest.streams import STREAMS, SyntheticStream

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, write_csv

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


def write_boot(name: str, xs: list[dict[str, Any]], ys: list[int], path: Path) -> Path:
    """The first BOOT records as the CSV the daemon's bootstrap trains on."""
    names = list(STREAMS[name])
    rows = ([x[n] for n in names] + [y] for x, y in zip(xs[:BOOT], ys[:BOOT], strict=True))
    return write_csv(path, [*names, "label"], rows)


def run_daemon(name: str, xs: list[dict[str, Any]], ys: list[int], rate: float) -> list[int]:
    """Prequential correctness (1/0) of the daemon's served predictions, records BOOT..TOTAL."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        boot = write_boot(name, xs, ys, d / "boot.csv")
        cfg = d / "d.toml"
        cfg.write_text(daemon_config(name, d / "state", boot))
        with Daemon(cfg) as daemon, httpx.Client(base_url=daemon.url, timeout=60) as c:
            correct = _drive(c, xs, ys, rate)
            found = c.get("/v1/events", params={"limit": 1000}).json()["events"]
        alarms = [e["record_index"] for e in found if e["kind"] == "drift_alarm"]
        runs = [(e["outcome"], e.get("rows")) for e in found if e["kind"] == "retrain_finished"]
        deploys = [e for e in found if e["kind"] == "deploy"]
        print(
            f"  daemon: alarms at {sorted(a for a in alarms if a)}; "
            f"{len(runs)} retrains {sorted(runs)}; {len(deploys)} deploys",
            file=sys.stderr,
        )
        return correct


def run_replay(
    name: str, xs: list[dict[str, Any]], ys: list[int], rate: float, seed: int
) -> list[int]:
    """Prequential correctness of driftd's code on a simulated clock, records BOOT..TOTAL.

    Per-record outcomes are not part of replay's result document; its sampled rolling score
    is. With one sample per batch (``samples`` = records / batch) and the monitor's live window
    a divisor of AFTER, the windows at batch ends give the exact accuracy after each drift;
    the overall accuracy is the document's own ``score.overall``. So this returns a list whose
    mean and post-drift windows equal the replay's (see ``report``), built from those sums.
    """
    from driftd.config import load_text
    from driftd.offline.replay import ReplayOptions, replay

    batch = 100
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        names = list(STREAMS[name])
        boot = d / "boot.csv"
        hist = d / "history.csv"
        for path, lo, hi in ((boot, 0, BOOT), (hist, BOOT, TOTAL)):
            with path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow([*names, "label"])
                for x, y in zip(xs[lo:hi], ys[lo:hi], strict=True):
                    w.writerow([x[n] for n in names] + [y])
        cfg = load_text(daemon_config(name, d / "state", boot), env={})
        window = cfg.monitor.live_window
        if AFTER % window or window % batch:
            raise ValueError(f"monitor.live_window {window} must divide {AFTER}")
        doc = replay(
            hist,
            cfg,
            ReplayOptions(
                seed=seed,
                label_lag=0.0,
                rate=rate,
                batch=batch,
                samples=(TOTAL - BOOT) // batch,
                progress=False,
                drift_points=(),
            ),
        )
    series = doc["series"]
    at = dict(zip(series["index"], series["prequential"], strict=True))
    overall = doc["score"]["overall"]
    print(
        f"  replay: {len(doc['alarms'])} alarms at {[a['index'] + BOOT for a in doc['alarms']]};"
        f" {len(doc['retrains'])} retrains, {len(doc['deploys'])} deploys;"
        f" {doc['wall_clock']['seconds']:.1f} s wall",
        file=sys.stderr,
    )
    # Rebuild a 0/1 list with the replay's totals: exact window sums at the drift windows,
    # the rest spread so the overall mean is the document's.
    n = TOTAL - BOOT
    correct = [0] * n
    fixed: dict[int, int] = {}
    for p in stream_drifts[name]:
        lo = p - BOOT
        if lo + AFTER > n:
            continue
        for k in range(AFTER // window):
            end = lo + (k + 1) * window - 1
            hits = round(at[end] * window)
            for j in range(window):
                fixed[lo + k * window + j] = int(j < hits)
    rest = [i for i in range(n) if i not in fixed]
    need = round(overall * n) - sum(fixed.values())
    for i, v in fixed.items():
        correct[i] = v
    for j, i in enumerate(rest):
        correct[i] = int(j < need)
    return correct


stream_drifts: dict[str, list[int]] = {}


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


_BASELINES: dict[tuple[str, int], dict[str, list[int]]] = {}
APPROACHES = ("driftd", "static", "periodic", "river-drr", "river-arf")


CACHE = Path(__file__).resolve().parent / "results" / "freshness-baselines"


def baselines(name: str, seed: int) -> dict[str, list[int]]:
    """The four baselines' per-record outcomes on one stream and seed. They are deterministic,
    so they are computed once (for both modes, and for later runs: kept under results/, keyed
    by stream, seed and stream length); ``--baselines-only --jobs N`` fills that ahead."""
    if (name, seed) in _BASELINES:
        return _BASELINES[(name, seed)]
    path = CACHE / f"{name}-{seed}-{TOTAL}-{BOOT}.json"
    if path.exists():
        runs: dict[str, list[int]] = json.loads(path.read_text())
    else:
        xs, ys, _ = stream(name, seed)
        runs = {
            "static": run_sklearn(name, xs, ys, None),
            "periodic": run_sklearn(name, xs, ys, 5000),
        }
        for label, make in river_models().items():
            runs[label] = run_river(xs, ys, make)
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(runs))
    _BASELINES[(name, seed)] = runs
    return runs


def _baselines_job(args: tuple[str, int]) -> str:
    t = time.perf_counter()
    baselines(*args)
    return f"{args[0]} seed {args[1]}: {time.perf_counter() - t:.0f} s"


def run_all(
    streams: list[str], seeds: list[int], *, replay_mode: bool, rate: float = 2000.0
) -> dict[str, Any]:
    """Every approach on every stream and seed: {stream: {approach: {overall, after}: [...]}}.

    Baselines are deterministic per seed, so they are computed once per seed and reused.
    """
    out: dict[str, Any] = {"mode": "replay" if replay_mode else "http", "seeds": seeds}
    for name in streams:
        per: dict[str, dict[str, list[float]]] = {
            a: {"overall": [], "after": [], "vs_static": []} for a in APPROACHES
        }
        for seed in seeds:
            xs, ys, drifts = stream(name, seed)
            stream_drifts[name] = drifts
            results: dict[str, list[int]] = {}
            t = time.perf_counter()
            if replay_mode:
                results["driftd"] = run_replay(name, xs, ys, rate, seed)
            else:
                results["driftd"] = run_daemon(name, xs, ys, rate)
            print(
                f"  ({name} seed {seed}: driftd took {time.perf_counter() - t:.1f} s)",
                file=sys.stderr,
            )
            results.update(baselines(name, seed))
            base, _ = report(results["static"], drifts)
            for label, correct in results.items():
                overall, after = report(correct, drifts)
                per[label]["overall"].append(overall)
                per[label]["after"].append(after)
                per[label]["vs_static"].append(overall / base)
        out[name] = per
    return out


def show_table(res: dict[str, Any]) -> None:
    print(
        f"Figure 5: freshness ({res['mode']}; seeds {res['seeds']}); prequential accuracy on"
        f" records {BOOT:,}..{TOTAL:,}, median (min-max) over seeds"
    )
    print(f"{'stream':<9} {'approach':<10} {'accuracy':>22} {'after drift':>22} {'vs static':>20}")
    for name, per in res.items():
        if name in ("mode", "seeds"):
            continue
        for label, v in per.items():
            print(
                f"{name:<9} {label:<10} {_fmt(v['overall']):>22} {_fmt(v['after']):>22}"
                f" {_fmt(v['vs_static']):>20}"
            )


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.median(values):.4f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--streams", default="agrawal,sea,stagger")
    ap.add_argument("--seeds", default="1", help="comma-separated; one run per seed")
    ap.add_argument(
        "--replay", action="store_true", help="driftd through driftd.offline.replay, not HTTP"
    )
    ap.add_argument(
        "--baselines-only", action="store_true", help="compute (and keep) the baselines only"
    )
    ap.add_argument("--jobs", type=int, default=1, help="processes for --baselines-only")
    args = ap.parse_args()
    if args.baselines_only:
        todo = [(n, int(s)) for n in args.streams.split(",") for s in args.seeds.split(",")]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for line in pool.imap_unordered(_baselines_job, todo):
                print(line, flush=True)
        return
    print(f"machine: {os.cpu_count()} cores; {TOTAL:,} records per stream,", end=" ")
    print(f"first {BOOT:,} train the first model")
    seeds = [int(s) for s in args.seeds.split(",")]
    res = run_all(args.streams.split(","), seeds, replay_mode=args.replay, rate=args.rate)
    show_table(res)


if __name__ == "__main__":
    main()
