"""HTTP throughput and latency of a real daemon on loopback.

Figures, each the median (min-max) of --runs runs:
  * ingest: records/s through POST /v1/records, 1,000-record batches of 20 numeric features,
    beside the bare store write (Store.add_records on the same rows, no HTTP) as the baseline;
  * predict: predictions/s and p50/p99 latency of single-instance POST /v1/predict, with
    --clients concurrent clients.

Run by hand:  .venv/bin/python benchmarks/bench_http.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

N_FEATURES = 20


def config(state: Path, boot: Path) -> str:
    feats = ", ".join(f'{{ name = "f{i}" }}' for i in range(N_FEATURES))
    return f"""
[server]
port = 0
max_body_bytes = 16777216
[state]
dir = "{state}"
[schema]
features = [{feats}]
[model]
estimator = "sklearn.linear_model.LogisticRegression"
[bootstrap]
data = "{boot}"
rows = 2000
[store]
retention_rows = 10000000
[log]
format = "json"
level = "warning"
"""


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        f = {f"f{i}": rng.gauss(0, 1) for i in range(N_FEATURES)}
        out.append({"features": f, "label": int(f["f0"] + f["f1"] > 0)})
    return out


def start(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    boot = tmp / "boot.csv"
    with boot.open("w") as fh:
        fh.write(",".join([f"f{i}" for i in range(N_FEATURES)] + ["label"]) + "\n")
        for r in rows(2000, 0):
            fh.write(
                ",".join(
                    [str(r["features"][f"f{i}"]) for i in range(N_FEATURES)] + [str(r["label"])]
                )
                + "\n"
            )
    cfg = tmp / "d.toml"
    cfg.write_text(config(tmp / "state", boot))
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftd", "run", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DRIFTD_LOG_LEVEL": "info"},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            url = f"http://127.0.0.1:{m.group(1)}"
            break
    else:
        raise RuntimeError("daemon did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    with httpx.Client(base_url=url) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.1)
    return proc, url


def ingest(url: str, batches: list[bytes]) -> float:
    with httpx.Client(base_url=url, timeout=60) as c:
        start = time.perf_counter()
        for body in batches:
            r = c.post("/v1/records", content=body, headers={"Content-Type": "application/json"})
            r.raise_for_status()
        return len(batches) * 1000 / (time.perf_counter() - start)


def bare_store(batches: list[list[dict[str, Any]]]) -> float:
    from driftd.schema import Feature, Schema
    from driftd.store import Row, Store

    schema = Schema(tuple(Feature(f"f{i}") for i in range(N_FEATURES)))
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "s.sqlite3", schema).open()
        start = time.perf_counter()
        n = 0
        for batch in batches:
            store.add_records(
                [
                    Row(f"b{n + i}", 0.0, r["features"], label=r["label"])
                    for i, r in enumerate(batch)
                ],
                source="records",
                received=0.0,
            )
            n += len(batch)
        took = time.perf_counter() - start
        store.close()
    return n / took


def predict(url: str, clients: int, seconds: float) -> tuple[float, float, float]:
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    instance = json.dumps({"instances": [rows(1, 5)[0]["features"]]})

    def worker() -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                c.post(
                    "/v1/predict", content=instance, headers={"Content-Type": "application/json"}
                ).raise_for_status()
                mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return len(lat) / seconds, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def fmt(values: list[float], digits: int = 0) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{mid:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    data = [rows(1000, 100 + b) for b in range(args.batches)]
    bodies = [json.dumps(b).encode() for b in data]
    http_rates, store_rates, pred_rates, p50s, p99s = [], [], [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            proc, url = start(Path(d))
            try:
                http_rates.append(ingest(url, bodies))
                store_rates.append(bare_store(data))
                rate, p50, p99 = predict(url, args.clients, args.seconds)
                pred_rates.append(rate)
                p50s.append(p50)
                p99s.append(p99)
            finally:
                proc.terminate()
                proc.wait(30)
        print(
            f"run {run + 1}: ingest {http_rates[-1]:,.0f} rec/s,"
            f" store {store_rates[-1]:,.0f} rec/s, "
            f"predict {pred_rates[-1]:,.0f}/s p50 {p50s[-1]:.2f} ms p99 {p99s[-1]:.2f} ms",
            file=sys.stderr,
        )
    ratio = [h / s for h, s in zip(http_rates, store_rates, strict=True)]
    print(f"machine: {os.cpu_count()} cores; median (min-max) of {args.runs} runs")
    print(f"POST /v1/records, 1000 x {N_FEATURES} numeric: {fmt(http_rates)} records/s")
    print(f"  bare Store.add_records (baseline):       {fmt(store_rates)} records/s")
    print(f"  ratio HTTP / bare store:                 {fmt(ratio, 2)}")
    print(
        f"POST /v1/predict, 1 instance, {args.clients} client(s): {fmt(pred_rates)} predictions/s"
    )
    print(f"  latency p50 {fmt(p50s, 2)} ms, p99 {fmt(p99s, 2)} ms")


if __name__ == "__main__":
    main()
