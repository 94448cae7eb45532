"""Shared fixtures: a real daemon subprocess on a free loopback port with a temporary state dir."""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

FEATURES = [("x0", "numeric"), ("x1", "numeric"), ("x2", "numeric"), ("color", "categorical")]
COLORS = ("red", "green", "blue")


def make_rows(n: int, seed: int = 0, *, flip: bool = False) -> list[dict[str, Any]]:
    """A simple labelled stream: the label is x0 + x1 > 1 (reversed when ``flip``)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = {
            "x0": rng.random(),
            "x1": rng.random(),
            "x2": rng.gauss(0, 1),
            "color": rng.choice(COLORS),
        }
        y = int((x["x0"] + x["x1"] > 1) != flip)
        rows.append({"features": x, "label": y})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([name for name, _ in FEATURES] + ["label"])
        for r in rows:
            w.writerow([r["features"][name] for name, _ in FEATURES] + [r["label"]])
    return path


def config_text(
    state: Path, *, bootstrap: str | None, extra: str = "", sections: dict[str, str] | None = None
) -> str:
    """A test config; ``sections`` replaces or adds whole sections (``{"retrain": "k = 1"}``)."""
    feats = ", ".join(f'{{ name = "{n}", kind = "{k}" }}' for n, k in FEATURES)
    body = {
        "server": "port = 0\nmax_body_bytes = 1048576\nmax_batch_size = 2000",
        "state": f'dir = "{state}"',
        "schema": f'task = "classification"\nfeatures = [{feats}]',
        "model": 'estimator = "sklearn.linear_model.LogisticRegression"\n'
        "params = { max_iter = 200 }",
        "bootstrap": (f'data = "{bootstrap}"\n' if bootstrap else "")
        + "min_rows = 200\nrows = 1000",
        "training": "timeout_seconds = 120",
        "log": 'format = "json"',
        **(sections or {}),
    }
    return "\n".join(f"[{name}]\n{text}\n" for name, text in body.items()) + extra


def require_tool(name: str) -> str:
    """The path of an external tool; skip without it, unless CI demands it (then fail)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("DRIFTD_REQUIRE_EXTERNAL"):
            pytest.fail(
                f"{name} is required here (DRIFTD_REQUIRE_EXTERNAL is set) but not installed"
            )
        pytest.skip(f"{name} is not installed")
    return path


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and localhost, and its key, by openssl."""
    openssl = require_tool("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    args = ["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost"]
    args += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    args += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        [openssl, *args, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


def yaml_module() -> Any:
    """PyYAML; skipped without it, unless CI demands every check (then fail)."""
    try:
        import yaml
    except ImportError:
        if os.environ.get("DRIFTD_REQUIRE_EXTERNAL"):
            pytest.fail("PyYAML is required here (DRIFTD_REQUIRE_EXTERNAL is set)")
        pytest.skip("PyYAML is not installed")
    return yaml


def load_yaml(path: Path) -> Any:
    return yaml_module().safe_load(path.read_text())


class DaemonProcess:
    """``driftd run`` in a subprocess; its JSON log lines are collected from stderr.

    ``probe_token`` is sent while waiting for readiness (for a daemon whose probes need the
    read scope); ``verify`` is the TLS verification of every client (for a daemon on HTTPS).
    """

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        *,
        probe_token: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.probe_token = probe_token
        self.verify = verify
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self.port: int | None = None
        self.scheme = "http"
        self._reader: threading.Thread | None = None

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> DaemonProcess:
        self.lines = []
        self.port = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftd", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon did not listen in time: {self.log_text()}")
            time.sleep(0.05)
        if wait_ready:
            self.wait_ready(timeout=deadline - time.monotonic())
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"message": line.rstrip(), "level": "raw"}
            self.lines.append(entry)
            m = re.search(r"listening on (https?)://[^:]+:(\d+)", str(entry.get("message", "")))
            if m:
                self.scheme, self.port = m.group(1), int(m.group(2))

    def log_text(self) -> str:
        return "\n".join(str(e.get("message")) for e in self.lines[-40:])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, verify=self.verify, **kw)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        token = self.probe_token
        with self.client(headers={"Authorization": f"Bearer {token}"} if token else None) as c:
            while time.monotonic() < deadline:
                if c.get("/readyz").status_code == 200:
                    return
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {self.log_text()}")
                time.sleep(0.1)
        raise TimeoutError(f"daemon not ready: {self.log_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.close()
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.close()

    def close(self) -> None:
        """Release the pipe once the process is gone (after ``wait``, ``stop`` or a kill)."""
        if self._reader is not None:
            self._reader.join(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def bootstrap_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "bootstrap.csv", make_rows(1000, seed=1))


@pytest.fixture
def daemon_config(tmp_path: Path, state_dir: Path, bootstrap_csv: Path) -> Path:
    path = tmp_path / "driftd.toml"
    path.write_text(config_text(state_dir, bootstrap=str(bootstrap_csv)))
    return path


@pytest.fixture
def daemon(daemon_config: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(daemon_config).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A private PostgreSQL on 127.0.0.1 for the whole session (tests/services.py)."""
    from tests.services import PostgresServer

    server = PostgresServer().start()
    yield server
    server.close()


_namespaces = itertools.count()


@pytest.fixture
def pg_namespace() -> str:
    """A PostgreSQL schema name no other test uses: each test starts on empty tables."""
    return f"t{os.getpid()}_{next(_namespaces)}"
