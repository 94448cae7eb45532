"""Figure 4: reaction time, from the first drifted record to the new champion serving.

A daemon with freshness.py's config (Agrawal features, HistGradientBoosting max_iter=100,
first model on 5,000 records of concept 0) is fed at a fixed rate (--rate records/s, batches
of 100: POST /v1/predict, then POST /v1/labels with their labels at once). Concept 0 -> 2 at
stream record --drift-at; the stream stops once a model trained after the alarm serves (or at
--max-records). Each run on a fresh daemon and a fresh seed. Split with the daemon's /v1/events:

  detection   first drifted record sent -> drift_alarm (records and seconds)
  wait        drift_alarm -> retrain_started (min_rows_after_drift labelled rows, cooldown, tick)
  training    fit_seconds of that job (the warm worker process)
  gate+swap   retrain_started -> deploy, minus the fit: snapshot, load, score both models on the
              holdout, publish, warm up, move the alias, swap
  total       first drifted record sent -> deploy

Run by hand:  .venv/bin/python benchmarks/bench_reaction.py [--runs 5] [--rate 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, events, fmt, stats
from freshness import BOOT, daemon_config, write_boot

from driftd.ingest.streams import SyntheticStream

STREAM = "agrawal"
STEPS = ("detection_records", "detection_s", "wait_s", "training_s", "gate_swap_s", "total_s")


def one(seed: int, rate: float, drift_at: int, max_records: int) -> dict[str, float] | None:
    s = SyntheticStream(STREAM, (0, 2), drift_at, seed)  # type: ignore[arg-type]
    pairs = s.take(max_records)
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        boot = write_boot(STREAM, xs, ys, d / "boot.csv")
        cfg = d / "d.toml"
        cfg.write_text(daemon_config(STREAM, d / "state", boot))
        with Daemon(cfg) as daemon, httpx.Client(base_url=daemon.url, timeout=60) as c:
            batch = 100
            sent_at: dict[int, float] = {}
            first_index: int | None = None
            next_at = time.monotonic()
            deployed = None
            for i in range(BOOT, max_records, batch):
                part = range(i, min(i + batch, max_records))
                sent_at[i] = time.time()
                body = c.post("/v1/predict", json={"instances": [xs[k] for k in part]}).json()
                if first_index is None:
                    first_index = _index_of(c, len(part))
                labels = [{"id": r, "label": ys[k]} for r, k in zip(body["ids"], part, strict=True)]
                c.post("/v1/labels", json=labels).raise_for_status()
                if i >= drift_at and (i - drift_at) % 1000 == 0:
                    deployed = _deployed_after_alarm(daemon.url)
                    if deployed:
                        break
                next_at += batch / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            log = events(daemon.url)
    assert first_index is not None
    drift_index = first_index + (drift_at - BOOT)  # the store's index of the first drifted record
    t_drift = sent_at[drift_at - (drift_at - BOOT) % batch]
    alarms = [
        e for e in log if e["kind"] == "drift_alarm" and (e["record_index"] or 0) >= drift_index
    ]
    if not alarms:
        return None
    alarm = alarms[0]
    started = next(
        (e for e in log if e["kind"] == "retrain_started" and e["time"] >= alarm["time"]), None
    )
    if started is None:
        return None
    finished = next(
        (e for e in log if e["kind"] == "retrain_finished" and e.get("job") == started["job"]),
        None,
    )
    deploy = next(
        (e for e in log if e["kind"] == "deploy" and e.get("job") == started["job"]), None
    )
    if finished is None or deploy is None:
        return None
    fit = float(finished.get("fit_seconds", 0.0))
    return {
        "detection_records": alarm["record_index"] - drift_index,
        "detection_s": alarm["time"] - t_drift,
        "wait_s": started["time"] - alarm["time"],
        "training_s": fit,
        "gate_swap_s": deploy["time"] - started["time"] - fit,
        "total_s": deploy["time"] - t_drift,
        "signal": alarm.get("signal"),
        "rows": finished.get("rows"),
    }


def _index_of(c: httpx.Client, batch: int) -> int:
    """The store index of the first streamed record, read right after the first batch."""
    records = int(c.get("/v1/status").json()["store"]["records"])
    return records - batch + 1


def _deployed_after_alarm(url: str) -> bool:
    log = events(url)
    alarm = next((e for e in log if e["kind"] == "drift_alarm"), None)
    if alarm is None:
        return False
    return any(e["kind"] == "deploy" and e["time"] >= alarm["time"] for e in log)


def run(
    runs: int = 5, rate: float = 1000.0, drift_at: int = 10_000, max_records: int = 30_000
) -> dict[str, Any]:
    got: list[dict[str, Any]] = []
    missed = 0
    for i in range(runs):
        r = one(100 + i, rate, drift_at, max_records)
        if r is None:
            missed += 1
            print(f"  run {i + 1}: no alarm + deploy within the stream", file=sys.stderr)
            continue
        got.append(r)
        print(
            f"  run {i + 1}: " + ", ".join(f"{k} {r[k]:.2f}" for k in STEPS) + f" ({r['signal']})",
            file=sys.stderr,
        )
    return {
        "rate": rate,
        "drift_at": drift_at,
        "runs": runs,
        "missed": missed,
        "signals": sorted({str(r["signal"]) for r in got}),
        **{k: stats([r[k] for r in got]) for k in STEPS},
    }


def show(res: dict[str, Any]) -> None:
    print(
        f"Figure 4: reaction time at {res['rate']:,.0f} records/s (Agrawal 0 -> 2 at stream record"
        f" {res['drift_at']:,}; {res['runs'] - res['missed']}/{res['runs']} runs reacted;"
        f" alarm signal {', '.join(res['signals'])})"
    )
    total = res["total_s"]["median"]
    print(f"  detection delay      {fmt(res['detection_records'])} records")
    for key, name in (
        ("detection_s", "detection delay"),
        ("wait_s", "wait for rows"),
        ("training_s", "training (fit)"),
        ("gate_swap_s", "gate + swap"),
        ("total_s", "total"),
    ):
        share = res[key]["median"] / total if total > 0 else float("nan")
        print(f"  {name:<20} {fmt(res[key], 2)} s  ({share:.0%} of total)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--drift-at", type=int, default=10_000)
    ap.add_argument("--max-records", type=int, default=30_000)
    args = ap.parse_args()
    show(run(args.runs, args.rate, args.drift_at, args.max_records))


if __name__ == "__main__":
    main()
