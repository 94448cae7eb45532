"""Alerts: exact payloads on a real HTTP receiver, retries, de-duplication, a real Alertmanager.

Every receiver is a real ``ThreadingHTTPServer`` on ``127.0.0.1`` port 0, scripted to answer
with given statuses or to hold a request open; the Alertmanager test starts the Debian
``prometheus-alertmanager`` binary on loopback and lets it forward to such a receiver.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from driftd.alerts import RUNBOOK, Alerter, AlertsConfig, alertname
from driftd.metrics import ALERT_KINDS, Metrics
from tests.conftest import require_tool

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    # Join handler threads on server_close, so no request outlives its test.
    daemon_threads = False
    block_on_close = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out and hung up is what some tests do on purpose."""


class Receiver:
    """A local HTTP receiver that records every POST and answers from a script.

    ``statuses`` are answered in turn, then 200. With ``hold`` set, each request waits until
    :attr:`release` is set (or ``hold`` seconds pass) before it is answered.
    """

    def __init__(self, statuses: tuple[int, ...] = (), hold: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.hold = hold
        self.release = threading.Event()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(Request(self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.hold:
                    receiver.release.wait(receiver.hold)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Request]:
        eventually(lambda: len(self.requests) >= n, timeout)
        return list(self.requests)


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback traffic must not be sent to a proxy set in the environment."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), process=False)


@pytest.fixture
def make_alerter(metrics: Metrics) -> Iterator[Callable[..., Alerter]]:
    made: list[Alerter] = []

    def make(clock: Callable[[], float] | None = None, **config: Any) -> Alerter:
        config = {"backoff_seconds": 0.01, **config}
        alerter = Alerter(
            AlertsConfig(**config), metrics, instance="host-1:8765", clock=clock or Clock()
        )
        made.append(alerter)
        return alerter

    yield make
    for alerter in made:
        alerter.close()


def sent(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("driftd_alerts_sent_total", {"kind": kind})


def failed(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("driftd_alerts_failed_total")


def timed_send(alerter: Alerter, *args: Any, **kwargs: Any) -> tuple[bool, float]:
    start = time.perf_counter()
    result = alerter.send(*args, **kwargs)
    return result, time.perf_counter() - start


# --- payloads -------------------------------------------------------------------------------


def test_the_webhook_receives_the_alert_json_exactly(
    receiver: Receiver, make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    alerter = make_alerter(webhook_url=receiver.url + "/hook", labels={"team": "ml"})
    assert alerter.send(
        "candidate_rejected",
        "candidate v7 rejected: accuracy 0.71 < 0.80",
        labels={"version": "7"},
        details={"metric": "accuracy", "candidate": 0.71, "threshold": 0.8, "holdout": 400},
    )
    alerter.close()

    (request,) = receiver.requests
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {
        "kind": "candidate_rejected",
        "summary": "candidate v7 rejected: accuracy 0.71 < 0.80",
        "severity": "warning",
        "labels": {"team": "ml", "version": "7"},
        "details": {"metric": "accuracy", "candidate": 0.71, "threshold": 0.8, "holdout": 400},
        "time": "2023-11-14T22:13:20.000Z",
        "instance": "host-1:8765",
    }
    assert sent(metrics, "candidate_rejected") == 1
    assert failed(metrics) == 0
    assert alerter.pending() == 0


def test_the_alertmanager_payload_has_the_v2_postable_alerts_shape(
    receiver: Receiver, make_alerter: Callable[..., Alerter]
) -> None:
    alerter = make_alerter(
        alertmanager_url=receiver.url + "/",
        labels={"team": "ml", "service": "not-overridable"},
        resolve_after_seconds=3600,
    )
    alerter.send(
        "consecutive_rejections",
        "3 candidates rejected in a row",
        severity="critical",
        labels={"model-name": "churn", "empty": ""},
        details={"rejections": 3, "last": {"version": 9}},
    )
    alerter.close()

    (request,) = receiver.requests
    assert request.path == "/api/v2/alerts"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json()
    assert isinstance(body, list)
    assert len(body) == 1
    (alert,) = body
    assert set(alert) <= {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert alert["labels"] == {
        "alertname": "DriftdConsecutiveRejections",
        "severity": "critical",
        "instance": "host-1:8765",
        "service": "driftd",
        "team": "ml",
        "model_name": "churn",
    }
    assert all(LABEL_NAME.match(name) for name in alert["labels"])
    assert alert["annotations"] == {
        "summary": "3 candidates rejected in a row",
        "description": 'rejections: 3\nlast: {"version": 9}',
        "runbook": RUNBOOK["consecutive_rejections"],
    }
    assert alert["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert alert["endsAt"] == "2023-11-14T23:13:20.000Z"  # resolves unless re-sent


def test_every_kind_has_a_camel_case_alertname_and_a_runbook_hint() -> None:
    assert [alertname(k) for k in ALERT_KINDS] == [
        "DriftdCandidateRejected",
        "DriftdTrainingFailed",
        "DriftdTrainingTimeout",
        "DriftdModelLoadFailed",
        "DriftdRolledBack",
        "DriftdConsecutiveRejections",
    ]
    assert set(RUNBOOK) == set(ALERT_KINDS)


def test_both_receivers_get_the_alert_and_it_is_counted_once(
    receiver: Receiver, make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    alerter = make_alerter(webhook_url=receiver.url + "/hook", alertmanager_url=receiver.url)
    alerter.send("rolled_back", "rolled back to v3", labels={"version": "3"})
    alerter.close()
    assert sorted(r.path for r in receiver.requests) == ["/api/v2/alerts", "/hook"]
    assert sent(metrics, "rolled_back") == 1
    assert failed(metrics) == 0


def test_unserialisable_details_and_bad_input_never_raise(
    receiver: Receiver, make_alerter: Callable[..., Alerter]
) -> None:
    class Exploding(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("boom")

    alerter = make_alerter(webhook_url=receiver.url)
    assert alerter.send(
        "training_failed",
        "fit raised",
        details={"score": math.nan, "path": Path("/x"), "obj": object, 1: (1, 2)},
    )
    assert not alerter.send("Not A Kind", "refused")
    assert not alerter.send("model_load_failed", "unreadable", details=Exploding(a=1))
    alerter.close()
    (request,) = receiver.requests
    details = request.json()["details"]
    assert details["score"] == "nan"
    assert details["path"] == "/x"
    assert details["1"] == [1, 2]


# --- failure and retries --------------------------------------------------------------------


def test_a_down_receiver_never_blocks_or_raises_and_is_retried_then_counted(
    make_alerter: Callable[..., Alerter], metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="driftd.alerts")
    alerter = make_alerter(webhook_url=f"http://127.0.0.1:{free_port()}/hook", retries=2)
    queued, took = timed_send(alerter, "training_timeout", "training exceeded 600 s")
    assert queued
    assert took < 0.05
    alerter.close()

    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert "attempt 1 of 3" in retries[0]
    assert "attempt 2 of 3" in retries[1]
    assert any(r.levelno == logging.ERROR and "every retry" in r.message for r in caplog.records)
    assert failed(metrics) == 1
    assert sent(metrics, "training_timeout") == 0
    assert alerter.pending() == 0
    assert not any(t.name == "driftd-alerts" for t in threading.enumerate())


def test_a_receiver_failing_twice_with_500_gets_the_alert_once_on_the_third_try(
    make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    receiver = Receiver(statuses=(500, 500))
    try:
        alerter = make_alerter(webhook_url=receiver.url, retries=3)
        alerter.send("candidate_rejected", "rejected")
        alerter.close()
        assert len(receiver.requests) == 3
        assert len({r.body for r in receiver.requests}) == 1  # the same alert each time
    finally:
        receiver.stop()
    assert sent(metrics, "candidate_rejected") == 1
    assert failed(metrics) == 0


def test_a_4xx_answer_is_not_retried(
    make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    receiver = Receiver(statuses=(400,))
    try:
        alerter = make_alerter(alertmanager_url=receiver.url, retries=3)
        alerter.send("candidate_rejected", "rejected")
        alerter.close()
        assert len(receiver.requests) == 1
    finally:
        receiver.stop()
    assert failed(metrics) == 1
    assert sent(metrics, "candidate_rejected") == 0


def test_a_slow_receiver_is_counted_failed_and_never_blocks_the_caller(
    make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    receiver = Receiver(hold=3.0)
    try:
        alerter = make_alerter(webhook_url=receiver.url, timeout_seconds=0.2, retries=1)
        queued, took = timed_send(alerter, "model_load_failed", "v4 refused")
        assert queued
        assert took < 0.05
        receiver.wait_for(1)
        queued, took = timed_send(alerter, "rolled_back", "back to v3")  # while one hangs
        assert queued
        assert took < 0.05
        assert alerter.pending() == 2
        eventually(lambda: failed(metrics) == 2, timeout=5)
        assert len(receiver.requests) == 4  # two alerts, two attempts each
        assert alerter.pending() == 0
    finally:
        receiver.stop()
    assert sent(metrics, "model_load_failed") == 0


def test_a_full_queue_drops_the_oldest_waiting_alert_and_counts_it(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver(hold=5.0)
    alerter = Alerter(
        AlertsConfig(webhook_url=receiver.url, timeout_seconds=10, dedupe_seconds=0),
        metrics,
        max_queue=2,
    )
    try:
        alerter.send("training_failed", "first")
        receiver.wait_for(1)  # in flight, holding the sender
        for summary in ("second", "third", "fourth"):
            assert alerter.send("training_failed", summary)
        assert alerter.pending() == 3
        assert failed(metrics) == 1
        assert any("queue full" in r.getMessage() for r in caplog.records)
        receiver.release.set()
        alerter.close()
        assert [r.json()["summary"] for r in receiver.requests] == ["first", "third", "fourth"]
        assert sent(metrics, "training_failed") == 3
    finally:
        alerter.close()
        receiver.stop()


def test_close_gives_up_at_its_deadline_and_counts_what_was_left(metrics: Metrics) -> None:
    receiver = Receiver(hold=5.0)
    alerter = Alerter(
        AlertsConfig(webhook_url=receiver.url, timeout_seconds=0.5, retries=5), metrics
    )
    try:
        alerter.send("training_failed", "one")
        alerter.send("training_timeout", "two")
        receiver.wait_for(1)
        start = time.monotonic()
        alerter.close(timeout=0.2)
        assert time.monotonic() - start < 0.2 + 0.5 + 0.5
        assert alerter.pending() == 0
        assert failed(metrics) == 2  # the one on the wire and the one still queued
        assert not alerter.send("training_failed", "after close")
    finally:
        receiver.stop()


# --- de-duplication and no receiver ---------------------------------------------------------


def test_the_same_kind_and_key_is_sent_once_per_window_and_again_after_it(
    receiver: Receiver, make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    clock = Clock()
    alerter = make_alerter(clock, webhook_url=receiver.url, dedupe_seconds=600)
    assert alerter.send("candidate_rejected", "v5 rejected", key="v5")
    clock.now += 599
    assert not alerter.send("candidate_rejected", "v5 rejected again", key="v5")
    assert alerter.send("candidate_rejected", "v6 rejected", key="v6")  # another key
    assert alerter.send("training_failed", "v5 failed", key="v5")  # another kind
    clock.now += 1
    assert alerter.send("candidate_rejected", "v5 still rejected", key="v5")
    alerter.close()
    assert [r.json()["summary"] for r in receiver.requests] == [
        "v5 rejected",
        "v6 rejected",
        "v5 failed",
        "v5 still rejected",
    ]
    assert sent(metrics, "candidate_rejected") == 3


def test_the_key_defaults_to_the_kind(
    receiver: Receiver, make_alerter: Callable[..., Alerter]
) -> None:
    alerter = make_alerter(webhook_url=receiver.url)
    assert alerter.send("rolled_back", "to v2")
    assert not alerter.send("rolled_back", "to v1")
    assert alerter.send("rolled_back", "to v1", key="v1")


def test_an_alert_that_reached_no_receiver_does_not_suppress_the_next(
    make_alerter: Callable[..., Alerter], metrics: Metrics
) -> None:
    alerter = make_alerter(webhook_url=f"http://127.0.0.1:{free_port()}", retries=0)
    assert alerter.send("training_failed", "first")
    eventually(lambda: alerter.pending() == 0)
    assert alerter.send("training_failed", "second")
    alerter.close()
    assert failed(metrics) == 2


def test_without_a_receiver_send_only_logs_and_starts_no_thread(
    make_alerter: Callable[..., Alerter], caplog: pytest.LogCaptureFixture
) -> None:
    before = threading.active_count()
    alerter = make_alerter()
    assert not alerter.enabled
    assert not alerter.send("training_failed", "child exited with 1")
    assert threading.active_count() == before
    (record,) = [r for r in caplog.records if r.name == "driftd.alerts"]
    assert record.levelno == logging.WARNING
    assert "child exited with 1" in record.getMessage()
    assert alerter.pending() == 0


@dataclass(frozen=True)
class Alertmanager:
    url: str
    hook: Receiver


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """``prometheus-alertmanager`` on loopback, routing everything to a local webhook."""
    binary = require_tool("prometheus-alertmanager")
    hook = Receiver()
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook.url}/forwarded
        send_resolved: false
"""
    )
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=2) as client:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()}"
                    )
                try:
                    if client.get("/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("alertmanager did not become ready in 30 s")
                time.sleep(0.1)
        yield Alertmanager(url, hook)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        hook.stop()


@pytest.mark.external
def test_a_real_alertmanager_accepts_the_alert_and_forwards_it(
    alertmanager: Alertmanager, metrics: Metrics
) -> None:
    alerter = Alerter(
        AlertsConfig(alertmanager_url=alertmanager.url, labels={"team": "ml"}),
        metrics,
        instance="host-1:8765",
        generator_url="http://127.0.0.1:8765/v1/status",
    )
    try:
        assert alerter.send(
            "candidate_rejected",
            "candidate v7 rejected: accuracy 0.71 < 0.80",
            labels={"version": "7"},
            details={"metric": "accuracy", "candidate": 0.71, "threshold": 0.8},
        )
    finally:
        alerter.close()
    assert sent(metrics, "candidate_rejected") == 1
    assert failed(metrics) == 0

    expected = {
        "alertname": "DriftdCandidateRejected",
        "severity": "warning",
        "instance": "host-1:8765",
        "service": "driftd",
        "team": "ml",
        "version": "7",
    }
    with httpx.Client(base_url=alertmanager.url, timeout=5) as client:
        response = client.get(
            "/api/v2/alerts", params={"filter": 'alertname="DriftdCandidateRejected"'}
        )
    assert response.status_code == 200
    (alert,) = response.json()
    assert alert["labels"] == expected
    assert alert["annotations"]["summary"] == "candidate v7 rejected: accuracy 0.71 < 0.80"
    assert (
        alert["annotations"]["description"] == "metric: accuracy\ncandidate: 0.71\nthreshold: 0.8"
    )
    assert alert["generatorURL"] == "http://127.0.0.1:8765/v1/status"
    assert alert["status"]["state"] == "active"

    (forwarded,) = alertmanager.hook.wait_for(1, timeout=15)
    assert forwarded.path == "/forwarded"
    notification = forwarded.json()
    assert notification["receiver"] == "hook"
    assert notification["status"] == "firing"
    assert [a["labels"] for a in notification["alerts"]] == [expected]
