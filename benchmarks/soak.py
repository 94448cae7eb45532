"""Soak: the demo stream at full speed through a real daemon, with retention, for millions of
records; samples the daemon's memory, file descriptors, store size and throughput.

The stream is river's Agrawal generator (``driftd.ingest.streams.SyntheticStream``), switching
concept every ``--segment`` records so that the monitor alarms and the daemon retrains and swaps
models during the run, as it would in production. Records go in as ``POST /v1/records`` batches with
their labels. Every ``--sample-seconds`` the sampler writes one CSV row: elapsed seconds,
records acknowledged, records/s over the interval, VmRSS, open fds, the SQLite file sizes and
the row count. At the end the RSS curve is drawn into a PNG and the properties are checked:

* RSS after warm-up grows by less than ``--max-rss-growth`` (10 %): the median of the last
  samples against the median of the first samples after warm-up;
* the store holds at most ``retention_rows`` plus one trim interval's worth of records;
* the fd count at the end is no higher than after warm-up (plus a small slack for the training
  child's pipe and short-lived reader connections).

Run by hand (10 M records took 763 s here, on 2 shared cores; figures in docs/reliability.md):
  .venv/bin/python benchmarks/soak.py --records 10000000 \
      --csv docs/soak.csv --png docs/soak_rss.png
A short version runs in the test suite (tests/test_crash.py::test_short_soak...).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from driftd.ingest.streams import STREAMS

FEATURES = STREAMS["agrawal"]
Request = tuple[str, bytes]  # (path, JSON body)
COLUMNS = (
    "elapsed_s",
    "records",
    "records_per_s",
    "rss_kib",
    "fds",
    "db_bytes",
    "wal_bytes",
    "store_rows",
    "trim_bound",
)


@dataclass(slots=True)
class Sample:
    elapsed_s: float
    records: int
    records_per_s: float
    rss_kib: int
    fds: int
    db_bytes: int
    wal_bytes: int
    store_rows: int
    trim_bound: int

    def row(self) -> list[Any]:
        return [getattr(self, c) for c in COLUMNS]


@dataclass(slots=True)
class SoakResult:
    records: int
    seconds: float
    samples: list[Sample]
    retention_rows: int
    warmup_index: int
    failed_requests: int
    log_errors: list[str] = field(default_factory=list)
    window: int = 5  # samples whose median stands for the start and the end
    events: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def _window(self, which: str) -> list[Sample]:
        after = self.samples[self.warmup_index :]
        return after[: self.window] if which == "start" else after[-self.window :]

    @property
    def rss_start_kib(self) -> float:
        return statistics.median(s.rss_kib for s in self._window("start"))

    @property
    def rss_end_kib(self) -> float:
        return statistics.median(s.rss_kib for s in self._window("end"))

    @property
    def rss_max_kib(self) -> int:
        return max(s.rss_kib for s in self.samples)

    @property
    def rss_growth(self) -> float:
        return self.rss_end_kib / self.rss_start_kib - 1.0

    @property
    def fds_start(self) -> int:
        return min(s.fds for s in self._window("start"))

    @property
    def fds_end(self) -> int:
        return min(s.fds for s in self._window("end"))

    def retention_violations(self) -> list[Sample]:
        return [s for s in self.samples if s.store_rows > s.trim_bound]

    def summary(self) -> str:
        last = self.samples[-1]
        return (
            f"{self.records:,} records in {self.seconds:,.0f} s = {self.rate:,.0f} records/s;"
            f" RSS after warm-up {self.rss_start_kib / 1024:.1f} MiB, end"
            f" {self.rss_end_kib / 1024:.1f} MiB ({100 * self.rss_growth:+.1f} %), max"
            f" {self.rss_max_kib / 1024:.1f} MiB; fds {self.fds_start} -> {self.fds_end}"
            f" (max {max(s.fds for s in self.samples)}); store rows at most"
            f" {max(s.store_rows for s in self.samples):,} (retention {self.retention_rows:,});"
            f" sqlite {last.db_bytes / 2**20:.1f} MiB + wal {last.wal_bytes / 2**20:.1f} MiB"
            f" (max db {max(s.db_bytes for s in self.samples) / 2**20:.1f} MiB); failed requests"
            f" {self.failed_requests}; samples {len(self.samples)}; events"
            f" {', '.join(f'{k} {v}' for k, v in sorted(self.events.items()))}"
        )

    def check(self, *, max_rss_growth: float = 0.10, fd_slack: int = 4) -> list[str]:
        """The properties the soak holds the daemon to; an empty list means all hold."""
        problems = []
        if self.failed_requests:
            problems.append(f"{self.failed_requests} request(s) failed")
        if self.rss_growth >= max_rss_growth:
            problems.append(
                f"RSS grew {100 * self.rss_growth:.1f} % after warm-up"
                f" ({self.rss_start_kib:.0f} -> {self.rss_end_kib:.0f} KiB)"
            )
        bad = self.retention_violations()
        if bad:
            problems.append(
                f"store over retention in {len(bad)} sample(s): {bad[0].store_rows} rows"
                f" > {bad[0].trim_bound}"
            )
        if self.fds_end > self.fds_start + fd_slack:
            problems.append(f"fd count grew: {self.fds_start} -> {self.fds_end}")
        if self.log_errors:
            problems.append(f"{len(self.log_errors)} error log line(s): {self.log_errors[:3]}")
        return problems


def config_text(state: Path, *, retention_rows: int, trim_seconds: float) -> str:
    feats = ", ".join(f'{{ name = "{n}", kind = "{k}" }}' for n, k in FEATURES.items())
    return f"""
