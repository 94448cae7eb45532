"""Freshness: how well does the served model track a drifting stream, on the DEFAULT config?

A scenario matrix: 8 streams (abrupt, recurring, inverted, gradual, incremental, moving
centroids, label noise, class imbalance) x label delays x seeds, and the rate at which records
arrive. driftd runs with the configuration a new user writes: the schema, a bootstrap file of
the first 5,000 records, nothing else. Beside it, in the same run, on the same records, with
the same label delay:

  static     the bootstrap model, never retrained;
  periodic   retrained every 5,000 records on the last 5,000 labelled rows (the cron job);
  river-drr  river's DriftRetrainingClassifier (Hoeffding tree, DDM);
  river-arf  river's ARFClassifier (adaptive random forest), learning every label;
  oracle     knows the true change points: refits every 500 records on the labelled rows
             since the last one (at most 5,000), the bound a detector-driven policy aims at.

The score is prequential accuracy over records 5,000..60,000 (each prediction made before its
label is seen). driftd runs through ``driftd.offline.replay`` (the daemon's own parts on a
simulated clock, training taking no simulated time), so within one cell the rate only moves the
label delay in seconds: the policy counts records and labels, not seconds, and the figure is
the same at every rate (checked: it is printed per rate). What a rate costs in training wall
time is the HTTP mode (``--http``): the real daemon, records and labels over HTTP at the rate,
beside the replay of the same cell, with each retrain's wall time while it served.

Run by hand (one benchmark at a time on a 2-core machine):
  .venv/bin/python benchmarks/freshness.py [--streams all] [--delays 0,1000] [--seeds 1]
  .venv/bin/python benchmarks/freshness.py --http --streams agrawal --rate 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, machine

TOTAL = 60_000
BOOT = 5_000
PERIOD = 5_000

Row = tuple[dict[str, Any], Any]


# -- the streams -------------------------------------------------------------------------------
def _named(it: Iterator[tuple[dict[Any, Any], Any]]) -> Iterator[Row]:
    for x, y in it:
        yield {f"x{k}" if isinstance(k, int) else str(k): v for k, v in x.items()}, y


def _segments(make: Callable[[int, int], Any], plan: list[int], seed: int) -> list[Row]:
    """Concepts of ``plan`` in equal segments, each its own seeded generator."""
    seg = TOTAL // len(plan)
    out: list[Row] = []
    for k, concept in enumerate(plan):
        out += list(_named(iter(make(concept, seed * 100 + k).take(seg))))
    return out


def _drifts(plan: list[int]) -> list[int]:
    seg = TOTAL // len(plan)
    return [seg * k for k in range(1, len(plan)) if plan[k] != plan[k - 1]]


def stream(name: str, seed: int) -> tuple[list[Row], list[int]]:
    """The stream's TOTAL records and its true change points (empty: incremental drift)."""
    from river.datasets import synth

    from driftd.ingest.streams import SyntheticStream

    if name == "agrawal":  # abrupt, three functions
        s = SyntheticStream("agrawal", (0, 2, 4), TOTAL // 3, seed)
        return s.take(TOTAL), s.drift_points(TOTAL)
    if name == "stagger":  # recurring: each concept comes back
        s = SyntheticStream("stagger", (0, 1, 2, 0, 1, 2), TOTAL // 6, seed)
        return s.take(TOTAL), s.drift_points(TOTAL)
    if name == "sea-noise":  # abrupt, 10% of labels flipped
        plan = [0, 1, 2, 3]
        rows = _segments(lambda c, s: synth.SEA(variant=c, noise=0.1, seed=s), plan, seed)
        return rows, _drifts(plan)
    if name == "sine-inverted":  # the concept and its inverse, alternating
        plan = [0, 1, 0, 1]
        rows = _segments(lambda c, s: synth.Sine(classification_function=c, seed=s), plan, seed)
        return rows, _drifts(plan)
    if name == "agrawal-gradual":  # function 0 -> 2 over 10,000 records
        gen = synth.ConceptDriftStream(
            synth.Agrawal(0, seed=seed),
            synth.Agrawal(2, seed=seed + 1),
            position=30_000,
            width=10_000,
            seed=seed,
        )
        return list(_named(iter(gen.take(TOTAL)))), [25_000]
    if name == "hyperplane":  # incremental: the boundary rotates all along
        gen = synth.Hyperplane(seed=seed, n_features=10, n_drift_features=5, mag_change=0.001)
        return list(_named(iter(gen.take(TOTAL)))), []
    if name == "rbf-moving":  # incremental: centroids move
        gen = synth.RandomRBFDrift(
            seed_model=seed,
            seed_sample=seed,
            n_centroids=50,
            change_speed=0.0005,
            n_drift_centroids=25,
        )
        return list(_named(iter(gen.take(TOTAL)))), []
    if name == "sea-imbalanced":  # about 1 positive in 8, concept 0 -> 2 -> 1
        rng = random.Random(seed)
        plan = [0, 2, 1]
        rows = []
        for k, concept in enumerate(plan):
            gen = iter(synth.SEA(variant=concept, seed=seed * 100 + k))
            want = TOTAL // len(plan)
            while want:
                x, y = next(gen)
                if y and rng.random() > 0.08:
                    continue
                rows.append(({f"x{i}": v for i, v in x.items()}, int(y)))
                want -= 1
        return rows, _drifts(plan)
    raise ValueError(f"unknown stream {name!r}")


STREAMS = (
    "agrawal",
    "stagger",
    "sea-noise",
    "sine-inverted",
    "agrawal-gradual",
    "hyperplane",
    "rbf-moving",
    "sea-imbalanced",
)


def kinds(rows: list[Row]) -> dict[str, str]:
    return {k: "categorical" if isinstance(v, str) else "numeric" for k, v in rows[0][0].items()}


# -- driftd on its default config --------------------------------------------------------------
def default_config(features: dict[str, str], state: Path, boot: Path) -> str:
    """What a new user writes: the schema and the first model's data. Nothing tuned."""
    feats = ", ".join(f'{{ name = "{f}", kind = "{k}" }}' for f, k in features.items())
    return f"""
[state]
dir = "{state}"
[schema]
features = [{feats}]
[bootstrap]
data = "{boot}"
rows = {BOOT}
[log]
level = "error"
"""


def write(path: Path, rows: list[Row], names: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "label"])
        for x, y in rows:
            w.writerow([x[n] for n in names] + [y])
    return path


def run_driftd(rows: list[Row], delay: int, rate: float, seed: int) -> dict[str, Any]:
    from driftd.config import load_text
    from driftd.offline.replay import ReplayOptions, replay

    features = kinds(rows)
    names = list(features)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        boot = write(d / "boot.csv", rows[:BOOT], names)
        hist = write(d / "history.csv", rows[BOOT:], names)
        cfg = load_text(default_config(features, d / "state", boot), env={})
        t = time.perf_counter()
        doc = replay(
            hist,
            cfg,
            ReplayOptions(
                seed=seed,
                label_lag=delay / rate,
                rate=rate,
                batch=100,
                progress=False,
                drift_points=(),
            ),
        )
    chosen: dict[str, int] = {}
    for r in doc["retrains"]:
        if r.get("outcome") == "deployed" and r.get("chosen"):
            name = r["chosen"]["name"]
            name = "recent" if name.startswith("recent_") else name
            chosen[name] = chosen.get(name, 0) + 1
    return {
        "accuracy": doc["score"]["overall"],
        "timeline": {
            "alarms": [a["index"] for a in doc["alarms"]],
            "served": [(d["index"], d.get("version")) for d in doc["deploys"]],
            "jobs": [
                (
                    r.get("index", -1),
                    r.get("reason") or "+".join(r.get("reasons", ())),
                    r.get("outcome"),
                    None,
                )
                for r in doc["retrains"]
            ],
        },
        "alarms": len(doc["alarms"]),
        "retrains": len(doc["retrains"]),
        "deploys": len(doc["deploys"]),
        "chosen": chosen,
        "seconds": time.perf_counter() - t,
    }


def run_http(rows: list[Row], rate: float, delay: int) -> dict[str, Any]:
    """The real daemon over HTTP at ``rate`` records/s: predict a batch of 100, and send the
    labels ``delay`` records later. Besides the accuracy: the rate the client reached, and
    each retrain's wall time (from the audit log) while it served."""
    import httpx

    features = kinds(rows)
    names = list(features)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        boot = write(d / "boot.csv", rows[:BOOT], names)
        cfg = d / "d.toml"
        cfg.write_text(default_config(features, d / "state", boot) + "[server]\nport = 0\n")
        with Daemon(cfg) as daemon, httpx.Client(base_url=daemon.url, timeout=60) as c:
            hits, interval, start = 0, 100 / rate, time.monotonic()
            waiting: deque[dict[str, Any]] = deque()
            next_at = start
            served: list[tuple[int, int]] = []  # (position, version) where a version began
            clock: list[float] = []  # when each batch of 100 was answered, for the events
            for i in range(BOOT, TOTAL, 100):
                part = rows[i : i + 100]
                body = c.post("/v1/predict", json={"instances": [x for x, _ in part]}).json()
                if not served or served[-1][1] != body["model_version"]:
                    served.append((i - BOOT, body["model_version"]))
                clock.append(time.time())
                waiting.extend(
                    {"id": k, "label": _sent(y)}
                    for k, (_, y) in zip(body["ids"], part, strict=True)
                )
                if len(waiting) > delay:
                    due = [waiting.popleft() for _ in range(len(waiting) - delay)]
                    c.post("/v1/labels", json=due).raise_for_status()
                hits += sum(
                    p == _sent(y) for p, (_, y) in zip(body["predictions"], part, strict=True)
                )
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            reached = (TOTAL - BOOT) / (time.monotonic() - start)
            done = c.get("/v1/events", params={"kind": "retrain_finished", "limit": 1000}).json()
            alarms = c.get("/v1/events", params={"kind": "drift_alarm", "limit": 1000}).json()
            asked = [
                e
                for kind in ("retrain_requested", "retrain_deferred")
                for e in c.get("/v1/events", params={"kind": kind, "limit": 1000}).json()["events"]
            ]

    def position(ts: float) -> int:  # the stream's position when the daemon wrote an event
        import bisect

        return 100 * bisect.bisect_left(clock, ts)

    fits = [e["seconds"] for e in done["events"] if e.get("seconds") is not None]
    # Each job that fitted a pool: where in the stream it ended, its whole fit, and its members'.
    pools = [
        (
            position(e["time"]),
            e.get("fit_seconds"),
            [(m["name"], m.get("rows"), m.get("seconds")) for m in e["pool"]],
        )
        for e in done["events"]
        if e.get("pool")
    ]
    # Where a drift retrain that deployed spent its wall time (the audit log's ``stages``).
    drift = [
        e["stages"]
        for e in done["events"]
        if "drift" in e.get("reasons", ()) and e.get("outcome") == "deployed" and "stages" in e
    ]
    names = ("snapshot", "fit", "judge", "deploy")
    return {
        "accuracy": hits / (TOTAL - BOOT),
        "timeline": {  # positions in the stream after the bootstrap, as replay's
            "alarms": sorted(int(e["index"]) - 1 for e in alarms["events"]),
            "served": served[1:],
            "jobs": sorted(
                [
                    (
                        position(e["time"]),
                        "+".join(e.get("reasons", ())),
                        e.get("outcome"),
                        e.get("seconds"),
                    )
                    for e in done["events"]
                    if "bootstrap" not in e.get("reasons", ())
                ]
                + [(position(e["time"]), e.get("reason", ""), e["kind"], None) for e in asked]
            ),
        },
        "rate_reached": reached,
        "pools": sorted(pools, key=lambda p: p[0]),
        "retrains": len(fits),
        "fit_seconds_median": statistics.median(fits) if fits else None,
        "fit_seconds_max": max(fits) if fits else None,
        "drift_deploy_stages_median": {
            k: statistics.median(d.get(k, 0.0) for d in drift) for k in names
        }
        if drift
        else None,
    }


def _sent(label: Any) -> Any:
    """A label as the bootstrap file wrote it (csv writes a bool as ``True``/``False``, and the
    API takes an integer or a string for a class, not a JSON boolean)."""
    return str(label) if isinstance(label, bool) else label


# -- the peers ---------------------------------------------------------------------------------
def _matrix(rows: list[Row]) -> np.ndarray:
    features = kinds(rows)
    cols = []
    for f, k in features.items():
        if k == "numeric":
            cols.append(np.array([x[f] for x, _ in rows], dtype=float)[:, None])
        else:
            values = sorted({x[f] for x, _ in rows})
            idx = {v: i for i, v in enumerate(values)}
            onehot = np.zeros((len(rows), len(values)))
            onehot[np.arange(len(rows)), [idx[x[f]] for x, _ in rows]] = 1
            cols.append(onehot)
    return np.hstack(cols)


def _hgb() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, random_state=0)


