"""Figure 7: POST /v1/predict against a bare FastAPI endpoint and MLServer, on one machine.

Three servers of the same model (a LogisticRegression over 20 numeric features in a one-step
scikit-learn pipeline, fitted on the same 2,000 rows), all on uvicorn + httptools + uvloop:

  driftd   the daemon (bench_http's config): every prediction committed to SQLite and passed
           through the monitor before its answer;
  bare     benchmarks/bare_predict.py: pydantic body, ``model.predict``, JSON answer, nothing
           else (the floor a FastAPI model server can reach);
  mlserver MLServer's scikit-learn runtime (V2 inference protocol, ``parallel_workers = 0``:
           the model in the server process, its fastest for a model this cheap), run with
           benchmarks/peers/.venv; left out, with the reason, when it is not installed there.

Per run, every cell (1 and 8 concurrent clients x single instance and batches of 100) measures
the servers one after the other for --seconds each, in an order rotated every run, so that the
machine's noise falls on all of them alike. Clients are threads of this process, each on one
kept-alive ``http.client`` connection. Reported per server and cell: predictions/s, p50, p99,
p99.9 (median and min-max over runs), and the per-run ratios of driftd to the others.

The issue's targets, single instance: one client p50 <= 1.2x and p99 <= 1.5x bare; 8 clients
throughput >= 0.8x bare. ``--profile`` adds where one prediction's time goes inside the daemon.

Run by hand:  .venv/bin/python benchmarks/bench_predict.py [--runs 5] [--seconds 5] [--profile]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http
from _common import PEERS_PYTHON, ROOT, fmt, machine, percentile, stats

CLIENTS = (1, 8)
SHAPES = {"single": 1, "batch100": 100}
MODEL_NAME = "lr"


# -- the servers -------------------------------------------------------------------------------
@dataclass
class Target:
    """One server under test: where to post, and the body of each shape."""

    name: str
    host: str
    port: int
    path: str
    bodies: dict[str, bytes]
    stop: Callable[[], None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def instances(n: int, seed: int) -> list[dict[str, float]]:
    return [r["features"] for r in bench_http.rows(n, seed)]


def fit_model(boot: Path, path: Path) -> Path:
    """The model driftd bootstraps, fitted on the same rows, dumped for the other servers."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    data = np.loadtxt(boot, delimiter=",", skiprows=1)
    model = Pipeline([("model", LogisticRegression())]).fit(data[:, :-1], data[:, -1].astype(int))
    joblib.dump(model, path)
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: not ready in {timeout:g} s")


