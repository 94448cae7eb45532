"""The NATS JetStream source against a real ``nats-server -js`` and a real daemon.

Each server is a private instance on a free loopback port with its store in a temporary
directory; without ``nats-server`` (or nats-py) the tests skip, and under CI
(``DRIFTD_REQUIRE_EXTERNAL=1``) they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DaemonProcess, config_text, make_rows, write_csv
from tests.services import NatsServer, nats_module

pytestmark = pytest.mark.external

SUBJECT = "driftd.{model}.{kind}"


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def publish(url: str, subject: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    """Publish one message to JetStream (the stream must exist); its stream sequence."""
    return publish_all(url, subject, [body], headers)[0]


def publish_all(
    url: str, subject: str, bodies: list[bytes], headers: dict[str, str] | None = None
) -> list[int]:
    """Publish messages in order over one connection; their stream sequences."""

    async def go() -> list[int]:
        nc = await nats_module().connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            js = nc.jetstream()
            acks = [await js.publish(subject, b, headers=headers, timeout=5) for b in bodies]
            return [int(ack.seq) for ack in acks]
        finally:
            await nc.close()

    return asyncio.run(go())


def consumer_info(url: str, stream: str, consumer: str) -> Any:
    async def go() -> Any:
        nc = await nats_module().connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            return await nc.jetstream().consumer_info(stream, consumer)
        finally:
            await nc.close()

    return asyncio.run(go())


def records(prefix: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rows = make_rows(n, seed=seed)
    return [
        {"id": f"{prefix}-{i}", "features": r["features"], "prediction": r["label"]}
        for i, r in enumerate(rows)
    ]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exported")


def handled(client: httpx.Client, kind: str, outcome: str) -> float:
    """Messages of ``kind`` the source acked, termed or naked."""
    return metric(client, "driftd_source_messages_total", source="nats", kind=kind, outcome=outcome)


def source_state(client: httpx.Client) -> dict[str, Any]:
    state: dict[str, Any] = client.get("/v1/status").json()["sources"]["nats"]
    return state


def stored(state: Path, source: str = "nats") -> int:
    with sqlite3.connect(state / "driftd.sqlite3") as db:
        row = db.execute("SELECT count(*) FROM records WHERE source = ?", (source,)).fetchone()
        return int(row[0])


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Linux ``/proc``), children first-found order."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for child in map(int, (task / "children").read_text().split()):
                    found += [child, *descendants(child)]
    return found


def kill_9(proc: DaemonProcess) -> None:
    """SIGKILL the daemon and what it started (the training worker), as systemd does to a
    service's control group once its main process died; then reap it."""
    assert proc.proc is not None
    under = descendants(proc.proc.pid)
    proc.signal(signal.SIGKILL)
    for pid in under:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def shared_state(proc: DaemonProcess) -> Path:
    """The state directory of the module's shared daemon."""
    return proc.config.parent / "state-m1"


def daemon_for(
    tmp: Path, server: NatsServer, model: str, *, bootstrap: Path | None, **source: Any
) -> DaemonProcess:
    """A daemon consuming ``model``'s subjects; without ``bootstrap`` it trains no model (its
    records carry no labels), which keeps the CPU for the traffic."""
    state = tmp / f"state-{model}"
    state.mkdir(exist_ok=True)
    settings = {
        "kind": "nats",
        "url": server.url,
        "model": model,
        "ack_wait_seconds": 2.0,
        "nak_delay_seconds": 0.2,
        "lag_interval_seconds": 0.2,
        "backoff_min_seconds": 0.1,
        "backoff_max_seconds": 0.5,
        **source,
    }
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    path = tmp / f"driftd-{model}.toml"
    first = str(bootstrap) if bootstrap is not None else None
    path.write_text(config_text(state, bootstrap=first, sections={"source": text}))
    return DaemonProcess(path)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jetstream")


@pytest.fixture(scope="module")
def bootstrap(module_tmp: Path) -> Path:
    return write_csv(module_tmp / "bootstrap.csv", make_rows(1000, seed=1))


@pytest.fixture(scope="module")
def server(module_tmp: Path) -> Iterator[NatsServer]:
    directory = module_tmp / "nats"
    directory.mkdir()
    srv = NatsServer(directory).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def shared(module_tmp: Path, server: NatsServer, bootstrap: Path) -> Iterator[DaemonProcess]:
    """One daemon consuming model ``m1`` for the tests that keep the broker up."""
    proc = daemon_for(module_tmp, server, "m1", bootstrap=bootstrap).start()
    with proc.client() as c:
        eventually(lambda: source_state(c)["connected"], 20, "the source to connect")
    try:
        yield proc
    finally:
        proc.stop()


