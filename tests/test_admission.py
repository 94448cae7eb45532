"""What a careless or hostile producer cannot put into the store, against a real daemon: class
labels of another type than the model's, timestamps out of range, control characters in ids.
Each refusal is a 422 naming the record and the field, counted, and nothing of the batch is
stored; the daemon keeps serving the types it served."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftd.service.parts import STORE_FILE
from tests.conftest import DaemonProcess, config_text, make_rows, write_csv

FEATURES = {"x0": 0.4, "x1": 0.5, "x2": -1.0, "color": "red"}


def start(base: Path, schema: str = "") -> DaemonProcess:
    csv_path = write_csv(base / "boot.csv", make_rows(1000, seed=1))
    cfg = base / "driftd.toml"
    text = config_text(base / "state", bootstrap=str(csv_path))
    cfg.write_text(text.replace('task = "classification"\n', f'task = "classification"\n{schema}'))
    return DaemonProcess(cfg).start()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = start(tmp_path_factory.mktemp("admission"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(live: DaemonProcess) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def record(rid: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "features": FEATURES, **extra}


def refused(r: httpx.Response) -> list[tuple[int | None, str, str]]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_record", body
    return [(e["index"], e["field"], e["type"]) for e in body["errors"]]


def rejected(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('driftd_records_rejected_total{reason="invalid_record"} '):
            return float(line.split()[-1])
    return 0.0


def stored(live: DaemonProcess, rid: str) -> tuple[Any, ...] | None:
    path = live.config.parent / "state" / STORE_FILE
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row: tuple[Any, ...] | None = db.execute(
            "SELECT ts, label FROM records WHERE rid=?", (rid,)
        ).fetchone()
        return row
    finally:
        db.close()


def test_a_label_of_another_type_than_the_models_classes_is_refused(
    live: DaemonProcess, client: httpx.Client
) -> None:
    # The first model was fitted on integer classes (a CSV's "1" is the class 1).
    before = rejected(client)
    batch = [record("int-ok", label=1), record("str-bad", label="1"), record("p", prediction="0")]
    assert refused(client.post("/v1/records", json=batch)) == [
        (1, "label", "label_type"),
        (2, "prediction", "label_type"),
    ]
    assert stored(live, "int-ok") is None, "a refused batch is refused whole"
    assert refused(client.post("/v1/labels", json=[{"id": "a", "label": "0"}])) == [
        (0, "label", "label_type")
    ]
    assert rejected(client) == before + 2
    assert client.post("/v1/records", json=[record("int-ok", label=1)]).status_code == 200
    assert client.post("/v1/labels", json=[{"id": "later", "label": 0}]).status_code == 200
    answer = client.post("/v1/predict", json={"instances": [FEATURES]}).json()
    assert all(type(p) is int for p in answer["predictions"]), answer


def test_the_class_type_holds_across_a_restart(tmp_path: Path) -> None:
    daemon = start(tmp_path)
    try:
        with daemon.client() as c:
            assert c.post("/v1/records", json=[record("a", label=1)]).status_code == 200
        daemon.stop()
        daemon.start()
        with daemon.client() as c:
            assert refused(c.post("/v1/records", json=[record("b", label="yes")])) == [
                (0, "label", "label_type")
            ]
    finally:
        daemon.stop()


def test_a_schema_can_fix_string_classes_and_history_labels_follow_it(tmp_path: Path) -> None:
    daemon = start(tmp_path, 'label_type = "string"\n')
    try:
        with daemon.client() as c:
            answer = c.post("/v1/predict", json={"instances": [FEATURES]}).json()
            assert all(type(p) is str for p in answer["predictions"]), answer
            r = c.post("/v1/labels", json=[{"id": "a", "label": 1}])
            assert refused(r) == [(0, "label", "label_type")]
            assert "string class label" in r.json()["errors"][0]["message"]
            assert c.post("/v1/labels", json=[{"id": "a", "label": "1"}]).status_code == 200
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("timestamp", "kind"),
    [(1e15, "too_late"), (time.time() + 86_400, "too_late"), (-5, "greater_than_equal")],
    ids=["year 31 million", "a day ahead", "negative"],
)
def test_timestamps_out_of_range_are_refused(
    client: httpx.Client, timestamp: float, kind: str
) -> None:
    batch = [record("t-ok"), record("t-bad", timestamp=timestamp)]
    assert refused(client.post("/v1/records", json=batch)) == [(1, "timestamp", kind)]
    label = [{"id": "t-ok", "label": 1, "timestamp": timestamp}]
    assert refused(client.post("/v1/labels", json=label)) == [(0, "timestamp", kind)]


def test_timestamp_zero_is_the_epoch_not_now(live: DaemonProcess, client: httpx.Client) -> None:
    now = time.time()
    assert client.post("/v1/records", json=[record("epoch", timestamp=0)]).status_code == 200
    assert client.post("/v1/records", json=[record("recent", timestamp=now)]).status_code == 200
    assert stored(live, "epoch") == (0.0, None)
    assert stored(live, "recent") == (now, None)


@pytest.mark.parametrize("rid", ["a\x00b", "line\nforged", "tab\there", "del\x7f", "c1\x85"])
def test_control_characters_in_ids_are_refused(client: httpx.Client, rid: str) -> None:
    assert refused(client.post("/v1/records", json=[record(rid)])) == [
        (0, "id", "string_pattern_mismatch")
    ]
    labels = [{"id": rid, "label": 1}]
    assert refused(client.post("/v1/labels", json=labels)) == [(0, "id", "string_pattern_mismatch")]
    r = client.post("/v1/predict", json={"instances": [FEATURES], "ids": [rid]})
    assert r.status_code == 422, r.text
    assert client.post("/v1/records", json=[record("naïve-id-ü")]).status_code == 200


def test_an_all_numeric_schema_refuses_the_same_on_its_fast_path(tmp_path: Path) -> None:
    # x0..x2 only: bodies decode straight into columns, and fall back to the full validator.
    csv_path = tmp_path / "boot.csv"
    csv_path.write_text(
        "x0,x1,x2,label\n"
        + "".join(
            f"{r['features']['x0']},{r['features']['x1']},{r['features']['x2']},{r['label']}\n"
            for r in make_rows(1000, seed=2)
        )
    )
    cfg = tmp_path / "driftd.toml"
    text = config_text(tmp_path / "state", bootstrap=str(csv_path))
    feats = '{ name = "x0" }, { name = "x1" }, { name = "x2" }'
    text = text.replace(text[text.index("features = [") :].split("\n")[0], f"features = [{feats}]")
    cfg.write_text(text)
    daemon = DaemonProcess(cfg).start()
    numeric = {"x0": 0.1, "x1": 0.2, "x2": 0.3}
    try:
        with daemon.client() as c:
            cases = [
                ({"id": "n\nl", "features": numeric}, "id", "string_pattern_mismatch"),
                ({"features": numeric, "timestamp": -1.0}, "timestamp", "greater_than_equal"),
                ({"features": numeric, "timestamp": 1e15}, "timestamp", "too_late"),
                ({"features": numeric, "label": "1"}, "label", "label_type"),
            ]
            for rec, name, kind in cases:
                assert refused(c.post("/v1/records", json=[rec])) == [(0, name, kind)], rec
            ok = [{"id": "zero", "features": numeric, "timestamp": 0.0, "label": 1}]
            assert c.post("/v1/records", json=ok).status_code == 200
            assert stored(daemon, "zero") == (0.0, "1")
    finally:
        daemon.stop()