def _stopper(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    return stop


def start_driftd(tmp: Path) -> Target:
    tmp.mkdir()
    daemon = bench_http.start(tmp)
    port = int(daemon.url.rsplit(":", 1)[1])
    bodies = {s: json.dumps({"instances": instances(n, 7)}).encode() for s, n in SHAPES.items()}
    return Target("driftd", "127.0.0.1", port, "/v1/predict", bodies, daemon.stop)


def start_bare(model: Path) -> Target:
    port = free_port()
    script = ROOT / "benchmarks" / "bare_predict.py"
    proc = subprocess.Popen([sys.executable, str(script), str(model), str(port)], cwd=ROOT)
    _wait_ready(f"http://127.0.0.1:{port}/docs", proc)
    bodies = {s: json.dumps({"instances": instances(n, 7)}).encode() for s, n in SHAPES.items()}
    return Target("bare", "127.0.0.1", port, "/predict", bodies, _stopper(proc))


def start_mlserver(tmp: Path, model: Path) -> Target | str:
    """MLServer on ``model``, or why it cannot run here."""
    if not PEERS_PYTHON.exists():
        return "benchmarks/peers/.venv is missing (sh benchmarks/peers/setup.sh)"
    check = subprocess.run(
        [str(PEERS_PYTHON), "-c", "import mlserver, mlserver_sklearn"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        return "mlserver is not installed in benchmarks/peers/.venv: " + check.stderr[-200:]
    home = tmp / "mlserver"
    (home / MODEL_NAME).mkdir(parents=True)
    port = free_port()
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "host": "127.0.0.1",
    }
    (home / "settings.json").write_text(json.dumps(settings))
    (home / MODEL_NAME / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(model)},
            }
        )
    )
    proc = subprocess.Popen(
        [str(PEERS_PYTHON.parent / "mlserver"), "start", str(home)],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_ready(f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready", proc)
    bodies = {}
    for s, n in SHAPES.items():
        rows = instances(n, 7)
        flat = [row[f"f{i}"] for row in rows for i in range(bench_http.N_FEATURES)]
        tensor = {
            "name": "X",
            "shape": [n, bench_http.N_FEATURES],
            "datatype": "FP64",
            "data": flat,
        }
        bodies[s] = json.dumps({"inputs": [tensor]}).encode()
    path = f"/v2/models/{MODEL_NAME}/infer"
    return Target("mlserver", "127.0.0.1", port, path, bodies, _stopper(proc))


# -- the clients -------------------------------------------------------------------------------
def drive(target: Target, shape: str, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads posting ``shape`` back to back for ``seconds``, each on one kept-alive
    connection after 50 untimed requests: predictions/s and latency percentiles in ms."""
    body = target.bodies[shape]
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def post(conn: http.client.HTTPConnection) -> None:
        conn.request("POST", target.path, body=body, headers=headers)
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            raise RuntimeError(f"{target.name}: {r.status} {answer[:200]!r}")

    def client() -> None:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=60)
        mine: list[float] = []
        try:
            for _ in range(50):
                post(conn)
            start.wait()
            stop = time.perf_counter() + seconds
            while (t := time.perf_counter()) < stop:
                post(conn)
                mine.append(time.perf_counter() - t)
        finally:
            conn.close()
            with lock:
                lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    begin = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    lat.sort()
    return {
        "rate": len(lat) * SHAPES[shape] / elapsed,
        "p50": percentile(lat, 50) * 1000,
        "p99": percentile(lat, 99) * 1000,
        "p999": percentile(lat, 99.9) * 1000,
        "requests": len(lat),
    }


def stored_records(target: Target) -> int:
    with httpx.Client(base_url=f"http://{target.host}:{target.port}", timeout=30) as c:
        count: int = c.get("/v1/status").json()["store"]["records"]
        return count


# -- the run -----------------------------------------------------------------------------------
def run(runs: int = 5, seconds: float = 5.0, with_profile: bool = False) -> dict[str, Any]:
    cells = [(c, s) for c in CLIENTS for s in SHAPES]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        targets: list[Target] = []
        left_out: str | None = None
        try:
            targets.append(start_driftd(tmp / "driftd"))
            model = fit_model(tmp / "driftd" / "boot.csv", tmp / "model.joblib")
            targets.append(start_bare(model))
            peer = start_mlserver(tmp, model)
            if isinstance(peer, str):
                left_out = peer
            else:
                targets.append(peer)
            driftd = targets[0]
            before = stored_records(driftd)
            sent = 0
            for i in range(runs):
                order = targets[i % len(targets) :] + targets[: i % len(targets)]
                for clients, shape in cells:
                    key = f"{clients}/{shape}"
                    for target in order:
                        res = drive(target, shape, clients, seconds)
                        raw.setdefault(target.name, {}).setdefault(key, []).append(res)
                        if target is driftd:
                            sent += int(res["requests"]) * SHAPES[shape]
                print(f"  run {i + 1}: " + _line(raw, cells), file=sys.stderr)
            # The warm-up requests are stored too: 50 per client per cell and run.
            warm = runs * sum(50 * c * SHAPES[s] for c, s in cells)
            stored = stored_records(driftd) - before
        finally:
            for target in targets:
                target.stop()
    out: dict[str, Any] = {
        "machine": machine(),
        "seconds": seconds,
        "runs": runs,
        "left_out": {"mlserver": left_out} if left_out else {},
        "servers": {
            name: {
                key: {m: stats([r[m] for r in rs]) for m in ("rate", "p50", "p99", "p999")}
                for key, rs in cells_.items()
            }
            for name, cells_ in raw.items()
        },
        "ratios": _ratios(raw),
        "driftd_stored": {"answered": sent + warm, "stored": stored},
    }
    if with_profile:
        out["profile"] = profile()
    return out


def _line(raw: dict[str, dict[str, list[dict[str, float]]]], cells: list[tuple[int, str]]) -> str:
    parts = []
    for clients, shape in cells:
        key = f"{clients}/{shape}"
        vals = ", ".join(
            f"{name} {raw[name][key][-1]['rate']:,.0f}/s p99 {raw[name][key][-1]['p99']:.2f}"
            for name in raw
        )
        parts.append(f"[{key}: {vals}]")
    return " ".join(parts)


def _ratios(raw: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """Per run, driftd's figure over each other server's, then summarised."""
    out: dict[str, Any] = {}
    for other in (n for n in raw if n != "driftd"):
        for key, mine in raw["driftd"].items():
            theirs = raw[other][key]
            out.setdefault(other, {})[key] = {
                m: stats([a[m] / b[m] for a, b in zip(mine, theirs, strict=True)])
                for m in ("rate", "p50", "p99", "p999")
            }
    return out


# -- where the time goes -----------------------------------------------------------------------
def profile(n: int = 3000) -> dict[str, Any]:
    """One single-instance prediction inside the daemon's own parts (no HTTP), as one client's
    request is served: predicted and committed by the caller (``Engine.settle_here``, as the
    event loop does), then passed to the monitor (``Engine.monitor_soon``, as after the
    answer: a pass every 16 predictions). Its median time in microseconds, the monitor's
    share included, split by stage in the shares cProfile finds under the model calls, the
    SQLite write and commit (``Store.add_records``) and the monitor (``Monitor.update``); and
    the functions cProfile finds most time under."""
    import cProfile
    import pstats
    import statistics

    from driftd.config import load_text
    from driftd.metrics import Metrics
    from driftd.retrain.fit import fit_and_dump
    from driftd.service.parts import assemble

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        text = bench_http.config(tmp / "state", bench_http.write_boot(tmp / "boot.csv"))
        cfg = load_text(text, env={})
        parts = assemble(cfg, Metrics(process=False), state_dir=tmp / "state", fit=fit_and_dump)
        try:
            parts.bootstrap.run()
            engine = parts.engine
            one = instances(1, 7)

            def served() -> None:
                answer = engine.submit_predict(one, None, time.time(), here=True)
                if not engine.settle_here():
                    raise RuntimeError("the engine did not answer on the caller's thread")
                answer.result()
                engine.monitor_soon()

            total: list[float] = []
            for i in range(200 + n):
                t = time.perf_counter()
                served()
                if i >= 200:
                    total.append(time.perf_counter() - t)
            prof = cProfile.Profile()
            prof.runcall(lambda: [served() for _ in range(n)])
        finally:
            parts.close()
    cum: dict[tuple[str, str], float] = {}
    rows = pstats.Stats(prof).stats.items()  # type: ignore[attr-defined]
    for (fn, _, func), (_, _, _, seconds, _) in rows:
        key = (Path(fn).name, func)
        cum[key] = max(cum.get(key, 0.0), seconds)
    whole = cum[("bench_predict.py", "served")]
    model = cum.get(("serving.py", "answer")) or (
        cum.get(("serving.py", "predict"), 0.0) + cum.get(("serving.py", "probabilities"), 0.0)
    )
    shares = {
        "model": model / whole,
        "store": cum[("sqlite.py", "add_records")] / whole,
        "monitor": cum[("monitor.py", "update")] / whole,
    }
    shares["engine_other"] = 1 - sum(shares.values())
    mean = statistics.fmean(total) * 1e6  # the mean: the monitor's pass is one call in 16
    top = sorted(cum.items(), key=lambda kv: kv[1], reverse=True)[:25]
    return {
        "engine_us": mean,
        "engine_median_us": statistics.median(total) * 1e6,
        "stages_us": {k: v * mean for k, v in shares.items()},
        "cprofile_cumulative_us": [(f"{f}({fn})", s / n * 1e6) for (f, fn), s in top],
    }


# -- the report --------------------------------------------------------------------------------
def show(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(
        f"Figure 7: predict, {res['runs']} runs x {res['seconds']:g} s a cell; machine:"
        f" {m['cores']} cores, {m['cpu']}, Python {m['python']}, SQLite {m['sqlite']},"
        f" {', '.join(f'{k} {v}' for k, v in m['libraries'].items())}"
    )
    for name, why in res["left_out"].items():
        print(f"  {name}: left out ({why})")
    print(
        f"  {'server':<9} {'cell':<11} {'predictions/s':>26} {'p50 ms':>20} {'p99 ms':>20}"
        f" {'p99.9 ms':>20}"
    )
    for name, cells in res["servers"].items():
        for key, s in cells.items():
            print(
                f"  {name:<9} {key:<11} {fmt(s['rate']):>26} {fmt(s['p50'], 2):>20}"
                f" {fmt(s['p99'], 2):>20} {fmt(s['p999'], 2):>20}"
            )
    for other, cells in res["ratios"].items():
        print(f"  driftd / {other}:")
        for key, r in cells.items():
            print(
                f"    {key:<11} throughput {fmt(r['rate'], 2)}, p50 {fmt(r['p50'], 2)},"
                f" p99 {fmt(r['p99'], 2)}, p99.9 {fmt(r['p999'], 2)}"
            )
    s = res["driftd_stored"]
    print(f"  driftd stored {s['stored']:,} records for {s['answered']:,} predictions answered")
    prof = res.get("profile")
    if prof:
        print(
            f"  one prediction inside the daemon (no HTTP, as one client's is served): mean"
            f" {prof['engine_us']:.0f} us (median {prof['engine_median_us']:.0f}),"
            " by cProfile's shares:"
        )
        for k, v in prof["stages_us"].items():
            print(f"    {k:<14} {v:8.1f}")
        print("  cProfile, cumulative us per prediction:")
        for k, v in prof["cprofile_cumulative_us"]:
            print(f"    {v:8.1f}  {k}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    res = run(args.runs, args.seconds, args.profile)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    show(res)


if __name__ == "__main__":
    main()
