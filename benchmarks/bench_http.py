"""Figure 2: HTTP ingest of a real daemon on loopback, against the machine's limit.

Figures, each the median (min-max) of --runs runs, each run on a fresh daemon:
  * ingest: records/s through POST /v1/records, 1,000-record batches of 20 numeric features
    (with a label), one client, beside two baselines measured in the same run: the bare river
    loop of figure 1 (bench_peers.bare_rate, same 20 features) and the bare store write
    (Store.add_records on the same rows, no HTTP);
  * where the time goes, in process: the same bodies through the daemon's own code without
    HTTP: parse + validate (the column decoder, as the app takes all-numeric batches),
    Engine.add_records split into the SQLite write (Store.add_records) and the detectors
    (Monitor.update); HTTP is what is left of the end-to-end time per batch;
  * with --profile, where the time goes inside the daemon under load: py-spy samples (all
    threads, idle excluded) grouped into parse/validate, SQLite, monitor, HTTP/asyncio, other;
  * predict: predictions/s and p50/p99 latency of single-instance POST /v1/predict.

Run by hand:  .venv/bin/python benchmarks/bench_http.py [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PEERS_PYTHON, Daemon, fmt, numeric_features, stats, write_csv
from bench_peers import bare_rate, make_rows

N_FEATURES = 20
BATCH = 1000


def config(state: Path, boot: Path) -> str:
    return f"""
[server]
port = 0
max_body_bytes = 16777216
[state]
dir = "{state}"
[schema]
features = {numeric_features(N_FEATURES)}
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


def write_boot(path: Path, n: int = 2000) -> Path:
    names = [f"f{i}" for i in range(N_FEATURES)]
    return write_csv(
        path,
        [*names, "label"],
        ([r["features"][c] for c in names] + [r["label"]] for r in rows(n, 0)),
    )


def start(tmp: Path, extra: str = "") -> Daemon:
    cfg = tmp / "d.toml"
    cfg.write_text(config(tmp / "state", write_boot(tmp / "boot.csv")) + extra)
    return Daemon(cfg).start()


