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


def test_the_demo_shows_a_drift_deploy_and_a_gate_rejection(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "driftd", "demo", "--port", "0", "--duration", "120",
            "--state-dir", str(tmp_path / "state"), "--config", str(fast_demo_config(tmp_path)),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    port: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"listening on http://127.0.0.1:(\d+)", line)
            if m:
                port.append(int(m.group(1)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port, "".join(lines[-20:])
        with httpx.Client(base_url=f"http://127.0.0.1:{port[0]}", timeout=10) as c:
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
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stderr.close()
    text = "".join(lines)
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
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "driftd", "demo", "--port", "0", "--duration", "60",
            "--state-dir", str(tmp_path / "state"), "--config", str(config),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    port: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"listening on https://127.0.0.1:(\d+)", line)
            if m:
                port.append(int(m.group(1)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port, "".join(lines[-20:])
        headers = {"Authorization": f"Bearer {tokens['read']}"}
        url = f"https://127.0.0.1:{port[0]}"
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
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stderr.close()
    text = "".join(lines)
    assert "unauthorized" not in text and "forbidden" not in text
