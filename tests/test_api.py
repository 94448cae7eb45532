"""The HTTP API against a real daemon subprocess: good traffic, and every class of bad input."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProcess, config_text, make_rows, require_tool, write_csv

TOKEN = "s3cret-token-of-32-characters!!"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("api")
    csv_path = write_csv(base / "boot.csv", make_rows(1000, seed=1))
    cfg = base / "driftd.toml"
    cfg.write_text(config_text(base / "state", bootstrap=str(csv_path), extra=""))
    text = cfg.read_text().replace("[server]\n", f'[server]\ntoken = "{TOKEN}"\n')
    cfg.write_text(text)
    proc = DaemonProcess(cfg).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(live: DaemonProcess) -> Iterator[httpx.Client]:
    with live.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def metric(client: httpx.Client, name: str, labels: dict[str, str] | None = None) -> float:
    text = client.get("/metrics").text
    want = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in (labels or {}).items()) + "}" if labels else ""
    )
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{want} not exported")


def stored(client: httpx.Client) -> int:
    return int(client.get("/v1/status").json()["store"]["records"])


def good_record(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"features": {"x0": 0.1 * i, "x1": 0.5, "x2": -1.0, "color": "red"}, **extra}


def test_predict_returns_predictions_ids_and_the_model_version(client: httpx.Client) -> None:
    rows = make_rows(5, seed=3)
    r = client.post("/v1/predict", json={"instances": [row["features"] for row in rows]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 5 and set(body["predictions"]) <= {0, 1}
    assert len(set(body["ids"])) == 5
    assert body["model_version"] == 1


def test_records_are_stored_and_delayed_labels_join_their_predictions(client: httpx.Client) -> None:
    before = stored(client)
    r = client.post(
        "/v1/predict", json={"instances": [good_record(1)["features"]], "ids": ["join-me"]}
    )
    assert r.status_code == 200, r.text
    lab = client.post(
        "/v1/labels", json=[{"id": "join-me", "label": 1}, {"id": "not-yet", "label": 0}]
    )
    assert lab.status_code == 200, lab.text
    assert lab.json() == {"accepted": 2, "joined": 1, "pending": 1, "duplicates": []}
    rec = client.post("/v1/records", json=[good_record(2, id="not-yet", prediction=1)])
    assert rec.json()["accepted"] == 1
    assert stored(client) == before + 2
    again = client.post("/v1/labels", json=[{"id": "join-me", "label": 0}])
    assert again.json()["duplicates"] == ["join-me"]


def test_records_accept_ndjson_and_resent_ids_are_duplicates(client: httpx.Client) -> None:
    lines = "\n".join(json.dumps(good_record(i, id=f"nd-{i}", label=i % 2)) for i in range(3))
    headers = {"Content-Type": "application/x-ndjson"}
    first = client.post("/v1/records", content=lines, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 3
    second = client.post("/v1/records", content=lines, headers=headers)
    assert second.json() == {
        "accepted": 0,
        "duplicates": ["nd-0", "nd-1", "nd-2"],
        "first_index": None,
    }


BAD_RECORDS = [
    (
        "missing feature",
        {"features": {"x0": 1.0, "x1": 1.0, "color": "red"}},
        "features.x2",
        "missing",
    ),
    (
        "unknown feature",
        {"features": {**good_record()["features"], "x9": 1.0}},
        "features.x9",
        "extra_forbidden",
    ),
    (
        "false is not a number",
        {"features": {**good_record()["features"], "x0": False}},
        "features.x0",
        "float_type",
    ),
    (
        "string for a number",
        {"features": {**good_record()["features"], "x0": "1.0"}},
        "features.x0",
        "float_type",
    ),
    (
        "number for a category",
        {"features": {**good_record()["features"], "color": 3}},
        "features.color",
        "string_type",
    ),
    (
        "oversize string",
        {"features": {**good_record()["features"], "color": "r" * 300}},
        "features.color",
        "string_too_long",
    ),
    ("float label", {**good_record(), "label": 0.5}, "label", "label_type"),
    ("bool label", {**good_record(), "label": True}, "label", "label_type"),
    ("unknown top-level field", {**good_record(), "weight": 1}, "weight", "extra_forbidden"),
]


@pytest.mark.parametrize(
    ("case", "record", "field", "kind"), BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS]
)
def test_bad_records_are_refused_whole_with_the_index_and_field(
    client: httpx.Client, case: str, record: dict[str, Any], field: str, kind: str
) -> None:
    before = stored(client)
    rejected = metric(client, "driftd_records_rejected_total", {"reason": "invalid_record"})
    r = client.post("/v1/records", json=[good_record(0), record])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_record"
    assert {"index": 1, "field": field, "type": kind} in [
        {k: e[k] for k in ("index", "field", "type")} for e in body["errors"]
    ]
    assert stored(client) == before, "nothing from a refused batch may be stored"
    assert (
        metric(client, "driftd_records_rejected_total", {"reason": "invalid_record"})
        == rejected + 1
    )


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_refused_and_never_echoed(
    client: httpx.Client, literal: str
) -> None:
    body = '[{"features": {"x0": %s, "x1": 0.5, "x2": 1, "color": "red"}}]' % literal  # noqa: UP031
    r = client.post("/v1/records", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert (err["index"], err["field"], err["type"]) == (0, "features.x0", "finite_number")

    def refuse(token: str) -> None:
        raise AssertionError(f"the error body echoed {token} as a JSON value")

    json.loads(r.text, parse_constant=refuse)  # strict JSON: no NaN/Infinity literal came back


def test_malformed_json_is_400(client: httpx.Client) -> None:
    r = client.post(
        "/v1/records", content=b'[{"features": ', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "malformed_json"
    r = client.post(
        "/v1/records", content=b"[\xff\xfe]", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    r = client.post(
        "/v1/records",
        content=b"x0=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"


def test_body_over_the_cap_is_413_by_declared_length(client: httpx.Client) -> None:
    big = json.dumps([good_record(i) for i in range(15000)])
    assert len(big) > 1048576
    r = client.post("/v1/records", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


def test_chunked_body_over_the_cap_is_413_counting_bytes_read(live: DaemonProcess) -> None:
    """No Content-Length: the cap must count the bytes actually received."""
    chunk = b" " * 65536
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(
            b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(20):  # 1.25 MiB in all, over the 1 MiB cap
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading it all
        s.settimeout(10)
        data = b""
        while b"body_too_large" not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
        reply = data.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert "body_too_large" in reply


def test_batch_over_the_cap_is_413(client: httpx.Client) -> None:
    r = client.post("/v1/records", json=[good_record(i) for i in range(2001)])
    assert r.status_code == 413
    assert r.json()["error"] == "batch_too_large"


def test_missing_or_wrong_token_is_401(live: DaemonProcess) -> None:
    with live.client() as anon:
        before = metric(anon, "driftd_records_rejected_total", {"reason": "unauthorized"})
        r = anon.post("/v1/records", json=[good_record()])
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer scope="ingest"'
        assert r.json()["error"] == "unauthorized"
        r = anon.post(
            "/v1/predict",
            json={"instances": [good_record()["features"]]},
            headers={"Authorization": "Bearer nope"},
        )
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token", scope="predict"'
        assert anon.get("/v1/status").status_code == 401, "with a token, reads need one too"
        assert (
            metric(anon, "driftd_records_rejected_total", {"reason": "unauthorized"}) == before + 3
        )


def test_the_single_server_token_holds_every_scope(client: httpx.Client) -> None:
    """``[server] token`` from before the scopes keeps working, on reads as on every POST."""
    for method, path in (
        ("GET", "/v1/status"),
        ("GET", "/v1/models"),
        ("GET", "/v1/events"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
    ):
        r = client.request(method, path)
        assert r.status_code == 200, (path, r.text[:200])
    # Only version 1 exists: refused by the retrainer (409), so past the token check.
    assert client.post("/v1/rollback").json()["error"] == "rollback_refused"
    assert client.post("/v1/labels", json=[{"id": "legacy", "label": 1}]).status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/v1/status"]["get"]["security"] == [{"bearer": ["read"]}]


def test_predict_ids_must_match_instances(client: httpx.Client) -> None:
    r = client.post(
        "/v1/predict", json={"instances": [good_record()["features"]], "ids": ["a", "b"]}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "ids"


def test_events_are_listed_newest_first_and_paged(client: httpx.Client) -> None:
    r = client.get("/v1/events", params={"limit": 1})
    assert r.status_code == 200
    first = r.json()
    assert len(first["events"]) == 1
    kinds = [e["kind"] for e in client.get("/v1/events").json()["events"]]
    assert "deploy" in kinds
    bad = client.get("/v1/events", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "limit"


def test_health_readiness_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["model_version"] == 1
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/predict",
        "/v1/records",
        "/v1/labels",
        "/v1/status",
        "/v1/models",
        "/v1/events",
    } <= set(spec["paths"])
    assert "Features" in spec["components"]["schemas"]
    assert client.get("/nope").status_code == 404


def test_live_metrics_pass_promtool_check_metrics(client: httpx.Client) -> None:
    promtool = require_tool("promtool")
    text = client.get("/metrics").text
    for name in (
        "driftd_records_total",
        "driftd_records_rejected_total",
        "driftd_labels_total",
        "driftd_label_delay_seconds_bucket",
        "driftd_predictions_total",
        "driftd_predict_duration_seconds_bucket",
        "driftd_model_version",
        "driftd_model_load_failures_total",
        "driftd_store_records",
        "driftd_build_info",
        "process_resident_memory_bytes",
    ):
        assert f"\n{name}" in text, f"{name} missing"
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_config_errors_are_listed_together(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        """
[server]
port = "eighty"
host = "0.0.0.0"
[schema]
task = "clustering"
features = [{ name = "a", kind = "text" }]
[store]
retention_rows = -5
[model]
estimator = "sklearn.nothing.Here"
"""
    )
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "driftd", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    for expected in (
        "server.port: got 'eighty', expected an integer",
        "schema.task: got 'clustering'",
        "schema.features[0].kind: got 'text'",
        "store.retention_rows: got -5, expected a value >= 1000",
        "model.estimator: got 'sklearn.nothing.Here', cannot import module",
    ):
        assert expected in out.stderr, out.stderr
    run = subprocess.run(
        [sys.executable, "-m", "driftd", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "server.port" in run.stderr and "schema.task" in run.stderr


def test_an_unseen_category_is_counted_not_refused(client: httpx.Client) -> None:
    """Once the reference is learned, a new category is accepted, counted and reported."""
    reference = make_rows(1100, seed=11)
    for i in range(0, len(reference), 550):
        assert client.post("/v1/records", json=reference[i : i + 550]).status_code == 200
    before = metric(client, "driftd_unseen_categories_total", {"feature": "color"})
    odd = {"features": {"x0": 0.5, "x1": 0.5, "x2": 0.0, "color": "ultraviolet"}}
    assert client.post("/v1/records", json=[odd, odd]).status_code == 200
    assert metric(client, "driftd_unseen_categories_total", {"feature": "color"}) == before + 2
    monitor = client.get("/v1/status").json()["monitor"]
    assert monitor["unseen_categories"]["color"] >= 2
    assert "ultraviolet" in monitor["unseen_examples"]["color"]


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/v1/events?limit=abc", 422, "invalid_parameter"),
        ("GET", "/v1/nothing-here", 404, "not_found"),
        ("DELETE", "/v1/records", 405, "method_not_allowed"),
    ],
)
def test_requests_refused_before_any_data_are_answered_in_json_and_counted(
    client: httpx.Client, method: str, path: str, status: int, reason: str
) -> None:
    before = metric(client, "driftd_records_rejected_total", {"reason": reason})
    r = client.request(method, path)
    assert r.status_code == status
    assert r.json()["error"] == reason
    assert metric(client, "driftd_records_rejected_total", {"reason": reason}) == before + 1