def ingest(url: str, batches: list[bytes], warmup: int = 5) -> float:
    """Records/s of one client posting ``batches`` back to back on one kept-alive connection,
    after ``warmup`` of them posted untimed (the daemon's steady state, not its first calls).

    The client is the standard library's ``http.client``: httpx spends about a millisecond of
    Python per 570 kB request, which would be measured as the daemon's time."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def post(body: bytes) -> None:
        conn.request("POST", "/v1/records", body=body, headers=headers)
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            raise RuntimeError(f"POST /v1/records: {r.status} {answer[:200]!r}")

    try:
        for body in batches[:warmup]:
            post(body)
        start = time.perf_counter()
        for body in batches:
            post(body)
        return len(batches) * BATCH / (time.perf_counter() - start)
    finally:
        conn.close()


def bare_store(bodies: list[bytes]) -> float:
    """Records/s of ``Store.add_records`` alone on the batches the daemon would make of
    ``bodies`` (decoded beforehand, untimed)."""
    from driftd.ingest.columns import ColumnDecoder
    from driftd.ingest.schema import Feature, Schema
    from driftd.store import SQLiteStore

    schema = Schema(tuple(Feature(f"f{i}") for i in range(N_FEATURES)))
    decoder = ColumnDecoder(schema)
    batches = [decoded.batch(0.0) for body in bodies if (decoded := decoder.decode(body))]
    assert len(batches) == len(bodies), "a benchmark body was not taken by the column decoder"
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "s.sqlite3", schema, checkpoint_every=0.5).open()
        try:
            for batch in batches[:5]:
                store.add_records(batch, source="records", received=0.0)
            start = time.perf_counter()
            for batch in batches:
                store.add_records(batch, source="records", received=0.0)
            return len(batches) * BATCH / (time.perf_counter() - start)
        finally:
            store.close()


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t)

    return wrapper


def breakdown(bodies: list[bytes]) -> dict[str, float]:
    """Seconds per 1,000-record batch of each stage of the ingest path, in process, no HTTP.

    The daemon's own objects on a temporary state dir: the app's validators, a real Engine
    (SQLite store in WAL mode, the monitor, metrics); the store write and the monitor update
    are timed by wrapping the engine's own bound methods, so the path is the daemon's.
    """
    from driftd.config import load_text
    from driftd.ingest.columns import ColumnDecoder
    from driftd.ingest.validation import Validators
    from driftd.metrics import Metrics
    from driftd.retrain.fit import fit_and_dump
    from driftd.service.parts import assemble

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = load_text(config(tmp / "state", write_boot(tmp / "boot.csv")), env={})
        parts = assemble(cfg, Metrics(process=False), state_dir=tmp / "state", fit=fit_and_dump)
        engine = parts.engine
        cap = cfg.server.max_batch_size
        validators = Validators(engine.schema, max_items=cap)
        decoder = ColumnDecoder.for_schema(engine.schema, max_items=cap)
        store_t: list[float] = []
        mon_t: list[float] = []
        engine.store.add_records = _timed(engine.store.add_records, store_t)  # type: ignore[method-assign]
        engine.monitor.update = _timed(engine.monitor.update, mon_t)  # type: ignore[method-assign]
        parse_t, engine_t, dump_t = [], [], []
        try:
            for body in bodies:
                t0 = time.perf_counter()
                batch = decoder.decode(body) if decoder else None  # as the app does
                batch = batch or validators.parse(validators.records, body)
                t1 = time.perf_counter()
                result = engine.run(engine.add_records, batch, "records", time.time())
                t2 = time.perf_counter()
                json.dumps({"accepted": result.accepted, "duplicates": result.duplicates})
                t3 = time.perf_counter()
                parse_t.append(t1 - t0)
                engine_t.append(t2 - t1)
                dump_t.append(t3 - t2)
        finally:
            del engine.store.add_records, engine.monitor.update  # the wrappers do not pickle
            parts.close()
    n = len(bodies)
    store, mon = sum(store_t) / n, sum(mon_t) / n
    return {
        "parse_validate": sum(parse_t) / n,
        "store_write": store,
        "monitor": mon,
        "engine_other": sum(engine_t) / n - store - mon,
        "response": sum(dump_t) / n,
    }


# -- py-spy: where the daemon spends its time under load -----------------------------------------
CATEGORIES = (
    ("monitor (river detectors)", ("driftd/monitor/", "river/")),
    ("SQLite write (store)", ("driftd/store/",)),
    (
        "parse + validate (msgspec, pydantic)",
        ("driftd/ingest/", "msgspec", "pydantic"),
    ),
    ("metrics", ("prometheus_client",)),
    ("engine (batch columns, events)", ("driftd/service/engine.py",)),
    (
        "HTTP (uvicorn, starlette, fastapi, asyncio)",
        ("uvicorn", "starlette", "fastapi", "h11", "httptools", "asyncio", "driftd/service/app.py"),
    ),
)


SPY_RATE = 250


def pyspy_binary() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    peer = PEERS_PYTHON.parent / "py-spy"
    return str(peer) if peer.exists() else None


def classify(stack: str) -> str:
    """The category of one collapsed stack: its innermost frame that belongs to a category."""
    for frame in reversed(stack.split(";")):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other (threading, idle waits)"


def _own_frame(stack: str) -> str:
    """The innermost frame of a stack that is Python code of driftd or of a library it calls
    (not the interpreter's threading/asyncio plumbing), shortened to ``function (file:line)``."""
    frames = stack.split(";")
    for frame in reversed(frames):
        if "site-packages" in frame or "driftd/" in frame:
            m = re.match(r"\s*(.*?) \((.*?):(\d+)\)", frame)
            if m:
                path = m.group(2).split("site-packages/")[-1].split("src/")[-1]
                return f"{m.group(1)} ({path}:{m.group(3)})"
            return frame
    return frames[-1].strip() if frames else "?"


def profile(bodies: list[bytes]) -> dict[str, Any]:
    """py-spy over a daemon while one client posts ``bodies``: shares of the samples of the
    thread holding the GIL (``--gil``) by category, and the share of the time no thread held it
    (SQLite's C code, syscalls, waiting for the client)."""
    spy = pyspy_binary()
    if spy is None:
        return {"error": "py-spy not found (sh benchmarks/peers/setup.sh installs it)"}
    with tempfile.TemporaryDirectory() as d:
        daemon = start(Path(d))
        out = Path(d) / "stacks.txt"
        try:
            rec = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(daemon.pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(SPY_RATE),
                    "--output",
                    str(out),
                    "--nonblocking",
                    "--gil",
                    "--threads",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.5)
            if rec.poll() is not None:
                err = (rec.stderr.read() if rec.stderr else "").strip().splitlines()
                return {"error": f"py-spy could not attach: {err[-1:] or rec.returncode}"}
            t = time.perf_counter()
            rate = ingest(daemon.url, bodies)
            elapsed = time.perf_counter() - t
            time.sleep(0.2)
            rec.send_signal(2)  # SIGINT: py-spy writes its output and exits
            rec.wait(60)
        finally:
            daemon.stop()
        if not out.exists():
            return {"error": "py-spy wrote nothing"}
        counts: Counter[str] = Counter()
        threads: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        total = 0
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            counts[classify(stack)] += int(n)
            threads[stack.split(";", 1)[0]] += int(n)
            leaves[_own_frame(stack)] += int(n)
            total += int(n)
    expected = SPY_RATE * elapsed
    return {
        "rate": rate,
        "samples": total,
        "no_gil_share": max(0.0, 1 - total / expected),
        "shares": {k: v / total for k, v in counts.most_common()} if total else {},
        "threads": {k: v / total for k, v in threads.most_common(6)} if total else {},
        "top": {k: v / total for k, v in leaves.most_common(12)} if total else {},
    }


# -- predict ---------------------------------------------------------------------------------------
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


def run(
    runs: int = 5,
    *,
    batches: int = 100,
    clients: int = 1,
    seconds: float = 5.0,
    with_profile: bool = False,
    bare_records: int = 50_000,
) -> dict[str, Any]:
    data = [rows(BATCH, 100 + b) for b in range(batches)]
    bodies = [json.dumps(b).encode() for b in data]
    bare_rows = make_rows(bare_records, N_FEATURES)
    http, store, bare, pred, p50, p99, stages = [], [], [], [], [], [], []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as d:
            daemon = start(Path(d))
            try:
                http.append(ingest(daemon.url, bodies))
                rate, a, b = predict(daemon.url, clients, seconds)
                pred.append(rate)
                p50.append(a)
                p99.append(b)
            finally:
                daemon.stop()
        store.append(bare_store(bodies))
        bare.append(bare_rate(bare_rows, N_FEATURES))
        stages.append(breakdown(bodies))
        print(
            f"  run {i + 1}: ingest {http[-1]:,.0f} rec/s, bare loop {bare[-1]:,.0f} rec/s,"
            f" store {store[-1]:,.0f} rec/s; predict {pred[-1]:,.0f}/s p50 {p50[-1]:.2f} ms"
            f" p99 {p99[-1]:.2f} ms",
            file=sys.stderr,
        )
    keys = list(stages[0])
    per_batch = {k: stats([s[k] * 1000 for s in stages]) for k in keys}
    http_ms = [BATCH / h * 1000 for h in http]
    inproc = [sum(s.values()) * 1000 for s in stages]
    per_batch["http_and_client"] = stats([h - p for h, p in zip(http_ms, inproc, strict=True)])
    out: dict[str, Any] = {
        "batches": batches,
        "ingest": stats(http),
        "bare_loop": stats(bare),
        "bare_store": stats(store),
        "ingest_vs_bare_loop": stats([h / b for h, b in zip(http, bare, strict=True)]),
        "ingest_vs_bare_store": stats([h / s for h, s in zip(http, store, strict=True)]),
        "batch_ms": stats(http_ms),
        "stages_ms": per_batch,
        "predict_rate": stats(pred),
        "predict_p50_ms": stats(p50),
        "predict_p99_ms": stats(p99),
        "clients": clients,
    }
    if with_profile:
        out["profile"] = profile(bodies * max(1, 100 // batches))
    return out


STAGE_NAMES = {
    "parse_validate": "parse + validate (ColumnDecoder, else Validators.parse)",
    "store_write": "SQLite write (Store.add_records, one transaction)",
    "monitor": "monitor (Monitor.update, 20 ADWIN)",
    "engine_other": "engine other (batch columns, metrics, events)",
    "response": "response body",
    "http_and_client": "HTTP + client (uvicorn, starlette, http.client; by difference)",
}


def show(res: dict[str, Any]) -> None:
    print(f"Figure 2: POST /v1/records, {BATCH:,} x {N_FEATURES} numeric, one client")
    print(f"  ingest over HTTP       {fmt(res['ingest'])} records/s")
    print(f"  bare river loop        {fmt(res['bare_loop'])} records/s (figure 1 baseline)")
    print(f"    ratio to bare loop   {fmt(res['ingest_vs_bare_loop'], 2)}  (target >= 0.5)")
    print(f"  bare Store.add_records {fmt(res['bare_store'])} records/s")
    print(f"    ratio to bare store  {fmt(res['ingest_vs_bare_store'], 2)}")
    print(f"  where a batch's {fmt(res['batch_ms'], 1)} ms go (in process, same bodies):")
    total = res["batch_ms"]["median"]
    for key, name in STAGE_NAMES.items():
        s = res["stages_ms"][key]
        print(f"    {name:<58} {fmt(s, 1)} ms  ({s['median'] / total:.0%})")
    prof = res.get("profile")
    if prof:
        if "error" in prof:
            print(f"  py-spy profile: left out ({prof['error']})")
        else:
            print(
                f"  py-spy --gil, daemon under load ({prof['samples']} samples;"
                f" no thread held the GIL {prof['no_gil_share']:.0%} of the time):"
            )
            for k, v in prof["shares"].items():
                print(f"    {k:<58} {v:.0%}")
            print("  py-spy, innermost library/driftd frames:")
            for k, v in prof["top"].items():
                print(f"    {v:4.0%}  {k}")
    print(
        f"POST /v1/predict, 1 instance, {res['clients']} client(s):"
        f" {fmt(res['predict_rate'])} predictions/s,"
        f" p50 {fmt(res['predict_p50_ms'], 2)} ms, p99 {fmt(res['predict_p99_ms'], 2)} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--profile", action="store_true", help="sample the daemon with py-spy")
    args = ap.parse_args()
    show(
        run(
            args.runs,
            batches=args.batches,
            clients=args.clients,
            seconds=args.seconds,
            with_profile=args.profile,
        )
    )


if __name__ == "__main__":
    main()