def test_records_and_labels_from_the_stream_are_stored_monitored_and_acknowledged(
    shared: DaemonProcess, server: NatsServer
) -> None:
    batch = records("a", 40)
    publish(server.url, "driftd.m1.records", json.dumps(batch).encode())
    labels = [{"id": r["id"], "label": r["prediction"]} for r in batch]
    # NDJSON, as POST /v1/labels takes it, when the header says so.
    ndjson = "\n".join(json.dumps(lb) for lb in labels).encode()
    publish(server.url, "driftd.m1.labels", ndjson, {"Content-Type": "application/x-ndjson"})
    with shared.client() as c:

        def done() -> bool:
            status = c.get("/v1/status").json()
            return bool(status["store"]["labelled"] == 40 and status["monitor"]["labels"] >= 40)

        eventually(done, 15, "records and labels stored and joined")
        status = c.get("/v1/status").json()
        assert status["store"]["records"] == 40
        assert status["monitor"]["records"] >= 40
        assert metric(c, "driftd_records_total", source="nats") == 40
        for kind in ("records", "labels"):
            assert handled(c, kind, "acked") >= 1
        assert metric(c, "driftd_source_connected", source="nats") == 1
        eventually(lambda: source_state(c)["lag"] is not None, 5, "the consumer's lag read")
        info = consumer_info(server.url, "DRIFTD", "driftd-m1")
        assert info.num_ack_pending == 0 and info.num_pending == 0  # every message acknowledged
        state = source_state(c)
        assert state["state"] == "connected"
        assert state["subjects"] == ["driftd.m1.records", "driftd.m1.labels"]
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_a_message_delivered_twice_is_a_duplicate_and_changes_nothing(
    shared: DaemonProcess, server: NatsServer
) -> None:
    body = json.dumps(records("twice", 25, seed=5)).encode()
    with shared.client() as c:
        before = stored(shared_state(shared))
        dup = metric(c, "driftd_records_duplicate_total")
        acked = handled(c, "records", "acked")
        publish(server.url, "driftd.m1.records", body)
        publish(server.url, "driftd.m1.records", body)  # a producer's retry, or a redelivery

        def both_acked() -> bool:
            now = handled(c, "records", "acked")
            return now == acked + 2

        eventually(both_acked, 10, "both messages acknowledged")
        assert stored(shared_state(shared)) == before + 25
        assert metric(c, "driftd_records_duplicate_total") == dup + 25


def test_an_invalid_message_is_terminated_counted_and_does_not_hold_back_the_next(
    shared: DaemonProcess, server: NatsServer
) -> None:
    bad = records("bad", 3)
    bad[1]["features"]["x0"] = "high"
    no_ids = [{k: v for k, v in r.items() if k != "id"} for r in records("anon", 2)]
    good = records("after", 5, seed=9)
    with shared.client() as c:
        before = stored(shared_state(shared))
        invalid = metric(c, "driftd_records_rejected_total", reason="invalid_record")
        malformed = metric(c, "driftd_records_rejected_total", reason="malformed_json")
        for body in (json.dumps(bad).encode(), json.dumps(no_ids).encode(), b"[{"):
            publish(server.url, "driftd.m1.records", body)
        publish(server.url, "driftd.m1.records", json.dumps(good).encode())
        eventually(lambda: stored(shared_state(shared)) == before + 5, 10, "the good message")
        assert metric(c, "driftd_records_rejected_total", reason="invalid_record") == invalid + 2
        assert metric(c, "driftd_records_rejected_total", reason="malformed_json") == malformed + 1
        assert handled(c, "records", "termed") >= 3
        with sqlite3.connect(shared_state(shared) / "driftd.sqlite3") as db:
            leaked = db.execute("SELECT count(*) FROM records WHERE rid LIKE 'bad-%'").fetchone()
        assert leaked[0] == 0  # refused whole, as over HTTP
    messages = [str(e.get("message")) for e in shared.lines]
    assert any("refused message" in m and "features.x0" in m for m in messages), messages[-10:]
    assert any("refused message" in m and "id: required" in m for m in messages)
    time.sleep(2.5)  # past ack_wait: a terminated message is never delivered again
    info = consumer_info(server.url, "DRIFTD", "driftd-m1")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