def run_refits(rows: list[Row], delay: int, every: int | None, drifts: list[int] | None) -> float:
    """Static (``every`` None), periodic, or the oracle (``drifts``: refit on the labelled rows
    since the last true change point). A refit at record t sees the labels of records < t -
    delay (the oracle sees every label at once)."""
    X, y = _matrix(rows), np.array([label for _, label in rows])
    model = _hgb().fit(X[:BOOT], y[:BOOT])
    hits = 0
    step = every or TOTAL
    for start in range(BOOT, TOTAL, step):
        stop = min(start + step, TOTAL)
        hits += int((model.predict(X[start:stop]) == y[start:stop]).sum())
        if every is None:
            continue
        if drifts is None:
            hi = max(0, stop - delay)
            lo = max(0, hi - PERIOD)
        else:
            hi = stop
            lo = max([0, *(p for p in drifts if p <= stop), hi - PERIOD])
            if hi - lo < 200:  # too few rows of the new concept yet: keep the last model
                continue
        if hi - lo >= 50 and len(set(y[lo:hi].tolist())) > 1:
            model = _hgb().fit(X[lo:hi], y[lo:hi])
    return hits / (TOTAL - BOOT)


def run_river(rows: list[Row], delay: int, make: Callable[[], Any]) -> float:
    model = make()
    for x, y in rows[:BOOT]:
        model.learn_one(x, y)
    waiting: deque[Row] = deque()
    hits = 0
    for x, y in rows[BOOT:]:
        hits += int(model.predict_one(x) == y)
        waiting.append((x, y))
        while len(waiting) > delay:
            model.learn_one(*waiting.popleft())
    return hits / (TOTAL - BOOT)


