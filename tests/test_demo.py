"""`driftd demo` end to end: the whole cycle happens, visible in /v1/events and the metrics."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from driftd.cli import demo_config_path
from tests.conftest import self_signed_cert


def fast_demo_config(tmp_path: Path) -> Path:
    """The shipped demo, three times faster, so that a test sees the whole cycle quickly."""
    text = demo_config_path().read_text()
    for key, value in {
        "rate": "1500",
        "batch": "50",
        "segment": "4000",
        "corrupt_start": "10000",
        "corrupt_rows": "1200",
        "label_delay_seconds": "0.5",
    }.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


class Demo:
    """``driftd demo`` in a subprocess: its stderr lines, and the port it listens on."""

    def __init__(self, config: Path, state: Path, duration: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "driftd", "demo", "--port", "0",
                "--duration", str(duration), "--state-dir", str(state), "--config", str(config),
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.port: int | None = None
        self.scheme = "http"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on (https?)://127.0.0.1:(\d+)", line)
            if m:
                self.scheme, self.port = m.group(1), int(m.group(2))

    def url(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while self.port is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.port is not None, "".join(self.lines[-20:])
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """Ctrl-C, as at a terminal; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_the_demo_shows_a_drift_deploy_and_a_gate_rejection(tmp_path: Path) -> None:
    demo = Demo(fast_demo_config(tmp_path), tmp_path / "state", duration=120)
    try:
        with httpx.Client(base_url=demo.url(), timeout=10) as c:
            deadline = time.monotonic() + 90
            finished: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                finished = c.get("/v1/events", params={"kind": "retrain_finished"}).json()["events"]
                outcomes = {(tuple(e["reasons"]), e["outcome"]) for e in finished}  # type: ignore[arg-type]
                drift_deploy = any("drift" in r and o == "deployed" for r, o in outcomes)
                rejected = any(o == "rejected" for _, o in outcomes)
                if drift_deploy and rejected:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"no drift deploy and rejection: {finished}")
            kinds = {
                e["kind"] for e in c.get("/v1/events", params={"limit": 1000}).json()["events"]
            }
            assert {"drift_alarm", "retrain_requested", "deploy", "retrain_finished"} <= kinds
            metrics = c.get("/metrics").text
            assert re.search(r'driftd_retrain_runs_total\{outcome="rejected"\} [1-9]', metrics)
            assert re.search(r'driftd_drift_alarms_total\{kind="concept_drift"\} [1-9]', metrics)
            version = re.search(r"^driftd_model_version (\S+)$", metrics, re.MULTILINE)
            assert version is not None and float(version.group(1)) >= 2
        assert demo.stop() == 0
    finally:
        demo.close()
    text = demo.text
    assert "driftd demo summary" in text
    assert "rejected" in text.split("driftd demo summary")[1]


def test_the_demo_feeds_a_daemon_with_scoped_tokens_over_tls(tmp_path: Path) -> None:
    """The demo's own traffic carries the predict and ingest tokens and speaks TLS when the
    daemon does: a config with only scoped tokens used to have the demo's requests refused."""
    cert, key = self_signed_cert(tmp_path)
    tokens = {s: f"demo-{s}-token-0123456789" for s in ("predict", "ingest", "read")}
    text = fast_demo_config(tmp_path).read_text()
    text = text.replace("[server]\n", f'[server]\ntls_certfile = "{cert}"\ntls_keyfile = "{key}"\n')
    text += "\n[auth.tokens]\n" + "".join(f'{s} = ["{t}"]\n' for s, t in tokens.items())
    config = tmp_path / "scoped.toml"
    config.write_text(text)
    demo = Demo(config, tmp_path / "state", duration=60)
    try:
        url = demo.url()
        assert url.startswith("https://"), url
        headers = {"Authorization": f"Bearer {tokens['read']}"}
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=url, timeout=10, verify=trust, headers=headers) as c:
            deadline = time.monotonic() + 45
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = c.get("/v1/status").json()["store"]
                if counts.get("records", 0) > 500 and counts.get("labelled", 0) > 200:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"the demo's traffic did not arrive: {counts}")
        assert demo.stop() == 0
    finally:
        demo.close()
    text = demo.text
    assert "unauthorized" not in text and "forbidden" not in text
