"""The engine over a real store: what a restart after a crash restores into the monitor."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from driftd._fs import FileBlob
from driftd.config import StoreConfig
from driftd.ingest.batch import Batch
from driftd.ingest.schema import Feature, LabelRecord, Record, Schema
from driftd.metrics import Metrics
from driftd.models.serving import LiveModel, Serving
from driftd.monitor import MonitorConfig, MonitorEvent
from driftd.service.engine import (
    INLINE_GROUP,
    INLINE_SECONDS,
    MONITOR_BATCH,
    Engine,
    PredictResult,
)
from driftd.store import SQLiteStore
from driftd.store.sqlite import SCHEMA_VERSION

SCHEMA = Schema(features=(Feature("x0"), Feature("x1")))
NOW = 1_000_000.0


def engine(base: Path, timer: Callable[[], float] = time.perf_counter) -> Engine:
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
        timer=timer,
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


def serving_engine(base: Path, timer: Callable[[], float] = lambda: 0.0) -> Engine:
    """An engine with a logistic model serving (classes 0 and 1), whose predictions take no
    time on the event loop by ``timer`` (unless told otherwise)."""
    e = engine(base, timer)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    e.serving.swap(LiveModel(1, model, {}, NOW))
    return e


def here(
    e: Engine, instances: list[dict[str, float | str]], ids: list[str] | None = None
) -> PredictResult | None:
    """A request as the event loop makes it: its answer when settled on the caller's thread,
    ``None`` when the worker took it (answered all the same)."""
    answer = e.submit_predict(instances, ids, NOW, here=True)
    settled = e.settle_here()
    result = answer.result(timeout=10)
    return result if settled else None


def rows(n: int, seed: int, shift: float = 0.0) -> list[dict[str, float | str]]:
    rng = random.Random(seed)
    return [{"x0": rng.gauss(shift, 1), "x1": rng.gauss(0, 1)} for _ in range(n)]


def test_an_idle_engine_answers_at_once_and_the_monitor_sees_it_in_order_later(
    tmp_path: Path,
) -> None:
    """settle_here commits before it returns; the monitor's pass waits for a batch (or the
    tick), and any piece of work in order runs after it, so records batched in later are seen
    after the predictions, in index order, none skipped."""
    e = serving_engine(tmp_path / "e")
    try:
        few = MONITOR_BATCH - 1
        answered = [here(e, r) for r in (rows(1, i) for i in range(few))]
        assert all(a is not None for a in answered)
        with e.store.reader() as db:  # committed before the answer
            assert db.execute("SELECT count(*) FROM records").fetchone()[0] == few
        assert e.monitor_index == 0  # fewer than MONITOR_BATCH: not yet
        e.monitor_soon()
        assert e.monitor_index == 0
        records: list[Record] = [{"features": f} for f in rows(3, 9)]
        e.run(e.add_records, records, "records", NOW)  # in order: the predictions go first
        assert e.monitor_index == few + 3
        same = serving_engine(tmp_path / "same")  # the same traffic, monitored as it comes
        try:
            for i in range(few):
                same.predict(rows(1, i), None, NOW)
            same.add_records(records, "records", NOW)
            assert e.detector_states() == same.detector_states()  # none skipped
        finally:
            same.close()
        for i in range(MONITOR_BATCH):
            assert here(e, rows(1, 100 + i)) is not None
        e.monitor_soon()  # a batch is waiting: passed here
        assert e.monitor_index == few + 3 + MONITOR_BATCH
        assert here(e, rows(1, 999)) is not None
        e.monitor_soon(batch=1)  # the tick's call
        assert e.monitor_index == few + 4 + MONITOR_BATCH
    finally:
        e.close()


def test_a_busy_engine_leaves_predictions_to_the_worker(tmp_path: Path) -> None:
    """While work waits for the worker, or the group is large, settle_here declines and the
    worker answers, in arrival order; requests that arrived together are settled together."""
    e = serving_engine(tmp_path / "e")
    release = threading.Event()
    try:
        blocker = e.submit(release.wait)
        first = e.submit_predict(rows(1, 1), ["first"], NOW, here=True)
        assert not e.settle_here()  # the worker holds the lock: it takes them once free
        assert not first.done()
        release.set()
        blocker.result(timeout=10)
        assert first.result(timeout=10).ids == ["first"]
        large = [
            e.submit_predict(rows(INLINE_GROUP // 2 + 1, k), None, NOW, here=True) for k in (2, 3)
        ]
        assert not e.settle_here()
        assert [len(a.result(timeout=10).predictions) for a in large] == [INLINE_GROUP // 2 + 1] * 2
        together = [
            e.submit_predict(rows(2, k), [f"t{k}-0", f"t{k}-1"], NOW, here=True) for k in range(4)
        ]
        assert e.settle_here()  # all four, one model call and one commit
        assert all(a.done() for a in together)
        assert [a.result().ids for a in together] == [[f"t{k}-0", f"t{k}-1"] for k in range(4)]
        n = 1 + 2 * (INLINE_GROUP // 2 + 1) + 8
        assert e.run(lambda: e.monitor_index) == n
        with e.store.reader() as db:
            stored = db.execute("SELECT rid FROM records ORDER BY idx").fetchall()
        assert stored[0] == ("first",)
        assert [r for (r,) in stored[-8:]] == [f"t{k}-{j}" for k in range(4) for j in range(2)]
    finally:
        e.close()


def test_a_swap_rebaselines_after_the_predictions_of_the_model_before(tmp_path: Path) -> None:
    """Predictions answered but not yet monitored belong to the old model: the swap's
    rebaseline, run in order, comes after the monitor has seen them."""
    e = serving_engine(tmp_path / "e")
    try:
        for i in range(3):
            assert here(e, rows(1, i)) is not None
        e.run(e.rebaseline)
        status = e.monitor.status()
        assert status["baseline_index"] == 3  # not 0: the detectors saw records 1-3 first
        assert status["records"] == 4  # the next index it expects
    finally:
        e.close()


def test_a_shifted_stream_answered_at_once_still_raises_its_alarm(tmp_path: Path) -> None:
    """The monitor after the answer is still the monitor: a shift in one feature, predicted one
    record at a time, alarms as it does when the records are batched in."""
    e = serving_engine(tmp_path / "e")
    alarms: list[MonitorEvent] = []
    e.subscribe(on_alarm=alarms.append, on_joined=lambda _: None)
    try:
        stream = rows(3000, 1) + rows(1500, 2, shift=2.0)
        for r in stream:
            assert here(e, [r]) is not None
            e.monitor_soon()
        e.monitor_soon(batch=1)
        assert e.monitor_index == len(stream)
        assert alarms, "the shift in x0 raised an alarm"
        assert alarms[0].index > 3000
    finally:
        e.close()


def test_predictions_monitored_together_are_seen_as_if_one_at_a_time(tmp_path: Path) -> None:
    """The monitor's pass over several answered requests at once, re-sent ids among them (a
    request of duplicates only, and one with some), leaves the detectors, the estimate and
    the indices as monitoring each request as it came does."""
    batched, one_by_one = serving_engine(tmp_path / "b"), serving_engine(tmp_path / "o")
    rng = random.Random(5)
    requests = []
    for k in range(60):
        n = rng.randint(1, 4)
        ids = [f"q{k}-{j}" for j in range(n)]
        if k % 7 == 3:  # re-send the request before, whole
            requests.append(requests[-1])
            continue
        if k % 11 == 5:  # one id of the request before again
            ids[0] = requests[-1][1][0]
        requests.append((rows(n, 1000 + k, shift=k / 20), ids))
    try:
        for instances, ids in requests:
            assert here(batched, instances, ids) is not None
            one_by_one.predict(instances, ids, NOW)
        batched.run(lambda: None)  # any work in order: the monitor's pass goes first
        assert batched.monitor_index == one_by_one.monitor_index
        assert batched.detector_states() == one_by_one.detector_states()
        assert batched.estimated_scores == one_by_one.estimated_scores
    finally:
        batched.close()
        one_by_one.close()


class SteppingTimer:
    """A timer that moves ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_model_slow_on_the_event_loop_is_left_to_the_worker_while_it_stays_slow(
    tmp_path: Path,
) -> None:
    """Once a request's smoothed cost passes INLINE_SECONDS, the serving version's requests go
    to the worker (the loop stays free); measured there, a model back under it returns to the
    loop, and a new version gets a new try at once."""
    timer = SteppingTimer(5 * INLINE_SECONDS)  # every prediction takes five times the budget
    e = serving_engine(tmp_path / "e", timer=timer)
    try:
        answered = 0
        while here(e, rows(1, answered)) is not None:
            answered += 1
            assert answered < 10, "a slow model stays on the event loop"
        assert answered == 3  # smoothed: 0.5, 0.95, 1.36 budgets
        assert e.submit_predict(rows(1, 99), None, NOW).result(timeout=10).ids
        assert here(e, rows(1, 98)) is None  # still slow on the worker
        timer.step = 0.0  # fast again
        on_worker = 0  # each takes 0.9 of the smoothed cost: under the budget within a dozen
        while here(e, rows(1, 200 + on_worker)) is None:
            on_worker += 1
            assert on_worker < 12, "a model fast again stays on the worker"
        assert on_worker >= 5
        timer.step = 5 * INLINE_SECONDS
        while here(e, rows(1, answered)) is not None:
            answered += 1
        live = e.serving.current
        assert live is not None
        e.run(lambda: e.serving.swap(dataclasses.replace(live, version=2)))
        assert here(e, rows(1, 300)) is not None
    finally:
        e.close()
