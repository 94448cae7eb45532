"""Daemons on the shared PostgreSQL store and registry: a real daemon subprocess against a
private PostgreSQL (tests/services.py), with nothing of its data in its state directory."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import DaemonProcess, config_text, make_rows, write_csv

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
            assert again.status_code == 200 and again.json()["accepted"] == 10
            metrics = c.get("/metrics").text
        assert 'driftd_records_rejected_total{reason="store_unavailable"} 1.0' in metrics
    finally:
        daemon.stop()
