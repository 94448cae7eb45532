"""The retraining loop end to end, against a real daemon: drift, gate, deploy, rollback, guard,
failures and timeouts with alerts to a real local receiver."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftd.models.registry import Registry
from tests.conftest import DaemonProcess, config_text, make_rows, write_csv

TOKEN = "retrain-test-token-0123456789"
PASS_ALL = "min_holdout = 50\nmin_absolute_change = -1.0\nmax_latency_ms = 10000"
MODEL = 'estimator = "sklearn.linear_model.LogisticRegression"\nparams = { max_iter = 200 }'


class Hook:
    """A real HTTP receiver on loopback that records every JSON POST."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def kinds(self) -> list[str]:
        return [a["kind"] for a in self.received]

    def wait_for(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in self.received:
                if a["kind"] == kind:
                    return a
            time.sleep(0.1)
        raise AssertionError(f"no {kind} alert; got {self.kinds()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def start(
    tmp_path: Path, hook: Hook | None = None, env: dict[str, str] | None = None, **sections: str
) -> DaemonProcess:
    csv_path = write_csv(tmp_path / "boot.csv", make_rows(1000, seed=1))
    body = {
        "server": f'port = 0\ntoken = "{TOKEN}"\nmax_batch_size = 5000\nmax_body_bytes = 4194304',
        "retrain": (
            "cooldown_seconds = 60\nmin_rows_after_drift = 400\n"
            "window_rows = 400\nmin_new_labels = 100\nchallenger_labels = 0"
        ),
        "gate": "min_holdout = 50",
        "guard": "records = 0",
        **(
            {"alerts": f'webhook_url = "{hook.url}"\nretries = 1\nbackoff_seconds = 0.1'}
            if hook
            else {}
        ),
        **sections,
    }
    cfg = tmp_path / "d.toml"
    cfg.write_text(config_text(tmp_path / "state", bootstrap=str(csv_path), sections=body))
    return DaemonProcess(cfg, env=env).start()


def client(d: DaemonProcess) -> httpx.Client:
    return d.client(headers={"Authorization": f"Bearer {TOKEN}"})


def play(c: httpx.Client, rows: list[dict[str, Any]], prefix: str, batch: int = 250) -> None:
    """Predict each batch, then send its labels: the path real traffic takes."""
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        ids = [f"{prefix}-{i + k}" for k in range(len(part))]
        r = c.post("/v1/predict", json={"instances": [x["features"] for x in part], "ids": ids})
        assert r.status_code == 200, r.text
        r = c.post(
            "/v1/labels",
            json=[{"id": k, "label": x["label"]} for k, x in zip(ids, part, strict=True)],
        )
        assert r.status_code == 200, r.text


def events(c: httpx.Client, kind: str) -> list[dict[str, Any]]:
    """Events of a kind, newest first (retrain events of the bootstrap left out)."""
    found = c.get("/v1/events", params={"kind": kind, "limit": 1000}).json()["events"]
    return [e for e in found if "bootstrap" not in e.get("reasons", ())]


def wait_until(
    fn: Any, timeout: float = 60, what: str = "condition", c: httpx.Client | None = None
) -> Any:
    """Poll ``fn`` until it is truthy; on a timeout, the daemon's events (with ``c``) say why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    seen = ""
    if c is not None:
        found = c.get("/v1/events", params={"limit": 50}).json()["events"]
        keys = ("kind", "version", "reasons", "outcome", "reason", "skipped", "record_index")
        seen = "; events, newest first: " + json.dumps(
            [{k: e[k] for k in keys if k in e} for e in found]
        )
    raise AssertionError(f"timed out waiting for {what}{seen}")


def test_a_drift_produces_exactly_one_retrain_and_a_deploy(tmp_path: Path) -> None:
    d = start(tmp_path)
    try:
        with client(d) as c:
            play(c, make_rows(3000, seed=2), "a")
            assert c.get("/v1/status").json()["model"]["version"] == 1
            play(c, make_rows(1500, seed=3, flip=True), "b")
            done = wait_until(lambda: events(c, "retrain_finished"), what="a retrain")
            play(c, make_rows(500, seed=4, flip=True), "c")
            time.sleep(3)
            done = events(c, "retrain_finished")
            assert len(done) == 1, done
            assert done[0]["outcome"] == "deployed"
            assert done[0]["reasons"] == ["drift"]
            assert done[0]["window"]["since_drift_point"] is not None
            assert done[0]["verdict"]["passed"] is True
            scores = done[0]["scores"]
            assert scores["candidate"]["accuracy"] > scores["champion"]["accuracy"] + 0.5
            alarms = events(c, "drift_alarm")
            assert alarms and alarms[-1]["alarm"] == "concept_drift"
            status = c.get("/v1/status").json()
            assert status["model"]["version"] == 2
            metrics = c.get("/metrics").text
            # Two deployed runs: the bootstrap's first model and the drift retrain.
            assert 'driftd_retrain_runs_total{outcome="deployed"} 2.0' in metrics
            assert 'driftd_retrain_triggers_total{reason="drift"} 1.0' in metrics
    finally:
        d.stop()


def test_operator_retrain_rollback_and_predictions_flow_during_training(tmp_path: Path) -> None:
    # The fit takes 2 s once the flag exists, so that predictions are seen flowing during it
    # whatever the host's load (a plain fit can end within a dozen predictions).
    flag = tmp_path / "slow"
    d = start(
        tmp_path,
        env={"DRIFTD_TEST_SLOW_FLAG": str(flag), "DRIFTD_TEST_SLOW_SECONDS": "2"},
        model='factory = "tests.models:slow_when_flagged"',
    )
    failures: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def predict() -> None:
        with client(d) as c:
            while not stop.is_set():
                t = time.perf_counter()
                r = c.post("/v1/predict", json={"instances": [make_rows(1)[0]["features"]]})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failures.append(r.text)

    try:
        with client(d) as c:
            play(c, make_rows(1000, seed=5), "x")
            with d.client() as anon:
                assert anon.post("/v1/retrain").status_code == 401
            t = threading.Thread(target=predict)
            t.start()
            flag.touch()
            r = c.post("/v1/retrain")
            assert r.status_code == 202
            job = r.json()["job"]
            done = wait_until(lambda: events(c, "retrain_finished"), what="the operator retrain")
            stop.set()
            t.join()
            assert done[0]["job"] == job and done[0]["reasons"] == ["operator"]
            assert done[0]["outcome"] == "deployed", done[0]
            assert not failures, failures[:3]
            assert len(latencies) > 20
            assert c.get("/v1/status").json()["model"]["version"] == 2
            rb = c.post("/v1/rollback")
            assert rb.status_code == 200, rb.text
            assert rb.json() == {"version": 1, "previous": 2, "reason": "operator"}
            assert c.get("/v1/status").json()["model"]["version"] == 1
            assert events(c, "rollback")[0]["from"] == 2
            again = c.post("/v1/rollback", json={"version": 1})
            assert again.status_code == 409
            assert "already the champion" in again.json()["message"]
            assert c.post("/v1/rollback", json={"version": "two"}).status_code == 422
    finally:
        stop.set()
        d.stop()


def test_retention_deletes_old_versions_and_a_rollback_to_one_is_a_409(tmp_path: Path) -> None:
    """With ``keep_versions = 1`` and v2 pinned, three operator retrains leave v2 (pinned), v3
    (the previous champion) and v4 (the champion): ``/v1/models`` lists just those, v1 has its
    ``model_deleted`` event, and a rollback to it is refused with a 409 that says why."""
    d = start(
        tmp_path,
        model=f"{MODEL}\nkeep_versions = 1\npinned = [2]",
        gate=PASS_ALL,
    )
    try:
        with client(d) as c:
            play(c, make_rows(600, seed=5), "x")
            for n in range(3):
                assert c.post("/v1/retrain").status_code == 202
                wait_until(
                    lambda n=n: len(events(c, "retrain_finished")) > n, what="a retrain", c=c
                )
            assert [e["outcome"] for e in events(c, "retrain_finished")] == ["deployed"] * 3
            listed = c.get("/v1/models").json()
            assert [v["version"] for v in listed["versions"]] == [4, 3, 2]
            assert listed["aliases"] == {"champion": 4, "previous": 3}
            assert [(e["version"], e["reason"]) for e in events(c, "model_deleted")] == [
                (1, "retention")
            ]
            refused = c.post("/v1/rollback", json={"version": 1})
            assert refused.status_code == 409
            assert "version 1 was deleted from the registry" in refused.json()["message"]
            assert c.post("/v1/rollback", json={"version": 2}).status_code == 200
        assert sorted(p.name for p in (tmp_path / "state" / "models").iterdir()) == [
            "aliases.json",
            "v000002",
            "v000003",
            "v000004",
        ]
    finally:
        d.stop()


def test_the_post_deploy_guard_rolls_back_a_champion_that_fails_live(
    tmp_path: Path, hook: Hook
) -> None:
    """Drift to concept B deploys v2; traffic then returns to concept A, where v2 is wrong: the
    guard scores v1 in shadow on the records v2 served, finds it better, and rolls back to it."""
    d = start(tmp_path, hook, guard="records = 200\nmargin = 0.1")
    try:
        with client(d) as c:
            play(c, make_rows(2000, seed=6), "a")
            play(c, make_rows(1500, seed=7, flip=True), "b")
            wait_until(lambda: c.get("/v1/status").json()["model"]["version"] == 2, what="v2", c=c)
            play(c, make_rows(600, seed=8), "back")
            wait_until(lambda: events(c, "rollback"), what="a guard rollback", c=c)
            rb = events(c, "rollback")[0]
            assert rb["reason"] == "guard" and rb["from"] == 2 and rb["version"] == 1
            assert "the previous champion v1 scored" in rb["why"]
            assert events(c, "guard_failed")[0]["version"] == 2
            assert c.get("/v1/status").json()["model"]["version"] == 1
            alert = hook.wait_for("rolled_back")
            assert alert["severity"] == "critical"
            assert 'driftd_rollbacks_total{reason="guard"} 1.0' in c.get("/metrics").text
    finally:
        d.stop()


def test_a_bad_estimator_config_fails_the_run_and_alerts(tmp_path: Path, hook: Hook) -> None:
    csv_path = write_csv(tmp_path / "boot.csv", make_rows(1000, seed=1))
    cfg = tmp_path / "d.toml"
    cfg.write_text(
        config_text(
            tmp_path / "state",
            bootstrap=str(csv_path),
            sections={
                "model": 'estimator = "sklearn.linear_model.LogisticRegression"\n'
                "params = { C = -1.0 }",
                "alerts": f'webhook_url = "{hook.url}"',
            },
        )
    )
    d = DaemonProcess(cfg).start(wait_ready=False)
    try:
        alert = hook.wait_for("training_failed", timeout=60)
        assert "C" in alert["summary"]
        with d.client() as c:
            status = c.get("/v1/status").json()
            assert status["bootstrap"]["state"] == "failed"
            found = c.get("/v1/events", params={"kind": "retrain_finished"}).json()["events"]
            done = found[0]
            assert done["reasons"] == ["bootstrap"]
            assert done["outcome"] == "failed"
            assert "InvalidParameterError" in done["traceback"]
            assert (
                c.post("/v1/predict", json={"instances": [make_rows(1)[0]["features"]]}).status_code
                == 503
            )
            assert 'driftd_alerts_sent_total{kind="training_failed"} 1.0' in c.get("/metrics").text
    finally:
        d.stop()


def _training_children(pid: int) -> list[int]:
    """The daemon's spawned training processes (not multiprocessing's resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmd:
                out.append(int(child))
    return out


def test_a_training_past_its_timeout_is_killed_and_alerted(tmp_path: Path, hook: Hook) -> None:
    flag = tmp_path / "slow"
    d = start(
        tmp_path,
        hook,
        env={"DRIFTD_TEST_SLOW_FLAG": str(flag)},
        model='factory = "tests.models:slow_when_flagged"',
        training="timeout_seconds = 3",
    )
    try:
        with client(d) as c:
            play(c, make_rows(500, seed=9), "x")
            flag.touch()
            start_t = time.monotonic()
            assert c.post("/v1/retrain").status_code == 202
            assert d.proc is not None
            pid = d.proc.pid
            wait_until(lambda: _training_children(pid), timeout=10, what="the training child")
            done = wait_until(lambda: events(c, "retrain_finished"), timeout=30, what="the timeout")
            took = time.monotonic() - start_t
            assert done[0]["outcome"] == "timeout"
            assert "timed out after 3 s" in done[0]["error"]
            assert took < 15
            hook.wait_for("training_timeout")
            wait_until(lambda: not _training_children(pid), timeout=10, what="the child to be gone")
            assert c.get("/v1/status").json()["model"]["version"] == 1
            assert 'driftd_retrain_runs_total{outcome="timeout"} 1.0' in c.get("/metrics").text
    finally:
        d.stop()


def test_a_shutdown_during_a_fit_is_a_quiet_cancel_and_the_next_start_runs_the_job(
    tmp_path: Path, hook: Hook
) -> None:
    """SIGTERM while the training process fits (a 3 s fit, so that it would end inside the
    worker's stop grace): the daemon exits 0, nothing prints a traceback, the job is recorded
    as cancelled, not failed, nobody is paged, and the next start runs the job and deploys."""
    flag = tmp_path / "slow"
    d = start(
        tmp_path,
        hook,
        env={"DRIFTD_TEST_SLOW_FLAG": str(flag), "DRIFTD_TEST_SLOW_SECONDS": "3"},
        model='factory = "tests.models:slow_when_flagged"',
        gate=PASS_ALL,
    )
    try:
        with client(d) as c:
            play(c, make_rows(500, seed=9), "x")
            flag.touch()
            job = c.post("/v1/retrain").json()["job"]
            assert d.proc is not None
            pid = d.proc.pid
            wait_until(lambda: events(c, "retrain_started"), timeout=10, what="the job", c=c)
            wait_until(lambda: _training_children(pid), timeout=10, what="the training child")
            time.sleep(0.5)  # inside the fit's sleep
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
        printed = [str(line) for line in d.lines]
        assert not [line for line in printed if "Traceback" in line or "BrokenPipe" in line]
        assert any("cancelled" in line for line in printed)
        assert "training_failed" not in hook.kinds() and hook.received == []
        flag.unlink()
        d.start()
        with client(d) as c:
            done = wait_until(lambda: events(c, "retrain_finished"), what="the requeued job", c=c)
            assert [(e["job"], e["outcome"]) for e in done] == [(job, "deployed")]
            cancelled = events(c, "training_cancelled")
            assert [(e["job"], e["reasons"]) for e in cancelled] == [(job, ["operator"])]
            assert [e["job"] for e in events(c, "retrain_started")] == [job, job]
            assert not events(c, "retrain_interrupted")
            assert c.get("/v1/status").json()["model"]["version"] == 2
        assert hook.received == []
    finally:
        d.stop()


def test_kill_9_at_random_instants_of_retrains_leaves_a_champion_that_loads(tmp_path: Path) -> None:
    d = start(tmp_path, retrain="cooldown_seconds = 0\nmin_new_labels = 0")
    state = tmp_path / "state"
    rng = random.Random(4)
    try:
        with client(d) as c:
            play(c, make_rows(600, seed=10), "w")
        for round_ in range(4):
            with client(d) as c:
                assert c.post("/v1/retrain").status_code == 202
            time.sleep(rng.uniform(0.2, 2.5))
            d.signal(signal.SIGKILL)
            d.wait()
            reg = Registry(state / "models")
            champion = reg.aliases().champion
            assert champion in reg.numbers()
            d.start()
            with client(d) as c:
                status = c.get("/v1/status").json()
                assert status["model"]["version"] == champion, status["model"]
                assert status["model"]["fallback"] is None
                assert status["store"]["records"] == 600 + round_ * 0
            assert not [p for p in (state / "models").iterdir() if p.name.startswith(".tmp-")]
            for v in reg.numbers():
                reg.load(v)  # every published version is whole and verifies
    finally:
        d.stop()
    assert os.path.exists(state / "driftd.sqlite3")


def test_a_failed_bootstrap_is_retried_with_backoff(tmp_path: Path) -> None:
    """The first model's data is not there yet: the bootstrap fails, says when it retries, and
    serves once the file appears."""
    late = tmp_path / "late.csv"
    cfg = tmp_path / "d.toml"
    cfg.write_text(
        config_text(
            tmp_path / "state",
            bootstrap=None,
            sections={"bootstrap": f'data = "{late}"\nmin_rows = 200\nretry_seconds = 1'},
        )
    )
    d = DaemonProcess(cfg).start(wait_ready=False)
    try:
        with d.client() as c:
            status = wait_until(
                lambda: (s := c.get("/v1/status").json())["bootstrap"]["state"] == "failed" and s,
                what="the first failure",
            )
            assert "retrying in" in c.get("/readyz").json()["message"]
            assert status["bootstrap"]["failures"] >= 1
            write_csv(late, make_rows(1000, seed=1))
            d.wait_ready(60)
            assert c.get("/v1/status").json()["bootstrap"]["state"] == "done"
    finally:
        d.stop()
