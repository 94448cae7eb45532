"""The SQLite store: durable writes, idempotent re-sends, label joins, retention, versioning."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from driftd.errors import StoreVersionError
from driftd.ingest.batch import Batch
from driftd.ingest.schema import Feature, Schema
from driftd.store import SCHEMA_VERSION, Store

SCHEMA = Schema(features=(Feature("a"), Feature("b"), Feature("c", "categorical")))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "s.sqlite3", SCHEMA).open()
    yield s
    s.close()


def rows(n: int, start: int = 0, prediction: int | None = None, label: int | None = None) -> Batch:
    span = range(start, start + n)
    return Batch(
        [{"a": float(i), "b": -float(i), "c": f"k{i % 3}"} for i in span],
        [float(i) for i in span],
        ids=[f"r{i}" for i in span],
        predictions=None if prediction is None else [prediction] * n,
        labels=None if label is None else [label] * n,
    )


def test_records_get_consecutive_indices_and_resends_are_duplicates(store: Store) -> None:
    first = store.add_records(rows(3), source="records", received=10.0)
    assert (first.first_idx, first.accepted, first.inserted_idx) == (1, 3, [1, 2, 3])
    again = store.add_records(rows(4, start=1), source="records", received=11.0)
    assert again.accepted == 2
    assert again.duplicates == ["r1", "r2"]
    assert again.inserted_idx == [4, 5]
    assert store.counts()["records"] == 5


def test_labels_join_predictions_in_any_order(store: Store) -> None:
    store.add_records(rows(2, prediction=1), source="predict", received=5.0)
    early = store.add_labels([("r9", 0, 6.0)])
    assert early.pending == 1 and not early.joined
    res = store.add_labels([("r0", 1, 7.0), ("r1", 0, 8.0)])
    assert [(j.idx, j.prediction, j.label, j.delay) for j in res.joined] == [
        (1, 1, 1, 7.0),
        (2, 1, 0, 7.0),
    ]
    late = store.add_records(
        Batch([{"a": 1.0, "b": 1.0, "c": "x"}], 9.0, ids=["r9"], predictions=[0]),
        source="predict",
        received=9.5,
    )
    assert [(j.prediction, j.label) for j in late.joined] == [(0, 0)]
    dup = store.add_labels([("r0", 0, 10.0)])
    assert dup.duplicates == ["r0"]
    assert store.counts()["labelled"] == 3
    assert store.counts()["pending_labels"] == 0


def test_snapshot_is_time_ordered_hashed_and_split_with_the_newest_as_holdout(store: Store) -> None:
    store.add_records(rows(10, label=1), source="records", received=1.0)
    snap = store.snapshot(limit=8)
    assert len(snap) == 8
    assert list(snap.idx) == list(range(3, 11))
    assert snap.numeric.shape == (8, 2)
    assert snap.categorical[0] == ["k2"]
    train, hold = snap.split(3)
    assert list(hold.idx) == [8, 9, 10] and list(train.idx) == [3, 4, 5, 6, 7]
    assert store.snapshot(limit=8).sha256 == snap.sha256
    assert train.sha256 != snap.sha256


def test_retention_trims_the_oldest_rows(store: Store) -> None:
    store.add_records(rows(50), source="records", received=1.0)
    deleted = store.trim(max_rows=20, max_age=None, now=100.0, chunk=7)
    assert deleted == 30
    counts = store.counts()
    assert counts["records"] == 20 and counts["first_index"] == 31
    assert store.trim(max_rows=None, max_age=10.0, now=45.0) == 5  # ts 30..34 are older than 10 s
    assert store.integrity_check() == "ok"


def test_records_after_replays_features_and_predictions(store: Store) -> None:
    store.add_records(rows(3, prediction=1), source="predict", received=1.0)
    replay = store.records_after(1)
    assert replay == [
        (2, {"a": 1.0, "b": -1.0, "c": "k1"}, 1),
        (3, {"a": 2.0, "b": -2.0, "c": "k2"}, 1),
    ]


def test_events_page_newest_first(store: Store) -> None:
    for i in range(5):
        store.add_event("k" if i % 2 else "j", {"n": i}, ts=float(i))
    events = store.events(limit=2)
    assert [e.data["n"] for e in events] == [4, 3]
    older = store.events(before=events[-1].id, limit=10)
    assert [e.data["n"] for e in older] == [2, 1, 0]
    assert [e.data["n"] for e in store.events(kind="k")] == [3, 1]


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    Store(path, SCHEMA).open().close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreVersionError, match="newer driftd"):
        Store(path, SCHEMA).open()


def test_writes_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = Store(path, SCHEMA).open()
    s.add_records(rows(5), source="records", received=1.0)
    s.close()
    again = Store(path, SCHEMA).open()
    assert again.counts()["records"] == 5
    assert again.add_records(rows(1, start=5), source="records", received=2.0).inserted_idx == [6]
    again.close()


def test_retention_also_bounds_labels_waiting_for_records(store: Store) -> None:
    store.add_labels([(f"ghost-{i}", 1, float(i)) for i in range(30)])
    assert store.counts()["pending_labels"] == 30
    assert store.trim(max_rows=20, max_age=None, now=100.0) == 10
    assert store.trim(max_rows=None, max_age=10.0, now=35.0) == 15  # ts 10..24 are older than 10 s
    assert store.counts()["pending_labels"] == 5
