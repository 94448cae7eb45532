"""The engine over a real store: what a restart after a crash restores into the monitor."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from driftd._fs import FileBlob
from driftd.config import StoreConfig
from driftd.ingest.batch import Batch
from driftd.ingest.schema import Feature, LabelRecord, Record, Schema
from driftd.metrics import Metrics
from driftd.models.serving import Serving
from driftd.monitor import MonitorConfig
from driftd.service.engine import Engine
from driftd.store import SQLiteStore
from driftd.store.sqlite import SCHEMA_VERSION

SCHEMA = Schema(features=(Feature("x0"), Feature("x1")))
NOW = 1_000_000.0


def engine(base: Path) -> Engine:
    base.mkdir(exist_ok=True)
    store = SQLiteStore(base / "store.sqlite3", SCHEMA).open()
    out = Engine(
        SCHEMA,
        store,
        Serving(),
        Metrics(process=False),
        monitor=MonitorConfig(),
        retention=StoreConfig(),
        checkpoint=FileBlob(base / "monitor.ckpt"),
        clock=lambda: NOW,
    )
    out.open()
    return out


def predictions(e: Engine, n: int, seed: int) -> None:
    rng = random.Random(seed)
    records: list[Record] = [
        {"id": f"r{i}", "features": {"x0": rng.gauss(0, 1), "x1": rng.gauss(0, 1)}, "prediction": 0}
        for i in range(n)
    ]
    assert e.run(e.add_records, records, "records", NOW).accepted == n


def labels(e: Engine, ids: range, error_rate: float, seed: int) -> None:
    rng = random.Random(seed)
    batch: list[LabelRecord] = [
        {"id": f"r{i}", "label": int(rng.random() < error_rate)} for i in ids
    ]
    e.run(e.add_labels, batch, NOW)


def error_state(e: Engine) -> tuple[object, ...]:
    states = [s for s in e.detector_states() if s.signal == "error"]
    assert states, "the error stream has a detector"
    return (*states, e.live_score)


def test_outcomes_joined_after_the_last_checkpoint_are_replayed_after_a_crash(
    tmp_path: Path,
) -> None:
    crashed = engine(tmp_path / "crashed")
    predictions(crashed, 3000, seed=1)
    labels(crashed, range(1000), 0.1, seed=2)
    crashed.checkpoint()
    labels(crashed, range(1000, 3000), 0.4, seed=3)  # joined after the checkpoint
    expected = error_state(crashed)
    crashed.store.close()  # a crash: no checkpoint at shutdown

    restored = engine(tmp_path / "crashed")
    try:
        assert error_state(restored) == expected
        assert restored.monitor_join == restored.store.last_join
    finally:
        restored.close()
        restored.store.close()


def test_a_checkpoint_at_shutdown_replays_nothing_twice(tmp_path: Path) -> None:
    e = engine(tmp_path / "s")
    predictions(e, 2000, seed=1)
    labels(e, range(2000), 0.2, seed=2)
    expected = error_state(e)
    e.close()
    e.store.close()
    again = engine(tmp_path / "s")
    try:
        assert error_state(again) == expected
    finally:
        again.close()
        again.store.close()


def test_a_store_of_schema_one_is_upgraded_and_numbers_its_joins(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path, SCHEMA).open()
    store.close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP INDEX records_joined; ALTER TABLE records DROP COLUMN join_seq;"
        " ALTER TABLE records DROP COLUMN proba;"
        " UPDATE meta SET value='1' WHERE key='schema_version';"
    )
    db.close()
    store = SQLiteStore(path, SCHEMA).open()
    try:
        version = store.db.execute("SELECT value FROM meta WHERE key='schema_version'")
        assert version.fetchone()[0] == str(SCHEMA_VERSION)
        store.add_records(
            Batch([{"x0": 0.0, "x1": 1.0}] * 3, NOW, ids=["a", "b", "c"], predictions=[0, 1, 0]),
            source="predict",
            received=NOW,
        )
        joined = store.add_labels([("c", 1, NOW), ("a", 0, NOW)]).joined
        assert [(j.idx, j.seq) for j in joined] == [(3, 1), (1, 2)]
        assert [(j.idx, j.seq) for j in store.joined_after(1)] == [(1, 2)]
    finally:
        store.close()


def test_join_numbers_are_never_given_twice_across_retention_and_a_restart(
    tmp_path: Path,
) -> None:
    """A late label gives an old record the newest join number; retention may then delete that
    record, and a restart must not hand the number out again (the monitor's checkpoint already
    holds it, so a join numbered again would never be replayed)."""
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path, SCHEMA).open()
    feats = [{"x0": 0.0, "x1": 0.0}]
    store.add_records(Batch(feats, NOW, ids=["a"], predictions=[0]), source="p", received=NOW)
    store.add_records(
        Batch(feats, NOW, ids=["b"], predictions=[0], labels=[1]), source="p", received=NOW
    )
    assert [j.seq for j in store.add_labels([("a", 1, NOW)]).joined] == [2]
    store.trim(max_rows=1, max_age=None, now=NOW)  # deletes "a", which holds number 2
    store.close()
    store = SQLiteStore(path, SCHEMA).open()
    try:
        assert store.last_join == 2
        store.add_records(Batch(feats, NOW, ids=["c"], predictions=[1]), source="p", received=NOW)
        assert [j.seq for j in store.add_labels([("c", 1, NOW)]).joined] == [3]
    finally:
        store.close()