def river_peers() -> dict[str, Callable[[], Any]]:
    from river import drift, forest, tree

    return {
        "river-drr": lambda: drift.DriftRetrainingClassifier(
            model=tree.HoeffdingTreeClassifier(), drift_detector=drift.binary.DDM()
        ),
        "river-arf": lambda: forest.ARFClassifier(seed=0),
    }


PEERS = ("static", "periodic", "river-drr", "river-arf", "oracle")
CACHE = Path(__file__).resolve().parent / "results" / "freshness-peers"


def peers(name: str, rows: list[Row], drifts: list[int], delay: int, seed: int) -> dict[str, float]:
    """The peers' accuracies in one cell (deterministic: kept under results/ once computed)."""
    path = CACHE / f"{name}-{seed}-{delay}-{TOTAL}.json"
    if path.exists():
        cached: dict[str, float] = json.loads(path.read_text())
        return cached
    out = {
        "static": run_refits(rows, delay, None, None),
        "periodic": run_refits(rows, delay, PERIOD, None),
        "oracle": run_refits(rows, 0, 500, drifts),
    }
    for label, make in river_peers().items():
        out[label] = run_river(rows, delay, make)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


# -- the matrix --------------------------------------------------------------------------------
def run_matrix(
    streams: tuple[str, ...],
    delays: list[int],
    seeds: list[int],
    rates: list[float],
    *,
    http: bool = False,
) -> dict[str, Any]:
    """Every cell: driftd's default config beside the peers, printed as it completes."""
    m = machine()
    print(f"machine: {m['cores']} cores, {m['cpu']}; load {os.getloadavg()[0]:.1f}")
    head = f"{'stream':<16}{'delay':>6}{'rate':>6}{'seed':>5}  {'driftd':>7}"
    print(head + "".join(f"{p:>10}" for p in PEERS) + f"{'vs best':>9}  chosen", flush=True)
    cells = []
    for name in streams:
        for seed in seeds:
            rows, drifts = stream(name, seed)
            for delay in delays:
                base = peers(name, rows, drifts, delay, seed)
                for rate in rates:
                    ours: dict[str, Any] = run_driftd(rows, delay, rate, seed)
                    if http:  # the same cell over HTTP, beside its replay
                        live = run_http(rows, rate, delay)
                        live["replay"] = ours["accuracy"]
                        live["replay_timeline"] = ours["timeline"]
                        ours = {**live, "chosen": ours.get("chosen")}
                    cell = {
                        "stream": name,
                        "delay": delay,
                        "rate": rate,
                        "seed": seed,
                        "driftd": ours,
                        "peers": base,
                        "best_peer": max(v for k, v in base.items() if k != "oracle"),
                        "floor": max(base["static"], base["periodic"]),
                    }
                    cells.append(cell)
                    print(_row(cell), flush=True)
    return {"machine": m, "mode": "http" if http else "replay", "cells": cells}


