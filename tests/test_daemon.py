"""The daemon as a process: crashes, signals, bootstrap, model integrity, and swaps under load."""

from __future__ import annotations

import json
import os
import pickle
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from driftd.config import load
from driftd.models.registry import Registry
from driftd.service.daemon import Daemon
from tests.conftest import DaemonProcess, config_text, make_rows, self_signed_cert, write_csv


def post_batches(client: httpx.Client, n_batches: int, size: int, prefix: str) -> list[str]:
    """Post labelled batches with explicit ids; return the ids the daemon acknowledged."""
    acked: list[str] = []
    for b in range(n_batches):
        batch = [{**r, "id": f"{prefix}-{b}-{i}"} for i, r in enumerate(make_rows(size, seed=b))]
        r = client.post("/v1/records", json=batch)
        assert r.status_code == 200, r.text
        acked += [rec["id"] for rec in batch]
    return acked


def stored_ids(state: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(state / "driftd.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [r[0] for r in db.execute("SELECT rid FROM records")]


def test_kill_9_right_after_an_acknowledged_batch_loses_nothing(
    daemon: DaemonProcess, state_dir: Path
) -> None:
    with daemon.client() as c:
        acked = post_batches(c, 5, 200, "k")
    assert state_dir.stat().st_mode & 0o777 == 0o700, "the state dir is private to the daemon"
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    ids = stored_ids(state_dir)
    assert set(acked) <= set(ids)
    assert len(ids) == len(set(ids))
    daemon.start()
    with daemon.client() as c:
        assert c.get("/v1/status").json()["store"]["records"] == len(acked)
        assert (
            c.post("/v1/predict", json={"instances": [make_rows(1)[0]["features"]]}).status_code
            == 200
        )


def test_sigterm_during_a_stream_of_requests_loses_no_acknowledged_record(
    daemon: DaemonProcess, state_dir: Path
) -> None:
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def producer(k: int) -> None:
        with daemon.client() as c:
            b = 0
            while not stop.is_set():
                batch = [{**r, "id": f"t{k}-{b}-{i}"} for i, r in enumerate(make_rows(50, seed=b))]
                try:
                    r = c.post("/v1/records", json=batch)
                except httpx.HTTPError:
                    return  # the daemon stopped listening: this batch was never acknowledged
                if r.status_code == 200:
                    acked.extend(x["id"] for x in batch)
                else:
                    errors.append(r.text)
                b += 1

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    start = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(30)
    took = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join()
    assert code == 0
    assert took < 15, "shutdown must finish within the drain timeout"
    assert acked, "the producers got some batches acknowledged before the signal"
    assert not errors
    assert set(acked) <= set(stored_ids(state_dir))
    assert any("driftd stopped" in str(e.get("message")) for e in daemon.lines)


def test_without_bootstrap_data_predict_is_503_until_enough_labelled_rows(
    tmp_path: Path, state_dir: Path
) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(config_text(state_dir, bootstrap=None))
    proc = DaemonProcess(cfg).start(wait_ready=False)
    try:
        with proc.client() as c:
            r = c.post("/v1/predict", json={"instances": [make_rows(1)[0]["features"]]})
            assert r.status_code == 503
            assert "waiting for 200 labelled records" in r.json()["message"]
            assert c.get("/readyz").status_code == 503
            c.post("/v1/records", json=make_rows(250, seed=4))
            proc.wait_ready(60)
            assert (
                c.post("/v1/predict", json={"instances": [make_rows(1)[0]["features"]]}).status_code
                == 200
            )
            models = c.get("/v1/models").json()
            assert models["aliases"]["champion"] == 1
            assert models["versions"][0]["reason"] == "bootstrap"
    finally:
        proc.stop()


def _second_version(state: Path) -> None:
    """Publish a copy of v1 as v2 and make it champion, as a deploy would."""
    reg = Registry(state / "models")
    v1 = reg.get(1)
    manifest = {k: v for k, v in v1.manifest.items() if k not in ("version", "sha256", "size")}
    reg.publish((v1.path / "model.skops").read_bytes(), {**manifest, "reason": "test"})
    reg.set_champion(2)


def test_a_tampered_champion_is_refused_and_the_previous_version_served(
    daemon: DaemonProcess, state_dir: Path
) -> None:
    daemon.stop()
    _second_version(state_dir)
    art = state_dir / "models" / "v000002" / "model.skops"
    os.chmod(art, 0o600)
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0x01
    art.write_bytes(bytes(data))
    daemon.start()
    with daemon.client() as c:
        status = c.get("/v1/status").json()
        assert status["model"]["version"] == 1
        assert "v000002 failed to load" in status["model"]["fallback"]
        assert "driftd_model_load_failures_total 1.0" in c.get("/metrics").text
        kinds = [e["kind"] for e in c.get("/v1/events").json()["events"]]
        assert "model_load_failed" in kinds and "model_fallback" in kinds
    alerts = [str(e.get("message")) for e in daemon.lines if e.get("logger") == "driftd.alerts"]
    assert any("model_load_failed" in a and "v000002" in a for a in alerts), alerts


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_model_file_with_a_pickled_os_system_payload_never_runs(
    daemon: DaemonProcess, state_dir: Path, tmp_path: Path
) -> None:
    """Even with a manifest whose sha256 matches, the file is refused before anything runs."""
    import hashlib

    daemon.stop()
    _second_version(state_dir)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    v2 = state_dir / "models" / "v000002"
    os.chmod(v2 / "model.skops", 0o600)
    (v2 / "model.skops").write_bytes(payload)
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(payload).hexdigest()
    os.chmod(v2 / "manifest.json", 0o600)
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    daemon.start()
    with daemon.client() as c:
        assert c.get("/v1/status").json()["model"]["version"] == 1
    assert not marker.exists(), "the payload ran"


def test_sighup_reloads_and_reports_what_needs_a_restart(
    daemon: DaemonProcess, daemon_config: Path
) -> None:
    text = daemon_config.read_text().replace("max_batch_size = 2000", "max_batch_size = 1000")
    daemon_config.write_text(text + "\n[gate]\nthreshold = 0.6\n")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any("take effect after a restart" in str(e.get("message")) for e in daemon.lines):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no reload log line: " + daemon.log_text())
    with daemon.client() as c:
        events = c.get("/v1/events", params={"kind": "config_reloaded"}).json()["events"]
        assert events[0]["needs_restart"] == ["server"]
        assert events[0]["applied"] == ["gate"]
        assert 'driftd_gate_threshold{metric="accuracy"} 0.6' in c.get("/metrics").text
        assert c.get("/healthz").status_code == 200


# -- swaps under load, in-process so that the test can drive the swap primitive ------------


@pytest.fixture
def inproc(daemon_config: Path) -> Iterator[Daemon]:
    config = load(daemon_config)
    started = threading.Event()
    d = Daemon(config, on_started=lambda _: started.set())
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    assert started.wait(60)
    while d.parts is None or d.parts.models.current is None:
        time.sleep(0.05)
    try:
        yield d
    finally:
        d.should_exit = True
        t.join(30)


def test_eight_clients_during_100_swaps_and_rollbacks_never_fail_or_go_backwards(
    inproc: Daemon,
) -> None:
    """Eight clients predict continuously while 100 deploys (every tenth followed by a rollback)
    run: no request fails, and a client sees the version go down only across a rollback."""
    assert inproc.parts is not None
    models, retrainer = inproc.parts.models, inproc.parts.retrainer
    v1 = models.registry.get(1)
    artifact = (v1.path / "model.skops").read_bytes()
    manifest = {k: v for k, v in v1.manifest.items() if k not in ("version", "sha256", "size")}
    warm = np.array([[0.5, 0.5, 0.0, "red"]], dtype=object)
    failures: list[str] = []
    backwards: list[tuple[int, int]] = []
    latencies: dict[str, list[float]] = {"idle": [], "swaps": []}
    rollbacks = [0, 0]  # rollbacks started, finished
    phase = ["idle"]
    stop = threading.Event()

    def client() -> None:
        # A drop from the last answer is legitimate only if a rollback ran between the two:
        # one that started before this answer and had not finished before the last request.
        last, finished_before_last = 0, 0
        instance = {"instances": [make_rows(1)[0]["features"]]}
        with httpx.Client(base_url=f"http://127.0.0.1:{inproc.port}", timeout=30) as c:
            while not stop.is_set():
                now_phase, finished = phase[0], rollbacks[1]
                t = time.perf_counter()
                r = c.post("/v1/predict", json=instance)
                latencies[now_phase].append(time.perf_counter() - t)
                started = rollbacks[0]
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                v = r.json()["model_version"]
                if v < last and started == finished_before_last:
                    backwards.append((last, v))
                last, finished_before_last = v, finished

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    phase[0] = "swaps"
    for n in range(100):
        models.deploy(artifact, {**manifest, "reason": "swap-test"}, warm)
        if n % 10 == 9:
            rollbacks[0] += 1
            retrainer.rollback(reason="operator")
            rollbacks[1] += 1
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert not backwards
    assert len(latencies["swaps"]) > 100
    assert models.registry.aliases().champion == models.current.version  # type: ignore[union-attr]
    # Retention ran after every deploy, beside the traffic: the newest 10 are left (the last
    # rollback's target, v100, and the previous champion, v101, among them).
    assert models.registry.numbers() == list(range(92, 102))

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(len(xs) * 0.99)] * 1000

    print(
        f"\npredict p99 idle {p99(latencies['idle']):.1f} ms ({len(latencies['idle'])} requests),"
        f" during 100 swaps + 10 rollbacks {p99(latencies['swaps']):.1f} ms"
        f" ({len(latencies['swaps'])} requests)"
    )


def test_a_champion_moved_without_its_event_is_recorded_at_start(
    daemon: DaemonProcess, state_dir: Path
) -> None:
    """A crash between the alias move and the deploy event: the restart completes the history."""
    daemon.stop()
    _second_version(state_dir)
    daemon.start()
    with daemon.client() as c:
        deploys = c.get("/v1/events", params={"kind": "deploy"}).json()["events"]
        assert deploys[0]["version"] == 2
        assert deploys[0]["recovered"] is True
        assert c.get("/v1/status").json()["model"]["version"] == 2


def test_sd_notify_ready_after_the_model_loads_then_watchdog_and_stopping(
    daemon_config: Path, tmp_path: Path
) -> None:
    """With a real NOTIFY_SOCKET: READY=1 comes only once a model serves, WATCHDOG=1 follows
    at half of WATCHDOG_USEC, and SIGTERM says STOPPING=1."""
    import socket as so

    path = tmp_path / "notify.sock"
    sock = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    proc = DaemonProcess(
        daemon_config, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    )
    try:
        proc.start(wait_ready=False)
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=serving model v000001" in ready
        pings = 0
        deadline = time.monotonic() + 5
        while pings < 3 and time.monotonic() < deadline:
            pings += "WATCHDOG=1" in sock.recv(4096).decode()
        assert pings >= 3
        proc.signal(signal.SIGTERM)
        rest = []
        while not any("STOPPING=1" in m for m in rest):
            rest.append(sock.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        proc.stop()
        sock.close()


def test_a_second_sigint_forces_exit_without_waiting_for_open_requests(
    daemon: DaemonProcess,
) -> None:
    """One SIGINT drains (a request still sending its body is waited for); a second one exits
    at once."""
    import socket as so

    assert daemon.port is not None
    with so.create_connection(("127.0.0.1", daemon.port)) as s:
        s.sendall(
            b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n[{"
        )
        time.sleep(0.5)
        daemon.signal(signal.SIGINT)
        time.sleep(1.0)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the first drains"
        start = time.monotonic()
        daemon.signal(signal.SIGINT)
        daemon.wait(10)
        assert time.monotonic() - start < 5
    assert any("second interrupt" in str(e.get("message")) for e in daemon.lines)


def test_https_with_the_configured_certificate_and_no_plain_http(tmp_path: Path) -> None:
    """The daemon serves TLS from ``[server] tls_certfile``/``tls_keyfile``; a client that
    trusts only that certificate connects to 127.0.0.1 and is served; plain HTTP is not."""
    cert, _ = self_signed_cert(tmp_path)
    boot = write_csv(tmp_path / "boot.csv", make_rows(1000, seed=1))
    cfg = tmp_path / "driftd.toml"
    server = "port = 0\ntls_certfile = 'cert.pem'\ntls_keyfile = 'key.pem'\n"  # beside the file
    cfg.write_text(
        config_text(tmp_path / "state", bootstrap=str(boot), sections={"server": server})
    )
    trusted = ssl.create_default_context(cafile=str(cert))
    daemon = DaemonProcess(cfg, verify=trusted).start()
    try:
        assert daemon.url.startswith("https://127.0.0.1:")
        with daemon.client() as c:
            r = c.post("/v1/predict", json={"instances": [make_rows(1)[0]["features"]]})
            assert r.status_code == 200, r.text
            assert c.get("/readyz").json()["model_version"] == 1
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{daemon.url}/healthz", verify=ssl.create_default_context())
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{daemon.port}/healthz", timeout=5)
    finally:
        daemon.stop()


def test_eight_clients_predictions_are_committed_before_their_answers_in_one_order(
    inproc: Daemon,
) -> None:
    """Eight clients predict over HTTP at once; the worker commits the waiting requests
    together. Every answer is already readable from another connection when it arrives, each
    request's records have consecutive indices, the stored prediction is the answered one, the
    requests share transactions, and the monitor has seen every stored record by the next piece
    of work in order."""
    assert inproc.parts is not None
    store = inproc.parts.store
    rows = make_rows(16, seed=3)
    failures: list[str] = []

    def client(c_no: int) -> None:
        url = f"http://127.0.0.1:{inproc.port}"
        with httpx.Client(base_url=url, timeout=30) as c, store.reader() as db:
            for k in range(30):
                n = 1 + (c_no + k) % 2
                ids = [f"c{c_no}-{k}-{j}" for j in range(n)]
                batch = [r["features"] for r in rows[k % 8 : k % 8 + n]]
                r = c.post("/v1/predict", json={"instances": batch, "ids": ids})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                answer = r.json()
                marks = ",".join("?" * n)
                found = db.execute(
                    f"SELECT rid, idx, prediction FROM records WHERE rid IN ({marks})"  # noqa: S608
                    " ORDER BY idx",
                    ids,
                ).fetchall()
                if [f[0] for f in found] != answer["ids"]:
                    failures.append(f"{ids}: stored {found} when answered")
                elif [json.loads(f[2]) for f in found] != answer["predictions"]:
                    failures.append(f"{ids}: stored {found}, answered {answer}")
                elif [f[1] for f in found] != list(range(found[0][1], found[0][1] + n)):
                    failures.append(f"{ids}: indices {found} not consecutive")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    with store.reader() as db:
        idx = [i for (i,) in db.execute("SELECT idx FROM records WHERE source='predict'")]
        commits = db.execute(
            "SELECT count(DISTINCT received) FROM records WHERE source='predict'"
        ).fetchone()[0]
    assert len(idx) == 8 * 30 * 3 // 2
    assert sorted(idx) == list(range(min(idx), min(idx) + len(idx)))
    assert commits < 8 * 30  # several requests answered from one transaction
    engine = inproc.parts.engine
    status = engine.run(engine.status)  # in order: after the monitor's pass over them
    assert status["monitor"]["records"] == max(idx) + 1