def test_a_broker_outage_is_reported_never_fatal_and_consumption_resumes(
    tmp_path: Path, bootstrap: Path
) -> None:
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(directory).start()
    daemon = daemon_for(tmp_path, server, "m2", bootstrap=bootstrap).start()
    state = tmp_path / "state-m2"
    try:
        with daemon.client() as c:
            eventually(lambda: source_state(c)["connected"], 20, "the source to connect")
            publish(server.url, "driftd.m2.records", json.dumps(records("pre", 10)).encode())
            eventually(lambda: stored(state) == 10, 10, "the first message")
            server.stop()

            def reported() -> bool:
                s = source_state(c)
                return not s["connected"] and s["last_error"] is not None

            eventually(reported, 10, "the outage in /v1/status")
            s = source_state(c)
            assert s["state"] == "reconnecting" and s["next_retry"] is not None
            ready = c.get("/readyz")
            assert ready.status_code == 200  # still serving predictions and HTTP ingest
            assert ready.json()["status"] == "degraded"
            assert ready.json()["sources"]["nats"]["connected"] is False
            assert metric(c, "driftd_source_connected", source="nats") == 0
            r = c.post("/v1/records", json=records("http", 4))
            assert r.status_code == 200 and r.json()["accepted"] == 4
            time.sleep(1.0)  # a few retries with backoff, the daemon unmoved
            assert daemon.proc is not None and daemon.proc.poll() is None
            assert metric(c, "driftd_source_connect_failures_total", source="nats") >= 2

            server.start()  # same port, same store: the stream and the consumer's place
            eventually(lambda: source_state(c)["connected"], 15, "the source to reconnect")
            publish(server.url, "driftd.m2.records", json.dumps(records("post", 10, 3)).encode())
            eventually(lambda: stored(state) == 20, 10, "consumption to resume")
            assert stored(state, "records") == 4
            assert c.get("/readyz").json()["status"] == "ready"
    finally:
        daemon.stop()
        server.stop()


def test_a_backlog_shows_as_consumer_lag_until_it_is_drained(
    module_tmp: Path, server: NatsServer
) -> None:
    """Messages published while the daemon is away wait in the broker: once it is back,
    driftd_source_pending_messages{state="undelivered"} says how many (what an operator alerts
    on), and falls to 0, with nothing left unacknowledged, once it has stored them all."""
    daemon = daemon_for(module_tmp, server, "m6", bootstrap=None, batch=1)
    state = module_tmp / "state-m6"
    per, messages = 20, 300
    try:
        daemon.start(wait_ready=False)
        with daemon.client() as c:  # the durable consumer exists from now on
            eventually(lambda: source_state(c)["connected"], 20, "the source to connect")
        daemon.stop()
        bodies = [json.dumps(records(f"lag{m}", per, seed=m)).encode() for m in range(messages)]
        publish_all(server.url, "driftd.m6.records", bodies)
        assert consumer_info(server.url, "DRIFTD", "driftd-m6").num_pending == messages

        daemon.start(wait_ready=False)
        with daemon.client() as c:

            def lag(which: str) -> float | None:
                try:
                    return metric(c, "driftd_source_pending_messages", source="nats", state=which)
                except AssertionError:  # not read yet
                    return None

            seen = eventually(lambda: lag("undelivered"), 20, "a backlog in the lag metric")
            assert 0 < seen <= messages
            eventually(lambda: stored(state) == messages * per, 60, "the backlog stored")
            eventually(
                lambda: lag("undelivered") == 0 and lag("unacked") == 0, 10, "the lag back to 0"
            )
            assert source_state(c)["lag"]["undelivered"] == 0
        info = consumer_info(server.url, "DRIFTD", "driftd-m6")
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        daemon.stop()


@pytest.mark.slow  # .ci/run runs it after the default suite
def test_a_daemon_killed_between_commit_and_ack_stores_each_record_once(tmp_path: Path) -> None:
    """The broker is frozen mid-backlog: the daemon commits the batch in hand but its acks
    never get through; both are then killed. After a restart the broker delivers those
    messages again, and each record is stored exactly once."""
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(directory).start()
    daemon = daemon_for(tmp_path, server, "m3", bootstrap=None, batch=20)
    state = tmp_path / "state-m3"
    per, messages = 100, 150
    try:
        daemon.start(wait_ready=False)
        with daemon.client() as c:
            eventually(lambda: source_state(c)["connected"], 20, "the source to connect")
        daemon.signal(signal.SIGSTOP)  # the backlog builds while the daemon cannot fetch
        bodies = [json.dumps(records(f"k{m}", per, seed=m)).encode() for m in range(messages)]
        publish_all(server.url, "driftd.m3.records", bodies)
        daemon.signal(signal.SIGCONT)
        eventually(lambda: stored(state) >= 3 * per, 20, "consumption to start")
        server.send(signal.SIGSTOP)  # acks from now on reach no one
        time.sleep(1.0)  # the batch in hand is committed meanwhile
        kill_9(daemon)
        server.stop(signal.SIGKILL)
        at_kill = stored(state)
        assert at_kill < messages * per, "the whole backlog went through before the freeze"

        server.start()
        acked = consumer_info(server.url, "DRIFTD", "driftd-m3").ack_floor.stream_seq
        assert acked * per < at_kill, "no committed message was left unacknowledged"
        daemon.start(wait_ready=False)
        with daemon.client() as c:
            eventually(lambda: stored(state) == messages * per, 30, "the whole backlog")

            def drained() -> bool:
                info = consumer_info(server.url, "DRIFTD", "driftd-m3")
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)

            eventually(drained, 10, "every message acknowledged")
            # The killed broker may have lost its count of deliveries too (then they are first
            # deliveries again): the store's duplicates are what must match.
            assert metric(c, "driftd_records_duplicate_total") >= at_kill - acked * per
        with sqlite3.connect(state / "driftd.sqlite3") as db:
            rows, ids = db.execute("SELECT count(*), count(DISTINCT rid) FROM records").fetchone()
        assert rows == ids == messages * per
    finally:
        daemon.stop()
        server.stop()


