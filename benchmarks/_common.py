"""Helpers shared by the benchmark scripts: summaries, the machine, a daemon subprocess.

Every figure of the suite is the median of several runs with its min-max, and every absolute
figure sits beside a baseline measured in the same run: the machines are shared and noisy.
Nothing here is imported by driftd itself.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"


# -- numbers -----------------------------------------------------------------------------------
def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max (the suite's one summary of repeated runs)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(values: Sequence[float] | dict[str, float], digits: int = 0, unit: str = "") -> str:
    """``median (min-max)`` with thousands separators."""
    s = values if isinstance(values, dict) else stats(values)
    if not s.get("n"):
        return "n/a"
    suffix = f" {unit}" if unit else ""
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f}){suffix}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


# -- the machine -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, Python and the versions of the libraries that matter."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem = round(int(m.group(1)) / 1024**2, 1) if m else None
    except OSError:
        pass
    libs = {}
    for name in (
        "river",
        "scikit-learn",
        "numpy",
        "fastapi",
        "starlette",
        "uvicorn",
        "httptools",
        "uvloop",
        "msgspec",
        "pydantic",
        "skops",
    ):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = "-"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "libraries": libs,
    }


# -- process memory ----------------------------------------------------------------------------
def rss_mb(pid: int) -> dict[str, float]:
    """Resident set size now and its peak (VmHWM) of one process, in MiB."""
    out = {"rss": float("nan"), "peak": float("nan")}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key, name in (("rss", "VmRSS"), ("peak", "VmHWM")):
        m = re.search(rf"{name}:\s+(\d+) kB", text)
        if m:
            out[key] = int(m.group(1)) / 1024
    return out


# -- a daemon subprocess -----------------------------------------------------------------------
def numeric_features(n: int, prefix: str = "f") -> str:
    """The TOML ``features = [...]`` value for ``n`` numeric features."""
    return "[" + ", ".join(f'{{ name = "{prefix}{i}" }}' for i in range(n)) + "]"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w") as fh:
        fh.write(",".join(header) + "\n")
        for row in rows:
            fh.write(",".join(map(str, row)) + "\n")
    return path


@dataclass
class Daemon:
    """``driftd run --config`` as a child process, on a free loopback port.

    Its stderr is read on a thread (so the pipe never fills) and kept in ``lines``.
    """

    config: Path
    argv: list[str] = field(default_factory=list)
    #: Added to this process's environment, and the working directory (default: the project).
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def start(self, timeout: float = 180.0) -> Daemon:
        cmd = [*self.argv] or [sys.executable, "-m", "driftd", "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={
                **os.environ,
                **self.env,
                "DRIFTD_LOG_LEVEL": "info",
                "DRIFTD_LOG_FORMAT": "json",
            },
            cwd=self.cwd or ROOT,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                break
        else:
            raise RuntimeError("daemon did not start:\n" + "".join(self.lines[-30:]))
        threading.Thread(target=self._drain, daemon=True).start()
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while c.get("/readyz").status_code != 200:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("daemon not ready:\n" + "".join(self.lines[-30:]))
                time.sleep(0.1)
        return self

    def _drain(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if len(self.lines) > 5000:
                del self.lines[:1000]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def events(url: str, kind: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The daemon's audit log, oldest first (all pages)."""
    import httpx

    out: list[dict[str, Any]] = []
    before = None
    with httpx.Client(base_url=url, timeout=30) as c:
        while True:
            params: dict[str, Any] = {"limit": limit}
            if kind:
                params["kind"] = kind
            if before:
                params["before"] = before
            body = c.get("/v1/events", params=params).json()
            out.extend(body["events"])
            before = body.get("next_before")
            if not before:
                break
    return sorted(out, key=lambda e: e["id"])


def bare_adwin_loop(
    rows: list[dict[str, float | str]], n_features: int, batch: int = 1000
) -> tuple[float, int]:
    """Records/s and detections of the simplest correct loop over river ADWINs, one a feature,
    with the delta the monitor uses (its share of the false-alarm budget): the practical limit
    to compare with."""
    from river import drift

    from driftd.monitor import MonitorConfig
    from driftd.monitor.scores import delta_for

    delta = delta_for(2 * MonitorConfig().false_alarm_run, n_features)
    detectors = [(f"x{i}", drift.ADWIN(delta=delta)) for i in range(n_features)]
    found = 0
    t = time.perf_counter()
    for start in range(0, len(rows), batch):
        for record in rows[start : start + batch]:
            for name, detector in detectors:
                detector.update(record[name])
                if detector.drift_detected:
                    found += 1
    return len(rows) / (time.perf_counter() - t), found
