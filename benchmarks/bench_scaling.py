"""Figure 6: scaling curves, written as PNG plots into docs/.

  features   Monitor and bare-loop records/s at 5, 20, 100, 500 numeric features (ADWIN);
             the ratio Monitor / bare loop is the figure; records per run shrink with the width
             so every point costs about the same;
  memory     RSS of a daemon (now and peak) after ingesting 1.2x its retention window
             (store.retention_rows, trimmed every second) over HTTP, 20 numeric features;
             a fresh daemon per run;
  training   fit time of the default model (HistGradientBoostingClassifier, default params)
             through driftd's own fit (pipeline + skops dump, fit_and_dump) against window size.

Run by hand:  .venv/bin/python benchmarks/bench_scaling.py [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Daemon, fmt, rss_mb, stats
from bench_http import config as http_config
from bench_http import rows as http_rows
from bench_http import write_boot
from bench_peers import bare_rate, make_rows, monitor_rate

DOCS = ROOT / "docs"


def features(widths: list[int], runs: int, budget: int) -> dict[str, Any]:
    out = {}
    for n in widths:
        records = max(2000, min(100_000, budget // n))
        data = make_rows(records, n, seed=n)
        bare, mon = [], []
        for _ in range(runs):
            bare.append(bare_rate(data, n))
            mon.append(monitor_rate(data, n))
        out[str(n)] = {
            "records": records,
            "bare": stats(bare),
            "monitor": stats(mon),
            "ratio": stats([m / b for m, b in zip(mon, bare, strict=True)]),
        }
        print(f"  {n} features: {fmt(mon)} vs bare {fmt(bare)} records/s", file=sys.stderr)
    return out


def memory(retentions: list[int], runs: int) -> dict[str, Any]:
    out = {}
    batch = [json.dumps(http_rows(1000, 100 + b)).encode() for b in range(20)]
    for keep in retentions:
        rss, peak, held = [], [], []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                cfg = tmp / "d.toml"
                text = http_config(tmp / "state", write_boot(tmp / "boot.csv"))
                text = text.replace("retention_rows = 10000000", f"retention_rows = {keep}")
                cfg.write_text(text.replace("[store]", "[store]\nretention_interval_seconds = 1"))
                with Daemon(cfg) as daemon, httpx.Client(base_url=daemon.url, timeout=60) as c:
                    sent = 0
                    while sent < keep * 1.2:
                        c.post(
                            "/v1/records",
                            content=batch[(sent // 1000) % len(batch)],
                            headers={"Content-Type": "application/json"},
                        ).raise_for_status()
                        sent += 1000
                    time.sleep(2.5)  # a retention pass
                    held.append(c.get("/v1/status").json()["store"]["records"])
                    now = rss_mb(daemon.pid)
            rss.append(now["rss"])
            peak.append(now["peak"])
        out[str(keep)] = {
            "sent": sent,
            "held": int(np.median(held)),
            "rss": float(np.median(rss)),
            "peak": float(np.median(peak)),
            "rss_mb": stats(rss),
            "peak_mb": stats(peak),
        }
        print(
            f"  retention {keep:,}: held {held} rows, RSS {fmt(rss, 0)} MiB, peak {fmt(peak, 0)}",
            file=sys.stderr,
        )
    return out


def training(windows: list[int], runs: int) -> dict[str, Any]:
    from driftd.ingest.schema import Feature, Schema
    from driftd.retrain.config import ModelConfig
    from driftd.retrain.fit import FitJob, fit_and_dump

    schema = Schema(tuple(Feature(f"f{i}") for i in range(20)))
    rng = np.random.default_rng(0)
    X_all = rng.normal(size=(max(windows), 20))
    y_all = (X_all[:, 0] + X_all[:, 1] + 0.5 * X_all[:, 2] * X_all[:, 3] > 0).astype(int).tolist()
    fit_and_dump(FitJob(ModelConfig(), schema, X_all[:500], y_all[:500], None))
    out = {}
    for n in windows:
        took = []
        for _ in range(runs):
            job = FitJob(ModelConfig(), schema, X_all[:n], y_all[:n], None)
            result = fit_and_dump(job)
            if not result.ok:
                raise RuntimeError(result.error)
            took.append(result.seconds)
        out[str(n)] = {"seconds": stats(took), "per_1k_rows": stats([t / n * 1000 for t in took])}
        print(f"  window {n:,}: fit {fmt(took, 2)} s", file=sys.stderr)
    return out


def plot(res: dict[str, Any], directory: Path = DOCS) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def errorbar(ax: Any, x: list[int], points: list[dict[str, float]], **kw: Any) -> None:
        """Median with min-max whiskers."""
        med = [p["median"] for p in points]
        spread = [
            [p["median"] - p["min"] for p in points],
            [p["max"] - p["median"] for p in points],
        ]
        ax.errorbar(x, med, yerr=spread, marker="o", capsize=3, **kw)

    def save(fig: Any, ax: Any, name: str, *, legend: bool = True) -> Path:
        ax.grid(True, which="both", alpha=0.3)
        if legend:
            ax.legend()
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    f = res["features"]
    x = [int(k) for k in f]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("monitor", "driftd Monitor"), ("bare", "bare river loop")):
        errorbar(ax, x, [f[k][key] for k in f], label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="numeric features (ADWIN each)",
        ylabel="records/s",
        title="Monitor throughput vs features",
    )
    ax.set_xticks(x, [str(v) for v in x])
    paths = [save(fig, ax, "bench_features.png")]

    m = res["memory"]
    x = [int(k) for k in m]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [m[k]["rss"] for k in m], marker="o", label="RSS after ingest")
    ax.plot(x, [m[k]["peak"] for k in m], marker="s", label="peak RSS (VmHWM)")
    ax.set(
        xscale="log",
        xlabel="store.retention_rows (rows held)",
        ylabel="MiB",
        title="Daemon memory vs retention window (20 numeric)",
    )
    paths.append(save(fig, ax, "bench_memory.png"))

    t = res["training"]
    x = [int(k) for k in t]
    fig, ax = plt.subplots(figsize=(6, 4))
    errorbar(ax, x, [t[k]["seconds"] for k in t])
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training window (rows)",
        ylabel="fit seconds",
        title="Fit time vs window (HistGradientBoosting defaults)",
    )
    paths.append(save(fig, ax, "bench_training.png", legend=False))
    return paths


def run(runs: int = 5, quick: bool = False) -> dict[str, Any]:
    res: dict[str, Any] = {
        "features": features([5, 20, 100, 500], runs, 400_000 if quick else 2_000_000),
        "memory": memory(
            [10_000, 50_000] if quick else [10_000, 100_000, 300_000, 1_000_000], runs
        ),
        "training": training(
            [1000, 5000, 20_000] if quick else [1000, 5000, 10_000, 20_000, 50_000, 100_000],
            runs,
        ),
    }
    res["plots"] = [str(p.relative_to(ROOT)) for p in plot(res)]
    return res


def show(res: dict[str, Any]) -> None:
    print("Figure 6: scaling")
    for k, v in res["features"].items():
        print(
            f"  {int(k):>4} features: Monitor {fmt(v['monitor'])} rec/s, bare {fmt(v['bare'])}"
            f" rec/s, ratio {fmt(v['ratio'], 2)}"
        )
    for k, v in res["memory"].items():
        print(
            f"  retention {int(k):>9,}: held {v['held']:,}, RSS {fmt(v['rss_mb'], 0)} MiB"
            f" (peak {fmt(v['peak_mb'], 0)})"
        )
    for k, v in res["training"].items():
        print(f"  window {int(k):>7,}: fit {fmt(v['seconds'], 2)} s")
    print(f"  plots: {', '.join(res['plots'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    show(run(args.runs, args.quick))


if __name__ == "__main__":
    main()