def _row(cell: dict[str, Any]) -> str:
    ours, base = cell["driftd"], cell["peers"]
    return (
        f"{cell['stream']:<16}{cell['delay']:>6}{cell['rate']:>6.0f}{cell['seed']:>5}"
        f"  {ours['accuracy']:>7.4f}"
        + "".join(f"{base[p]:>10.4f}" for p in PEERS)
        + f"{ours['accuracy'] - cell['best_peer']:>+9.4f}  {ours.get('chosen') or ''}"
    )


def show(res: dict[str, Any]) -> None:
    """The matrix and its verdict against the targets."""
    cells = res["cells"]
    print(
        f"Figure 5: freshness ({res['mode']}), DEFAULT config; {TOTAL:,} records a stream, the"
        f" first {BOOT:,} train the first model; prequential accuracy on the rest"
    )
    head = f"{'stream':<16}{'delay':>6}{'rate':>6}{'seed':>5}  {'driftd':>7}"
    print(head + "".join(f"{p:>10}" for p in PEERS) + f"{'vs best':>9}  chosen")
    for cell in cells:
        print(_row(cell))
    if not cells:
        return
    acc = [c["driftd"]["accuracy"] for c in cells]
    n = len(cells)
    floors = sum(a >= c["floor"] for a, c in zip(acc, cells, strict=True))
    wins = sum(a >= c["best_peer"] for a, c in zip(acc, cells, strict=True))
    close = sum(a >= c["best_peer"] - 0.01 for a, c in zip(acc, cells, strict=True))
    gaps = [a - c["best_peer"] for a, c in zip(acc, cells, strict=True)]
    print(f">= max(static, periodic): {floors}/{n} cells (target: all)")
    print(f">= the best peer (oracle aside): {wins}/{n} ({wins / n:.0%}; target 80%);")
    print(f"within 1 point of it: {close}/{n} (target: the rest)")
    print(f"driftd - best peer: median {statistics.median(gaps):+.4f}, worst {min(gaps):+.4f}")
    if res["mode"] == "http":
        print("\nOver HTTP beside the replay of the same cell (target: within 1 point):")
        print(
            f"{'stream':<16}{'rate':>6}{'reached':>9}{'http':>8}{'replay':>8}{'diff':>8}"
            f"{'fits':>6}{'fit s p50':>10}{'fit s max':>10}"
        )
        for c in cells:
            o = c["driftd"]
            diff = o["accuracy"] - o["replay"]
            fit50, fitmax = o["fit_seconds_median"], o["fit_seconds_max"]
            print(
                f"{c['stream']:<16}{c['rate']:>6.0f}{o['rate_reached']:>9.0f}"
                f"{o['accuracy']:>8.4f}{o['replay']:>8.4f}{diff:>+8.4f}{o['retrains']:>6}"
                f"{'-' if fit50 is None else f'{fit50:.2f}':>10}"
                f"{'-' if fitmax is None else f'{fitmax:.2f}':>10}"
                + ("" if diff >= -0.01 else "  MISS")
            )
        print(
            "\nAlarms, and where each new version began to serve (positions after the bootstrap):"
        )
        for c in cells:
            for mode, key in (("http", "timeline"), ("replay", "replay_timeline")):
                t = c["driftd"].get(key)
                if t:
                    served = ", ".join(f"v{v}@{i:,}" for i, v in t["served"])
                    alarms = ", ".join(f"{i:,}" for i in t["alarms"])
                    jobs = ", ".join(
                        f"{r}/{o}@{i:,}" + ("" if sec is None else f" ({sec:.1f} s)")
                        for i, r, o, sec in t.get("jobs", ())
                    )
                    print(f"{c['stream']:<16}{mode:>7}  alarms {alarms}\n{'':<23}  served {served}")
                    print(f"{'':<23}  jobs ended {jobs}")
            for at, whole, members in c["driftd"].get("pools", ()):
                parts = ", ".join(f"{n} {r} rows {s:.1f} s" for n, r, s in members if s is not None)
                print(f"{'':<23}  job ended @{at:,}: fit {whole:.1f} s; {parts}")
        print("\nA drift retrain that deployed, median seconds by stage (the audit log's stages):")
        for c in cells:
            stages = c["driftd"].get("drift_deploy_stages_median")
            if stages:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                print(f"{c['stream']:<16}{c['rate']:>6.0f}  {parts}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="all", help=f"comma-separated, or all: {STREAMS}")
    ap.add_argument("--delays", default="0,1000", help="label delays, in records")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--rates", default="2000", help="records/s; replay: only the label lag")
    ap.add_argument("--http", action="store_true", help="the daemon over HTTP at each rate")
    ap.add_argument("--json", type=Path, help="write every cell here")
    args = ap.parse_args()
    res = run_matrix(
        STREAMS if args.streams == "all" else tuple(args.streams.split(",")),
        [int(d) for d in args.delays.split(",")],
        [int(s) for s in args.seeds.split(",")],
        [float(r) for r in args.rates.split(",")],
        http=args.http,
    )
    print()
    show(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
