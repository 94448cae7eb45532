"""Daemons on the shared PostgreSQL store and registry: a real daemon subprocess against a
private PostgreSQL (tests/services.py), with nothing of its data in its state directory."""

from __future__ import annotations

import datetime
import json
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftd.ingest.schema import Feature, Schema
from driftd.store import PostgresStore
from tests.conftest import DaemonProcess, config_text, make_rows, write_csv
from tests.services import psycopg_module

psycopg = psycopg_module()

pytestmark = pytest.mark.external


def pg_config(tmp_path: Path, url: str, namespace: str, name: str = "a") -> Path:
    state = tmp_path / f"state-{name}"
    csv = write_csv(tmp_path / "bootstrap.csv", make_rows(1000, seed=1))
    text = config_text(
        state,
        bootstrap=str(csv),
        sections={"store": f'url = "{url}"\nnamespace = "{namespace}"'},
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def stored(url: str, namespace: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        db.execute(f"SET search_path TO {namespace}")
        return db.execute(sql).fetchall()


def test_a_daemon_keeps_records_models_and_events_in_postgresql(
    tmp_path: Path, postgres: Any, pg_namespace: str
) -> None:
    url = postgres.url()
    daemon = DaemonProcess(pg_config(tmp_path, url, pg_namespace)).start()
    try:
        with daemon.client() as c:
            rows = make_rows(300, seed=2)
            body = [{"id": f"r{i}", **r} for i, r in enumerate(rows)]
            assert c.post("/v1/records", json=body).status_code == 200
            assert len(c.post("/v1/records", json=body).json()["duplicates"]) == 300
            answer = c.post("/v1/predict", json={"instances": [rows[0]["features"]], "ids": ["p"]})
            assert answer.status_code == 200, answer.text
            labels = c.post("/v1/labels", json=[{"id": "p", "label": 1}])
            assert labels.json()["joined"] == 1
            status = c.get("/v1/status").json()
        assert status["model"]["version"] == 1
        assert status["store"]["records"] == 301
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    # Everything the daemon wrote is in the database, none of it in its state directory.
    assert stored(url, pg_namespace, "SELECT count(*) FROM records") == [(301,)]
    assert stored(url, pg_namespace, "SELECT number FROM versions") == [(1,)]
    assert stored(url, pg_namespace, "SELECT champion FROM aliases") == [(1,)]
    kinds = {k for (k,) in stored(url, pg_namespace, "SELECT kind FROM events")}
    assert {"retrain_finished", "deploy"} <= kinds
    state = tmp_path / "state-a"
    assert not (state / "models").exists() and not list(state.glob("*.sqlite3*"))

    # A second daemon on another host (another state directory) serves the same champion.
    other = DaemonProcess(pg_config(tmp_path, url, pg_namespace, name="b")).start()
    try:
        with other.client() as c:
            assert c.get("/v1/status").json()["model"]["version"] == 1
            assert (
                c.post("/v1/predict", json={"instances": [rows[1]["features"]]}).status_code == 200
            )
    finally:
        other.stop()


def test_a_database_that_goes_away_is_a_503_and_the_daemon_recovers(
    tmp_path: Path, postgres: Any, pg_namespace: str
) -> None:
    daemon = DaemonProcess(pg_config(tmp_path, postgres.url(), pg_namespace)).start()
    rows = make_rows(10, seed=3)
    try:
        with daemon.client() as c:
            postgres.stop()
            try:
                refused = c.post("/v1/records", json=rows)
                assert refused.status_code == 503
                assert refused.json()["error"] == "store_unavailable"
                assert c.get("/healthz").status_code == 200  # the process lives on
            finally:
                postgres.restart()
            again = c.post("/v1/records", json=rows)
            assert again.status_code == 200, again.text
            assert again.json()["accepted"] == 10
            metrics = c.get("/metrics").text
        assert 'driftd_records_rejected_total{reason="store_unavailable"} 1.0' in metrics
        # Alone on its namespace, it lost its lock with the database and leads again.
        wait_for(lambda: role(daemon) == "leader", 10, "the daemon leads again", daemon)
    finally:
        daemon.stop()


# -- several daemons of one model: a leader and standbys --------------------------------------
def cluster_config(tmp_path: Path, url: str, namespace: str, name: str) -> Path:
    """A daemon of the shared model that checkpoints its monitor every second."""
    state = tmp_path / f"state-{name}"
    csv = write_csv(tmp_path / "bootstrap.csv", make_rows(1000, seed=1))
    text = config_text(
        state,
        bootstrap=str(csv),
        sections={
            "store": f'url = "{url}"\nnamespace = "{namespace}"',
            "monitor": "checkpoint_interval_seconds = 1.0",
        },
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def role(daemon: DaemonProcess) -> str | None:
    try:
        with daemon.client() as c:
            return str(c.get("/v1/status").json()["cluster"]["role"])
    except httpx.HTTPError:
        return None


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *daemons: DaemonProcess,
) -> float:
    """Seconds until ``predicate`` holds; fails after ``timeout`` with the end of the
    ``daemons``' logs."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            logs = "\n".join(d.log_text()[-6000:] for d in daemons)
            pytest.fail(f"{what}: not within {timeout} s\n{logs}")
        time.sleep(0.05)
    return time.monotonic() - start


class Producer:
    """Sends records (each with its id and the prediction the producer's own model made) and,
    a batch later, their labels, to whichever daemon answers; remembers what was
    acknowledged (a 200): the records and labels that must be stored, exactly once."""

    def __init__(self, daemons: list[DaemonProcess], seed: int, prefix: str = "b") -> None:
        self.daemons = daemons
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.acked: list[str] = []
        self.labelled: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _send(self, path: str, body: list[dict[str, Any]]) -> bool:
        for daemon in self.rng.sample(self.daemons, len(self.daemons)):
            if daemon.port is None:
                continue
            try:
                with httpx.Client(base_url=daemon.url, timeout=5) as c:
                    if c.post(path, json=body).status_code == 200:
                        return True
            except httpx.HTTPError:
                continue
        return False

    def _run(self) -> None:
        k, waiting = 0, []
        while not self._stop.is_set():
            rows = make_rows(20, seed=self.rng.randrange(10**6), flip=True)
            # The producer's model is right 90% or 50% of the time, in turns of 40 batches:
            # drifts of the error stream, with alarms, retrains and their events.
            right = 0.9 if (k // 40) % 2 == 0 else 0.5
            batch = [
                {
                    "id": f"{self.prefix}{k}-{i}",
                    "features": r["features"],
                    "prediction": r["label"] if self.rng.random() < right else 1 - r["label"],
                }
                for i, r in enumerate(rows)
            ]
            labels = [
                {"id": f"{self.prefix}{k}-{i}", "label": r["label"]} for i, r in enumerate(rows)
            ]
            k += 1
            if self._send("/v1/records", batch):
                self.acked += [r["id"] for r in batch]
                waiting.append(labels)
            if len(waiting) > 1 and self._send("/v1/labels", waiting[0]):
                self.labelled += [lb["id"] for lb in waiting.pop(0)]
            time.sleep(0.01)


def check_nothing_lost_or_doubled(url: str, namespace: str, *producers: Producer) -> int:
    """Every acknowledged record is stored once with every acknowledged label, and the
    leader's monitor saw each record and outcome, its events once, across every takeover.
    Returns the number of drift events."""
    rows = stored(url, namespace, "SELECT rid, label IS NOT NULL FROM records")
    rids = [r for r, _ in rows]
    assert len(rids) == len(set(rids))  # never doubled
    missing = {r for p in producers for r in p.acked} - set(rids)
    assert not missing, f"{len(missing)} acknowledged records lost"
    labelled = {r for r, has in rows if has}
    lost = {r for p in producers for r in p.labelled} - labelled
    assert not lost, f"{len(lost)} acknowledged labels lost"
    # The leader's monitor followed every record and outcome, and recorded each event once: a
    # takeover replays quietly up to where the last leader got, loudly after.
    ((last_idx, last_join),) = stored(url, namespace, "SELECT max(idx), max(join_seq) FROM records")

    def followed() -> Any:
        rows = stored(url, namespace, "SELECT value FROM state WHERE key = 'monitor_followed'")
        return json.loads(rows[0][0]) if rows else None

    want = {"index": last_idx, "join": last_join}
    wait_for(lambda: followed() == want, 10, "the leader follows every record and outcome")
    events = stored(
        url, namespace, "SELECT kind, record_idx, data FROM events WHERE kind LIKE 'drift_%'"
    )
    assert len(events) == len(set(events)), "an event was recorded twice"
    return len(events)


def pickup_seconds(url: str, namespace: str, standby: DaemonProcess, champion: int) -> float:
    """Seconds from the champion alias's move (the time its transaction records, with the
    deploy event) to the standby's log line saying it serves that version: the swap is done
    when that line is written. Both clocks are this host's."""
    ((moved,),) = stored(url, namespace, "SELECT changed FROM aliases")
    line = f"serving v{champion:06d}, the champion another daemon deployed"
    (served,) = [e["time"] for e in standby.lines if e.get("message") == line]
    at = datetime.datetime.strptime(served, "%Y-%m-%dT%H:%M:%S.%fZ")
    return at.replace(tzinfo=datetime.UTC).timestamp() - float(moved)


def kill_the_leader_and_time_the_takeover(leader: DaemonProcess, standby: DaemonProcess) -> float:
    leader.signal(signal.SIGKILL)
    leader.wait()
    leader.port = None
    return wait_for(lambda: role(standby) == "leader", 10.0, "a standby takes over", standby)


def test_a_standby_serves_the_champion_and_takes_over_when_the_leader_is_killed(
    tmp_path: Path, postgres: Any, pg_namespace: str
) -> None:
    url = postgres.url()
    a = DaemonProcess(cluster_config(tmp_path, url, pg_namespace, "a")).start()
    b = DaemonProcess(cluster_config(tmp_path, url, pg_namespace, "b")).start()
    producer = Producer([a, b], seed=4)
    standby_only = Producer([b], seed=5, prefix="s")  # writes beside the leader's follow
    try:
        assert (role(a), role(b)) == ("leader", "standby")
        with b.client() as c:
            assert c.post("/v1/retrain").json()["error"] == "not_leader"
            first = make_rows(1)[0]["features"]
            assert c.post("/v1/predict", json={"instances": [first]}).json()["model_version"] == 1
        # The concept flips: the leader retrains on what both daemons stored, and its new
        # champion serves on the standby within a second.
        producer.start()
        standby_only.start()
        wait_for(lambda: len(producer.labelled) >= 1200, 30, "labels acknowledged")
        # The leader follows what the standby stores without holding up its own requests.
        with a.client() as c:
            for _ in range(20):
                t = time.monotonic()
                assert c.post("/v1/predict", json={"instances": [first]}).status_code == 200
                assert time.monotonic() - t < 1.0
        with a.client() as c:
            assert c.post("/v1/retrain").status_code == 202
        wait_for(lambda: status(a)["model"]["version"] >= 2, 60, "the leader deploys")
        champion = status(a)["model"]["version"]
        wait_for(lambda: status(b)["model"]["version"] == champion, 5, "the standby serves it")
        pickup = pickup_seconds(url, pg_namespace, b, champion)
        print(f"champion pickup: {pickup:.3f} s")
        assert pickup < 1.0, f"the standby served v{champion} {pickup:.3f} s after the alias moved"
        time.sleep(1.2)  # a checkpoint of the leader's monitor
        took = kill_the_leader_and_time_the_takeover(a, b)
        before = len(producer.acked)
        wait_for(lambda: len(producer.acked) >= before + 400, 30, "records acknowledged after")
        producer.stop()
        standby_only.stop()
        # The new leader restored the shared checkpoint and follows every stored record.
        last = status(b)["store"]["last_index"]
        wait_for(lambda: status(b)["monitor"]["records"] >= last, 10, "the monitor catches up")
        assert any("restored from its checkpoint" in str(e.get("message")) for e in b.lines)
        with b.client() as c:
            assert c.post("/v1/retrain").status_code == 202
        standby_only.stop()
        check_nothing_lost_or_doubled(url, pg_namespace, producer, standby_only)
    finally:
        producer.stop()
        standby_only.stop()
        a.stop()
        b.stop()
    assert took < 10.0


@pytest.mark.slow
def test_twenty_seeded_kills_of_the_leader_lose_and_double_nothing(
    tmp_path: Path, postgres: Any, pg_namespace: str
) -> None:
    """The crash matrix of failover: 20 times, SIGKILL whichever daemon leads at a seeded
    moment while a producer writes to both; a standby takes over within 10 s, and at the end
    every acknowledged record and label is stored once and every outcome monitored once."""
    url = postgres.url()
    daemons = [
        DaemonProcess(cluster_config(tmp_path, url, pg_namespace, name)).start()
        for name in ("a", "b")
    ]
    producer = Producer(daemons, seed=20).start()
    rng = random.Random(2026)
    takeovers = []
    try:
        for _ in range(20):
            time.sleep(rng.uniform(0.2, 2.5))
            leader, standby = sorted(daemons, key=lambda d: role(d) != "leader")
            assert role(leader) == "leader" and role(standby) == "standby"
            takeovers.append(kill_the_leader_and_time_the_takeover(leader, standby))
            leader.start()  # back, as a standby
        wait_for(lambda: len(producer.labelled) > 0, 10, "labels acknowledged")
        producer.stop()
        leader = next(d for d in daemons if role(d) == "leader")
        last = status(leader)["store"]["last_index"]
        wait_for(lambda: status(leader)["monitor"]["records"] >= last, 10, "caught up")
        assert check_nothing_lost_or_doubled(url, pg_namespace, producer) > 0
    finally:
        producer.stop()
        for d in daemons:
            d.stop()
    # For docs/reliability.md: how long the standby took, SIGKILL to leading (polled at 0.05 s).
    print(
        f"takeovers: median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s,"
        f" over {len(takeovers)}"
    )
    assert max(takeovers) < 10.0, takeovers


def status(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.client() as c:
        return dict(c.get("/v1/status").json())


def test_a_leader_cut_off_from_its_lock_stands_by_and_the_standby_leads(
    tmp_path: Path, postgres: Any, pg_namespace: str
) -> None:
    """The database ends the leader's lock session (as after a partition): the leader cannot
    know whether another leads, so it stands by at once, and one of the two takes the lock."""
    url = postgres.url()
    a = DaemonProcess(cluster_config(tmp_path, url, pg_namespace, "a")).start()
    b = DaemonProcess(cluster_config(tmp_path, url, pg_namespace, "b")).start()
    try:
        assert (role(a), role(b)) == ("leader", "standby")
        lock = PostgresStore(url, Schema((Feature("x"),)), namespace=pg_namespace).leadership()
        ((holder, _, _),) = stored(url, pg_namespace, lock.holder_query())
        stored(url, pg_namespace, f"SELECT pg_terminate_backend({int(holder)})")
        wait_for(
            lambda: any("lost the leader lock" in str(e.get("message")) for e in a.lines),
            10,
            "the leader notices",
        )
        # Whichever takes the free lock first leads (the other is back in the race too).
        wait_for(lambda: {role(a), role(b)} == {"leader", "standby"}, 10, "one leader again")
        standby = a if role(a) == "standby" else b
        with standby.client() as c:  # serving all along
            first = make_rows(1)[0]["features"]
            assert c.post("/v1/predict", json={"instances": [first]}).status_code == 200
            assert c.post("/v1/retrain").json()["error"] == "not_leader"
    finally:
        a.stop()
        b.stop()
