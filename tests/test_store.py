"""The store's contract, over every backend (SQLite, PostgreSQL): durable writes, idempotent
re-sends, label joins in any order, retention, versioning (``driftd.store.base``)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driftd.errors import StoreUnavailable, StoreVersionError
from driftd.ingest.batch import Batch
from driftd.ingest.schema import Feature, Schema
from driftd.store import SCHEMA_VERSION, PostgresStore, RecordStore, SQLiteStore
from driftd.store import postgres as pg

SCHEMA = Schema(features=(Feature("a"), Feature("b"), Feature("c", "categorical")))

Opener = Callable[[], RecordStore]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opener(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same store again each time it is called (a restart); all closed at the end."""
    opened: list[RecordStore] = []

    def open_() -> RecordStore:
        if backend == "sqlite":
            s: RecordStore = SQLiteStore(tmp_path / "s.sqlite3", SCHEMA)
        else:
            server = request.getfixturevalue("postgres")
            namespace = request.getfixturevalue("pg_namespace")
            s = PostgresStore(server.url(), SCHEMA, namespace=namespace)
        opened.append(s.open())
        return opened[-1]

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def store(opener: Opener) -> RecordStore:
    return opener()


def bump_version(store: RecordStore) -> None:
    """Write a schema version newer than this driftd's into the store's metadata."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute(
                "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)
            )
    else:
        import psycopg

        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url, autocommit=True) as db:
            db.execute(
                f"UPDATE {store.namespace}.meta SET value=%s WHERE key='schema_version'",  # noqa: S608
                (str(pg.SCHEMA_VERSION + 1),),
            )


def rows(n: int, start: int = 0, prediction: int | None = None, label: int | None = None) -> Batch:
    span = range(start, start + n)
    return Batch(
        [{"a": float(i), "b": -float(i), "c": f"k{i % 3}"} for i in span],
        [float(i) for i in span],
        ids=[f"r{i}" for i in span],
        predictions=None if prediction is None else [prediction] * n,
        labels=None if label is None else [label] * n,
    )


def test_records_get_consecutive_indices_and_resends_are_duplicates(store: RecordStore) -> None:
    first = store.add_records(rows(3), source="records", received=10.0)
    assert (first.first_idx, first.accepted, first.inserted_idx) == (1, 3, [1, 2, 3])
    again = store.add_records(rows(4, start=1), source="records", received=11.0)
    assert again.accepted == 2
    assert again.duplicates == ["r1", "r2"]
    assert again.inserted_idx == [4, 5]
    assert store.counts()["records"] == 5


def test_labels_join_predictions_in_any_order(store: RecordStore) -> None:
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


def test_snapshot_is_time_ordered_hashed_and_split_with_the_newest_as_holdout(
    store: RecordStore,
) -> None:
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


def test_retention_trims_the_oldest_rows(store: RecordStore) -> None:
    store.add_records(rows(50), source="records", received=1.0)
    deleted = store.trim(max_rows=20, max_age=None, now=100.0, chunk=7)
    assert deleted == 30
    counts = store.counts()
    assert counts["records"] == 20 and counts["first_index"] == 31
    assert store.trim(max_rows=None, max_age=10.0, now=45.0) == 5  # ts 30..34 are older than 10 s
    assert store.counts()["first_index"] == 36
    assert store.add_records(rows(1, start=99), source="records", received=2.0).inserted_idx == [51]


def test_records_after_replays_features_and_predictions(store: RecordStore) -> None:
    store.add_records(rows(3, prediction=1), source="predict", received=1.0)
    replay = store.records_after(1)
    assert replay == [
        (2, {"a": 1.0, "b": -1.0, "c": "k1"}, 1),
        (3, {"a": 2.0, "b": -2.0, "c": "k2"}, 1),
    ]


def test_events_page_newest_first(store: RecordStore) -> None:
    for i in range(5):
        store.add_event("k" if i % 2 else "j", {"n": i}, ts=float(i))
    events = store.events(limit=2)
    assert [e.data["n"] for e in events] == [4, 3]
    older = store.events(before=events[-1].id, limit=10)
    assert [e.data["n"] for e in older] == [2, 1, 0]
    assert [e.data["n"] for e in store.events(kind="k")] == [3, 1]


def test_a_store_from_a_newer_version_is_refused(opener: Opener) -> None:
    first = opener()
    bump_version(first)
    first.close()
    with pytest.raises(StoreVersionError, match="newer driftd"):
        opener()


def test_writes_survive_reopening(opener: Opener) -> None:
    s = opener()
    s.add_records(rows(5, prediction=1), source="records", received=1.0)
    s.add_labels([("r1", 0, 3.0)])
    s.put_state("k", {"v": 1})
    s.close()
    again = opener()
    assert again.counts()["records"] == 5
    assert again.get_state("k") == {"v": 1}
    assert again.last_join == 1
    assert again.add_records(rows(1, start=5), source="records", received=2.0).inserted_idx == [6]
    assert [j.seq for j in again.add_labels([("r2", 1, 4.0)]).joined] == [2]


def test_a_resend_inside_one_batch_is_stored_once(store: RecordStore) -> None:
    batch = Batch([{"a": 1.0, "b": 2.0, "c": "x"}] * 3, 1.0, ids=["d", "d", "e"])
    result = store.add_records(batch, source="records", received=1.0)
    assert result.accepted == 2 and result.duplicates == ["d"]
    assert result.inserted_idx == [1, 2]
    again = store.add_labels([("e", 1, 2.0), ("e", 0, 3.0)])
    assert again.duplicates == ["e"] and store.counts()["labelled"] == 1


def test_joins_are_numbered_in_the_order_outcomes_joined(store: RecordStore) -> None:
    store.add_records(rows(4, prediction=1), source="predict", received=1.0)
    store.add_labels([("r3", 0, 2.0), ("r0", 1, 2.0), ("r8", 1, 2.0)])  # r8 waits
    late = store.add_records(rows(1, start=8, prediction=0), source="predict", received=3.0)
    sent = store.add_records(rows(2, start=10, prediction=1, label=1), source="r", received=4.0)
    order = [(j.idx, j.seq) for j in store.joined_after(0)]
    assert order == [(4, 1), (1, 2), (5, 3), (6, 4), (7, 5)]
    assert [j.seq for j in late.joined] == [3] and [j.seq for j in sent.joined] == [4, 5]
    assert store.last_join == 5
    assert [j.idx for j in store.joined_after(3)] == [6, 7]
    snap = store.labelled_at([1, 2, 4, 6])
    assert list(snap.idx) == [1, 4, 6]


def test_events_and_state_carry_json(store: RecordStore) -> None:
    first = store.add_events([("a", {"x": [1, 2]}, 1.0, None), ("b", {"y": "z"}, 2.0, 7)])
    assert first[1] > first[0]
    (newest,) = store.events(limit=1)
    assert newest.as_dict() == {
        "y": "z",
        "id": first[1],
        "time": 2.0,
        "kind": "b",
        "record_index": 7,
    }
    store.put_state("policy", {"queue": [1, 2]})
    store.put_state("policy", {"queue": []})
    assert store.get_state("policy") == {"queue": []}
    assert store.get_state("missing", 3) == 3


def test_integrity_check_of_sqlite(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.sqlite3", SCHEMA).open()
    s.add_records(rows(50), source="records", received=1.0)
    s.trim(max_rows=20, max_age=None, now=100.0, chunk=7)
    assert s.integrity_check() == "ok"
    s.close()


# -- PostgreSQL: several writers on one namespace -----------------------------------------------
@pytest.fixture
def two_writers(postgres: Any, pg_namespace: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a = PostgresStore(postgres.url(), SCHEMA, namespace=pg_namespace).open()
    b = PostgresStore(postgres.url(), SCHEMA, namespace=pg_namespace).open()
    yield a, b
    a.close()
    b.close()


def test_writers_on_one_namespace_get_indices_in_commit_order(
    two_writers: tuple[PostgresStore, PostgresStore],
) -> None:
    """Two daemons writing at once: every record stored once, each batch consecutive, and the
    indices in commit order, so that reading by index after the last one seen misses none."""
    a, b = two_writers
    results: dict[str, list[list[int]]] = {"a": [], "b": []}

    def write(name: str, store: PostgresStore) -> None:
        for k in range(40):
            batch = Batch(
                [{"a": float(k), "b": 0.0, "c": name}] * 5,
                float(k),
                ids=[f"{name}-{k}-{i}" for i in range(5)] + [],
            )
            results[name].append(store.add_records(batch, source=name, received=0.0).inserted_idx)

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    seen: list[int] = []
    while any(t.is_alive() for t in threads) or len(seen) < 400:
        seen += [r[0] for r in a.records_after(seen[-1] if seen else 0)]
    for t in threads:
        t.join()
    batches = results["a"] + results["b"]
    assert all(idx == list(range(idx[0], idx[0] + 5)) for idx in batches)
    assert sorted(i for idx in batches for i in idx) == list(range(1, 401))
    assert seen == list(range(1, 401))  # a reader tailing by index missed nothing
    assert b.add_records(rows(1, start=0), source="b", received=0.0).duplicates == []
    assert a.add_records(rows(1, start=0), source="a", received=0.0).duplicates == ["r0"]


def test_a_label_meets_a_record_another_daemon_stored(
    two_writers: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two_writers
    assert a.add_labels([("r0", 1, 5.0)]).pending == 1
    joined = b.add_records(rows(1, prediction=0), source="predict", received=6.0).joined
    assert [(j.prediction, j.label, j.seq) for j in joined] == [(0, 1, 1)]
    assert a.add_labels([("r0", 0, 7.0)]).duplicates == ["r0"]
    assert [j.seq for j in a.add_labels([]).joined] == []


def test_a_database_that_went_away_is_a_refusal_then_comes_back(
    postgres: Any, pg_namespace: str
) -> None:
    s = PostgresStore(postgres.url(), SCHEMA, namespace=pg_namespace).open()
    s.add_records(rows(2), source="records", received=1.0)
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable, match="PostgreSQL"):
            s.add_records(rows(2, start=2), source="records", received=2.0)
        with pytest.raises(StoreUnavailable):
            s.counts()
    finally:
        postgres.restart()
    assert s.add_records(rows(2, start=2), source="records", received=2.0).inserted_idx == [3, 4]
    assert s.counts()["records"] == 4
    s.close()


def test_retention_also_bounds_labels_waiting_for_records(store: RecordStore) -> None:
    store.add_labels([(f"ghost-{i}", 1, float(i)) for i in range(30)])
    assert store.counts()["pending_labels"] == 30
    assert store.trim(max_rows=20, max_age=None, now=100.0) == 10
    assert store.trim(max_rows=None, max_age=10.0, now=35.0) == 15  # ts 10..24 are older than 10 s
    assert store.counts()["pending_labels"] == 5