[server]
port = 0
max_batch_size = 10000
[state]
dir = "{state}"
[schema]
task = "classification"
features = [{feats}]
[model]
estimator = "sklearn.linear_model.LogisticRegression"
params = {{ max_iter = 300 }}
[bootstrap]
data = "synth"
rows = 3000
seed = 1
[demo]
stream = "agrawal"
concepts = [0, 2]
[store]
retention_rows = {retention_rows}
retention_interval_seconds = {trim_seconds}
[retrain]
cooldown_labels = 20000
min_new_labels = 1000
min_rows_after_drift = 2000
window_rows = 20000
[gate]
min_absolute_change = -1.0
max_latency_ms = 5000
[training]
timeout_seconds = 300
[monitor]
checkpoint_interval_seconds = 10
[log]
format = "json"
level = "info"
"""


class Stream:
    """Pre-encoded batches of the Agrawal stream: each record's features are JSON once, and a
    batch body is those fragments joined with fresh ids, so that the client keeps up.

    ``path="predict"`` (the default) plays real traffic: ``POST /v1/predict`` with explicit ids,
    then ``POST /v1/labels`` for them, so the daemon stores predictions, joins labels, watches
    its error stream, alarms on the concept change and retrains. ``path="records"`` posts
    ``/v1/records`` with the labels inline (no predictions: the error stream stays idle).
    """

    def __init__(self, *, segment: int, seed: int, path: str = "predict", pool: int = 20_000):
        from driftd.ingest.streams import SyntheticStream

        self.segment = segment
        self.path = path
        self.pools = []
        for concept in (0, 2):
            rows = SyntheticStream("agrawal", (concept,), pool, seed + concept).take(pool)
            self.pools.append([(json.dumps(x, separators=(",", ":")), y) for x, y in rows])

    def batches(self, total: int, batch: int, prefix: str) -> Iterator[tuple[int, list[Request]]]:
        """``(records, requests)`` per batch; the requests are sent in order."""
        n = 0
        while n < total:
            size = min(batch, total - n)
            pool = self.pools[(n // self.segment) % 2]
            rows = [pool[i % len(pool)] for i in range(n, n + size)]
            ids = [f"{prefix}{i:x}" for i in range(n, n + size)]
            if self.path == "records":
                body = ",".join(
                    f'{{"id":"{k}","features":{f},"label":{y}}}'
                    for k, (f, y) in zip(ids, rows, strict=True)
                )
                yield size, [("/v1/records", f"[{body}]".encode())]
            else:
                instances = ",".join(f for f, _ in rows)
                id_list = ",".join(f'"{k}"' for k in ids)
                labels = ",".join(
                    f'{{"id":"{k}","label":{y}}}' for k, (_, y) in zip(ids, rows, strict=True)
                )
                yield (
                    size,
                    [
                        (
                            "/v1/predict",
                            f'{{"instances":[{instances}],"ids":[{id_list}]}}'.encode(),
                        ),
                        ("/v1/labels", f"[{labels}]".encode()),
                    ],
                )
            n += size


class Daemon:
    """``driftd run`` with its log in a file; the port is read from the log."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.url = ""

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-2000:]}")
            m = re.search(r"listening on http://[^:]+:(\d+)", self.log_path.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                break
            time.sleep(0.1)
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while time.monotonic() < deadline:
                if c.get("/readyz").status_code == 200:
                    return self.url
                time.sleep(0.2)
        raise TimeoutError("daemon not ready")

    def errors(self) -> list[str]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                out.append(line)
                continue
            if entry.get("level") in ("error", "critical", "ERROR", "CRITICAL"):
                out.append(str(entry.get("message")))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return int(self.proc.returncode)


def proc_stats(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open fd count) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def store_stats(state: Path) -> tuple[int, int, int]:
    """(sqlite bytes, wal bytes, record rows), read through a read-only connection."""
    db = state / "driftd.sqlite3"
    wal = state / "driftd.sqlite3-wal"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        conn.close()
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0, int(rows)


def run_soak(
    *,
    records: int,
    retention_rows: int = 200_000,
    trim_seconds: float = 5.0,
    batch: int = 2000,
    clients: int = 2,
    sample_seconds: float = 10.0,
    warmup_fraction: float = 0.2,
    segment: int = 500_000,
    seed: int = 7,
    path: str = "predict",
    workdir: Path | None = None,
    progress: bool = False,
) -> SoakResult:
    """Play ``records`` records through a fresh daemon and sample it; see the module docstring."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        state = root / "state"
        cfg = root / "soak.toml"
        cfg.write_text(config_text(state, retention_rows=retention_rows, trim_seconds=trim_seconds))
        stream = Stream(segment=segment, seed=seed, path=path)
        daemon = Daemon(cfg, root / "driftd.log")
        try:
            url = daemon.wait_ready()
            return _drive(
                daemon,
                url,
                state,
                stream,
                records=records,
                retention_rows=retention_rows,
                trim_seconds=trim_seconds,
                batch=batch,
                clients=clients,
                sample_seconds=sample_seconds,
                warmup_fraction=warmup_fraction,
                progress=progress,
            )
        finally:
            daemon.stop()


def _drive(
    daemon: Daemon,
    url: str,
    state: Path,
    stream: Stream,
    *,
    records: int,
    retention_rows: int,
    trim_seconds: float,
    batch: int,
    clients: int,
    sample_seconds: float,
    warmup_fraction: float,
    progress: bool,
) -> SoakResult:
    pid = daemon.proc.pid
    acked = [0] * clients
    failed = [0]
    per_client = records // clients

    def client(k: int) -> None:
        n = per_client if k else records - per_client * (clients - 1)
        headers = {"Content-Type": "application/json"}
        with httpx.Client(base_url=url, timeout=120) as c:
            for size, requests in stream.batches(n, batch, f"c{k}-"):
                ok = True
                for path, body in requests:
                    r = c.post(path, content=body, headers=headers)
                    ok = ok and r.status_code == 200
                if ok:
                    acked[k] += size
                else:
                    failed[0] += 1

    samples: list[Sample] = []
    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()

    def sample(prev: tuple[float, int]) -> tuple[float, int]:
        now = time.monotonic()
        total = sum(acked)
        rss, fds = proc_stats(pid)
        db_bytes, wal_bytes, rows = store_stats(state)
        rate = (total - prev[1]) / max(now - prev[0], 1e-9)
        # Ingest keeps going between trims: allow one trim interval (plus one sample's lag and
        # a batch per client in flight) beyond retention.
        bound = retention_rows + int(rate * (trim_seconds + 1.0)) + batch * clients
        samples.append(
            Sample(
                round(now - start, 2),
                total,
                round(rate, 1),
                rss,
                fds,
                db_bytes,
                wal_bytes,
                rows,
                bound,
            )
        )
        if progress:
            print(
                f"{now - start:8.0f} s {total:>12,} rec {rate:>9,.0f}/s rss {rss / 1024:7.1f} MiB"
                f" fds {fds:3d} rows {rows:>9,} db {db_bytes / 2**20:7.1f} MiB"
                f" wal {wal_bytes / 2**20:6.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
        return now, total

    prev = sample((start, 0))
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=max(0.0, sample_seconds - (time.monotonic() - prev[0])))
            if time.monotonic() - prev[0] >= sample_seconds:
                break
        if time.monotonic() - prev[0] >= sample_seconds:
            if daemon.proc.poll() is not None:
                raise RuntimeError("the daemon died during the soak")
            prev = sample(prev)
    seconds = time.monotonic() - start
    time.sleep(trim_seconds + 1.0)  # let the last trim run before the final sample
    sample(prev)
    warm = next(
        (i for i, s in enumerate(samples) if s.records >= warmup_fraction * records),
        len(samples) - 1,
    )
    conn = sqlite3.connect(f"file:{state / 'driftd.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        events = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    finally:
        conn.close()
    return SoakResult(
        events=events,
        records=sum(acked),
        seconds=seconds,
        samples=samples,
        retention_rows=retention_rows,
        warmup_index=min(warm, max(0, len(samples) - 2)),
        failed_requests=failed[0],
        log_errors=daemon.errors(),
    )


def write_csv(result: SoakResult, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for s in result.samples:
            w.writerow(s.row())


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s.records / 1e6 for s in result.samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
    ax.plot(x, [s.rss_kib / 1024 for s in result.samples], color="tab:blue", label="VmRSS")
    warm = result.samples[result.warmup_index].records / 1e6
    ax.axvline(warm, color="grey", linestyle=":", label="end of warm-up")
    ax.axhline(
        result.rss_start_kib * 1.1 / 1024, color="tab:red", linestyle="--", label="+10 % bound"
    )
    ax.set_ylabel("daemon RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title(
        f"driftd soak: {result.records / 1e6:.1f} M records, {result.rate:,.0f} records/s,"
        f" RSS {100 * result.rss_growth:+.1f} % after warm-up"
    )
    ax2.plot(x, [s.store_rows / 1e3 for s in result.samples], color="tab:green", label="rows")
    ax2.axhline(result.retention_rows / 1e3, color="grey", linestyle="--", label="retention")
    ax2.plot(
        x,
        [s.trim_bound / 1e3 for s in result.samples],
        color="tab:red",
        linestyle=":",
        label="retention + one trim interval",
    )
    ax2.set_ylabel("store rows (k)")
    ax2.set_xlabel("records ingested (millions)")
    ax2.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--retention-rows", type=int, default=200_000)
    ap.add_argument("--trim-seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--segment", type=int, default=500_000)
    ap.add_argument("--path", choices=("predict", "records"), default="predict")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    result = run_soak(
        records=args.records,
        retention_rows=args.retention_rows,
        trim_seconds=args.trim_seconds,
        batch=args.batch,
        clients=args.clients,
        sample_seconds=args.sample_seconds,
        segment=args.segment,
        path=args.path,
        progress=True,
    )
    if args.csv:
        write_csv(result, args.csv)
    if args.png:
        plot(result, args.png)
    print(result.summary())
    problems = result.check()
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