@pytest.mark.slow  # .ci/run runs it after the default suite
def test_messages_in_the_hands_of_a_killed_daemon_are_delivered_again_and_counted(
    module_tmp: Path, server: NatsServer
) -> None:
    """Messages delivered to a daemon that dies before acknowledging them come back once
    ack_wait has passed, counted in driftd_source_redeliveries_total, stored once."""
    daemon = daemon_for(module_tmp, server, "m4", bootstrap=None)
    state = module_tmp / "state-m4"
    sent = 0
    try:
        daemon.start(wait_ready=False)
        with daemon.client() as c:
            eventually(lambda: source_state(c)["connected"], 20, "the source to connect")
        for attempt in range(20):
            # Frozen with its pull request open, the daemon is handed the message but can
            # neither store nor acknowledge it (a request between two fetches: try again).
            daemon.signal(signal.SIGSTOP)
            publish(server.url, "driftd.m4.records", json.dumps(records(f"h{attempt}", 5)).encode())
            sent += 5
            time.sleep(0.05)
            if consumer_info(server.url, "DRIFTD", "driftd-m4").num_ack_pending > 0:
                break
            daemon.signal(signal.SIGCONT)
            eventually(lambda n=sent: stored(state) == n, 10, "the message stored")
        else:
            pytest.fail("no message was ever in the daemon's hands unacknowledged")
        kill_9(daemon)
        daemon.start(wait_ready=False)
        with daemon.client() as c:
            eventually(lambda: stored(state) == sent, 15, "the message delivered again")
            again = metric(c, "driftd_source_redeliveries_total", source="nats", kind="records")
            assert again >= 1
            assert source_state(c)["redeliveries"] >= 1
    finally:
        daemon.stop()


def test_a_graceful_stop_acknowledges_every_message_it_stored(
    module_tmp: Path, server: NatsServer
) -> None:
    """SIGTERM mid-backlog: the source fetches nothing more, finishes the messages in hand and
    their acks reach the broker before the daemon exits: nothing stored is left unacknowledged,
    nothing acknowledged is left unstored."""
    daemon = daemon_for(module_tmp, server, "m5", bootstrap=None, batch=20)
    state = module_tmp / "state-m5"
    per = 200
    try:
        daemon.start(wait_ready=False)
        with daemon.client() as c:
            eventually(lambda: source_state(c)["connected"], 20, "the source to connect")
        daemon.signal(signal.SIGSTOP)
        bodies = [json.dumps(records(f"g{m}", per)).encode() for m in range(150)]
        seqs = publish_all(server.url, "driftd.m5.records", bodies)
        time.sleep(0.1)
        in_hand = consumer_info(server.url, "DRIFTD", "driftd-m5").num_ack_pending
        # SIGTERM waits while the daemon is stopped, and is seen as soon as it runs again.
        daemon.signal(signal.SIGTERM)
        daemon.signal(signal.SIGCONT)
        assert daemon.wait(30) == 0
        info = consumer_info(server.url, "DRIFTD", "driftd-m5")
        assert info.num_ack_pending == 0  # nothing delivered is left unacknowledged
        # Stored in order, acknowledged in order: the ack floor is the last message stored.
        acked = max(0, info.ack_floor.stream_seq - seqs[0] + 1)
        assert stored(state) == acked * per
        assert acked >= in_hand  # the messages in hand were finished, not abandoned
        assert acked < len(seqs), "the source went on fetching after SIGTERM"
    finally:
        daemon.stop()
