"""The retrainer, the bootstrap and the guard in process: the daemon's own parts on a fake clock,
with the fit run in this process (or replaced by one that fails), no daemon and no sleep."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftd._unpickle import restricted_loads
from driftd.config import load_text
from driftd.metrics import Metrics
from driftd.models.inputs import rows_to_matrix
from driftd.models.online import RiverModel
from driftd.monitor import MonitorEvent
from driftd.retrain.fit import FitJob, FitResult, fit_and_dump
from driftd.retrain.retrainer import ONLINE_KEY
from driftd.service.parts import Parts, assemble
from tests.conftest import config_text, make_rows, write_csv


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Fits:
    """The fit the retrainer is given: in this process, every job kept; ``fail``, ``cancel``
    or ``shuffle`` make the next fits fail, be cut short by a shutdown, or learn noise."""

    def __init__(self) -> None:
        self.jobs: list[FitJob] = []
        self.fail: str | None = None
        self.cancel = False
        self.shuffle = False
        self.stops = 0  # asked by preempt()

    def preempt(self) -> bool:
        """No fit is ever in flight here (they run when called): the job must stop itself."""
        self.stops += 1
        return False

    def __call__(self, job: FitJob) -> FitResult:
        self.jobs.append(job)
        if self.cancel:
            return FitResult(
                False, error="training cancelled: the daemon is stopping", cancelled=True
            )
        if self.fail is not None:
            return FitResult(False, error=self.fail)
        if self.shuffle:
            y = list(job.y)
            random.Random(0).shuffle(y)
            job = dataclasses.replace(job, y=y, online=None)
        return fit_and_dump(job)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fits() -> Fits:
    return Fits()


@pytest.fixture
def deferred() -> list[Callable[[], None]]:
    return []


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def build(
    tmp_path: Path,
    clock: Clock,
    fits: Fits,
    deferred: list[Callable[[], None]],
    metrics: Metrics,
) -> Iterator[Callable[..., Parts]]:
    """Parts on the test's state directory, bootstrapped from ``boot`` rows unless None."""
    opened: list[Parts] = []

    def make(
        boot: int | None = 1000, preempt: Callable[[], bool] | None = None, **sections: str
    ) -> Parts:
        data = None if boot is None else write_csv(tmp_path / "boot.csv", make_rows(boot, seed=1))
        body = {
            "retrain": "cooldown_labels = 200\nmin_rows_after_drift = 300\nwindow_rows = 2000\n"
            "min_new_labels = 100\nchallenger_labels = 0",
            "gate": "min_holdout = 50",
            "guard": "records = 0",
            **sections,
        }
        text = config_text(tmp_path / "state", bootstrap=data and str(data), sections=body)
        parts = assemble(
            load_text(text, env={}),
            metrics,
            state_dir=tmp_path / "state",
            fit=fits,
            clock=clock,
            defer=deferred.append,
            preempt=preempt,
        )
        opened.append(parts)
        return parts

    yield make
    for parts in opened:
        parts.close()


def play(
    parts: Parts,
    rows: list[dict[str, Any]],
    prefix: str,
    clock: Clock,
    *,
    rate: float = 100.0,
    retrain: bool = False,
) -> list[str]:
    """Predict each batch of 100 and send its labels, at ``rate`` records per fake second;
    with ``retrain``, poll the retrainer after each batch and run the job it returns, as the
    daemon's tick does. Returns the outcomes of the jobs run."""
    engine = parts.engine
    outcomes = []
    for i in range(0, len(rows), 100):
        part = rows[i : i + 100]
        ids = [f"{prefix}-{i + k}" for k in range(len(part))]
        clock.now += len(part) / rate
        engine.run(engine.predict, [r["features"] for r in part], ids, clock())
        labels = [{"id": k, "label": r["label"]} for k, r in zip(ids, part, strict=True)]
        engine.run(engine.add_labels, labels, clock())
        job = parts.retrainer.poll() if retrain else None
        if job is not None:
            outcomes.append(parts.retrainer.run(job))
    return outcomes


def kinds(parts: Parts, limit: int = 50) -> list[str]:
    return [e.kind for e in parts.store.events(limit=limit)]


def finished(parts: Parts) -> dict[str, Any]:
    (event,) = parts.store.events(kind="retrain_finished", limit=1)
    return event.data


def test_the_first_model_is_trained_from_the_bootstrap_file_and_serves(
    build: Callable[..., Parts],
) -> None:
    parts = build()
    assert parts.models.current is None and parts.bootstrap.due()
    assert parts.bootstrap.run() == "deployed"
    live = parts.models.current
    assert live is not None and live.version == 1
    assert not parts.bootstrap.due() and parts.bootstrap.status()["state"] == "done"
    assert finished(parts)["outcome"] == "deployed"


def test_a_failed_bootstrap_waits_out_its_backoff_on_the_clock(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """Each failure doubles the wait (from the cooldown); the reason says when it retries."""
    parts = build()
    fits.fail = "the estimator is broken"
    assert parts.bootstrap.run() == "failed"
    assert not parts.bootstrap.due()
    assert "retrying in 60 s" in parts.bootstrap.no_model_reason()
    clock.now += 59
    assert not parts.bootstrap.due()
    clock.now += 1
    assert parts.bootstrap.due()
    assert parts.bootstrap.run() == "failed"
    clock.now += 119
    assert not parts.bootstrap.due()
    clock.now += 1
    fits.fail = None
    assert parts.bootstrap.due() and parts.bootstrap.run() == "deployed"


def test_a_fit_cut_by_the_shutdown_is_cancelled_and_the_next_start_runs_the_job(
    build: Callable[..., Parts], clock: Clock, fits: Fits, caplog: pytest.LogCaptureFixture
) -> None:
    """No failure, no alert, no finished run and no cooldown: a ``training_cancelled`` event,
    and the job is still queued in the persisted policy, so the parts built at the next start
    run it. A cancelled bootstrap is no failure either: it is simply due again."""
    parts = build()
    fits.cancel = True
    assert parts.bootstrap.run() == "cancelled"
    assert parts.bootstrap.status() == {"state": "idle", "error": None, "failures": 0}
    assert parts.bootstrap.due()
    fits.cancel = False
    parts.bootstrap.run()
    play(parts, make_rows(300, seed=2), "x", clock)
    assert parts.retrainer.request("operator", operator=True).outcome == "queued"
    job = parts.retrainer.poll()
    assert job is not None
    fits.cancel = True
    assert parts.retrainer.run(job) == "cancelled"
    event, bootstrap = parts.store.events(kind="training_cancelled", limit=5)
    assert event.data == {"job": job.id, "reasons": ["operator"], "seconds": 0.0}
    assert bootstrap.data["reasons"] == ["bootstrap"]
    assert kinds(parts, limit=3)[:2] == ["training_cancelled", "retrain_started"]
    assert "alert" not in caplog.text and parts.retrainer.status()["pending"]["id"] == job.id
    parts.close()
    fits.cancel = False
    restarted = build()
    again = restarted.retrainer.poll()
    assert again is not None and again.id == job.id
    assert restarted.retrainer.run(again) == "deployed"
    assert "retrain_interrupted" not in kinds(restarted)


def test_without_a_file_the_first_model_waits_for_labelled_traffic(
    build: Callable[..., Parts], clock: Clock
) -> None:
    parts = build(boot=None)
    assert not parts.bootstrap.due()
    assert "waiting for 200 labelled records" in parts.bootstrap.no_model_reason()
    rows = make_rows(200, seed=3)
    records = [{"id": f"r{i}", **r} for i, r in enumerate(rows)]
    parts.engine.run(parts.engine.add_records, records, "records", clock())
    assert parts.bootstrap.due() and parts.bootstrap.run() == "deployed"


def test_a_drift_alarm_retrains_on_the_rows_since_its_change_point(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """The labels flip: the error stream alarms, and once min_rows_after_drift labelled rows
    exist after the change point the retrain fits the rows since the change point (the fast
    first fit: nothing else), judges it on the newest rows after it, and deploys it, having
    learned the new concept. Once the regime's rows have doubled, its growth retrain fits the
    whole pool."""
    parts = build()
    parts.bootstrap.run()
    assert fits.jobs[-1].cross_fit  # not in a race: its small holdout is lent the rows
    play(parts, make_rows(1000, seed=2), "old", clock)
    assert parts.retrainer.poll() is None
    play(parts, make_rows(600, seed=3, flip=True), "new", clock)
    alarms = parts.store.events(kind="drift_alarm", limit=5)
    assert alarms and all(a.data["alarm"] == "concept_drift" for a in alarms)
    point = alarms[0].data["change_point"]
    job = parts.retrainer.poll()
    assert job is not None and job.reasons == ["drift"] and job.drift_point == point
    assert parts.retrainer.run(job) == "deployed"
    trained = fits.jobs[-1]
    record = finished(parts)
    assert record["window"]["since_drift_point"] == point
    pool = {c["name"]: c for c in record["pool"]}
    assert set(pool) == {"since_change"} and pool["since_change"]["rows"] < 600
    assert trained.online is None and not trained.cross_fit
    assert all(i >= point for i in parts.store.snapshot(limit=len(trained.holdout[1])).idx)
    # where its wall time went, for the audit log
    assert set(record["stages"]) == {"snapshot", "fit", "judge", "deploy"}
    assert all(v >= 0 for v in record["stages"].values())
    # it read the rows since the change point alone: all it fits, and its holdout
    assert record["window"]["first_index"] >= point
    assert len(trained.y) == pool["since_change"]["rows"]
    # the chosen candidate learned the new concept: it predicts the flipped labels
    fresh = make_rows(200, seed=4, flip=True)
    live = parts.models.current
    assert live is not None and live.version == 2
    X = rows_to_matrix(parts.engine.schema, [r["features"] for r in fresh])
    accuracy = sum(p == r["label"] for p, r in zip(live.predict(X), fresh, strict=True)) / 200
    assert accuracy > 0.9

    play(parts, make_rows(1200, seed=5, flip=True), "newer", clock)
    growth = parts.retrainer.poll()
    assert growth is not None and growth.reasons == ["drift_growth"]
    parts.retrainer.run(growth)
    assert {"since_change", "window", "online"} <= {c["name"] for c in finished(parts)["pool"]}
    assert not fits.jobs[-1].cross_fit


def test_a_young_regimes_growth_retrains_stay_fast_and_a_grown_one_fits_the_pool(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """While the rows since the change are under ``fast_until`` of the window (a quarter of
    8,000 here), a growth retrain fits them alone, with no online learner, as the first does:
    a whole pool took 4 to 5 s at 2,000 records/s. Past it, the growth retrain fits the pool."""
    parts = build(retrain="cooldown_labels = 200\nmin_rows_after_drift = 300\nwindow_rows = 8000")
    parts.bootstrap.run()
    play(parts, make_rows(1000, seed=2), "old", clock)
    play(parts, make_rows(600, seed=3, flip=True), "new", clock)
    first = parts.retrainer.poll()
    assert first is not None and first.reasons == ["drift"] and first.drift_point is not None
    assert parts.retrainer.run(first) == "deployed"

    def grow(rows: int, seed: int) -> tuple[set[str], FitJob]:
        play(parts, make_rows(rows, seed=seed, flip=True), f"more{seed}", clock)
        growth = parts.retrainer.poll()
        assert growth is not None and growth.reasons == ["drift_growth"]
        parts.retrainer.run(growth)
        record = finished(parts)
        assert growth.drift_point is not None
        young = record["window"]["first_index"] >= growth.drift_point
        assert young == (record["window"]["rows_since_change"] < 2000)
        return {c["name"] for c in record["pool"]}, fits.jobs[-1]

    names, job = grow(600, 5)  # about 1,200 rows since the change
    assert names == {"since_change"} and job.online is None
    names, job = grow(1800, 6)  # about 3,000
    assert {"since_change", "window", "online"} <= names and job.online is not None


def test_an_online_learner_that_keeps_losing_sits_jobs_out_until_its_turn(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """After ``online_patience`` jobs lost in a row the online learner enters one job in
    ``online_patience + 1``: its learning is most of a job's wall time where it never wins.
    A job it sits out says so in the audit log. (A learner of the class prior loses every
    job here; with a real one, a win resets the count.)"""
    parts = build(
        pool='online_patience = 2\nonline_estimator = "river.dummy.PriorClassifier"\n'
        "online_params = {}"
    )
    parts.bootstrap.run()
    lost = sat_out = 0
    entered = []
    for k in range(7):
        play(parts, make_rows(300, seed=10 + k), f"b{k}", clock)
        parts.retrainer.request("operator", operator=True)
        job = parts.retrainer.poll()
        assert job is not None
        parts.retrainer.run(job)
        record = finished(parts)
        enters = fits.jobs[-1].online is not None
        assert enters == (lost < 2 or sat_out >= 2), (k, lost, sat_out)
        assert ("online_sat_out" in record) != enters
        entered.append(enters)
        if enters:
            won = record["chosen"]["name"] == "online"
            lost, sat_out = (0 if won else lost + 1), 0
        else:
            sat_out += 1
    assert entered == [True, True, False, False, True, False, False]


def test_a_fit_leaves_a_core_to_serving_unless_its_threads_are_set(
    build: Callable[..., Parts], fits: Fits
) -> None:
    """Unset, ``[training] threads`` is one fewer than the cores the daemon may run on (at
    least one): a fit's OpenMP threads otherwise wait at every barrier on the core serving
    holds. Set, it is what the job gets."""
    build().bootstrap.run()
    assert fits.jobs[-1].threads == max(1, len(os.sched_getaffinity(0)) - 1)
    build(training="threads = 3").bootstrap.run()
    assert fits.jobs[-1].threads == 3


def test_a_first_drift_retrain_with_too_few_rows_since_the_change_reads_the_whole_window(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """Fewer rows since the change point than the pool's min_rows would not make the fast fit:
    the first retrain reads the whole window and plans its pool from it, as it always did."""
    parts = build(pool="min_rows = 5000")
    parts.bootstrap.run()
    play(parts, make_rows(1000, seed=2), "old", clock)
    play(parts, make_rows(600, seed=3, flip=True), "new", clock)
    job = parts.retrainer.poll()
    assert job is not None and job.reasons == ["drift"]
    parts.retrainer.run(job)
    record = finished(parts)
    assert job.drift_point is not None
    assert record["window"]["first_index"] < job.drift_point
    assert len(fits.jobs[-1].y) > record["window"]["rows_since_change"]


def test_a_drift_alarm_preempts_a_running_challenger_but_not_a_first_drift_retrain(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """A drift alarm that finds the training process busy with a job that can wait (here a
    challenger) asks it to stop; the stopped job ends skipped (``preempted``), with no
    backoff, and the drift's own retrain starts next. A job the alarm finds still reading its
    rows, its fit not yet handed to the training process, stops before handing it over. A
    regime's first retrain, which is short, is not stopped by the next alarm."""
    parts = build(preempt=fits.preempt)
    parts.bootstrap.run()
    play(parts, make_rows(1000, seed=2), "old", clock)
    parts.retrainer.request("challenger")
    challenger = parts.retrainer.poll()
    assert challenger is not None and challenger.reasons == ["challenger"]
    play(parts, make_rows(600, seed=3, flip=True), "new", clock)  # alarms while it starts
    assert fits.stops == 1
    fitted = len(fits.jobs)
    assert parts.retrainer.run(challenger) == "skipped"
    assert len(fits.jobs) == fitted  # its fit was never handed over
    assert finished(parts)["skipped"] == "preempted"
    assert parts.retrainer.status()["consecutive_rejections"] == 0
    drift = parts.retrainer.poll()
    assert drift is not None and drift.reasons == ["drift"]
    last = parts.store.last_index()
    parts.retrainer.on_alarm(  # the next change, while the first drift's retrain runs
        MonitorEvent("alarm", "concept_drift", "errors", None, last, clock(), last - 50, {})
    )
    assert fits.stops == 1  # not asked again
    assert parts.retrainer.run(drift) == "deployed"


def test_a_candidate_that_loses_to_the_champion_is_rejected_kept_and_backs_off(
    build: Callable[..., Parts], clock: Clock, fits: Fits, tmp_path: Path, metrics: Metrics
) -> None:
    parts = build()
    parts.bootstrap.run()
    play(parts, make_rows(500, seed=2), "a", clock)
    fits.shuffle = True
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "rejected"
    assert parts.models.current is not None and parts.models.current.version == 1
    verdict = json.loads((tmp_path / "state" / "rejected" / job.id / "verdict.json").read_text())
    assert any(not r["passed"] for r in verdict["verdict"]["rules"])
    assert parts.retrainer.status()["consecutive_rejections"] == 1
    runs = metrics.registry.get_sample_value("driftd_retrain_runs_total", {"outcome": "rejected"})
    assert runs == 1
    # the backoff doubles the cooldown: 200 labelled rows after the attempt are not enough
    play(parts, make_rows(200, seed=6), "b", clock)
    assert parts.retrainer.request("schedule").reason == "backoff"
    play(parts, make_rows(200, seed=7), "c", clock)
    assert parts.retrainer.request("schedule").outcome == "queued"


def test_a_failed_fit_is_recorded_and_starts_the_cooldown(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    parts = build()
    parts.bootstrap.run()
    play(parts, make_rows(500, seed=2), "a", clock)
    fits.fail = "MemoryError: training exceeded the memory limit"
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "failed"
    assert finished(parts)["error"] == fits.fail
    assert parts.retrainer.request("schedule").reason == "cooldown"
    play(parts, make_rows(200, seed=6), "b", clock)
    assert parts.retrainer.request("schedule").outcome == "queued"


def test_an_operator_retrain_with_no_labelled_rows_is_skipped_not_failed(
    build: Callable[..., Parts],
) -> None:
    """An empty snapshot of a schema with a categorical feature once failed in numpy."""
    parts = build()
    parts.bootstrap.run()
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "skipped"
    assert "error" not in finished(parts)


def drift_jobs(parts: Parts) -> list[dict[str, Any]]:
    """The finished drift retrains, oldest first."""
    done = [e.data for e in parts.store.events(kind="retrain_finished", limit=100)]
    return [d for d in reversed(done) if {"drift", "drift_growth"} & set(d["reasons"])]


@pytest.mark.parametrize("rate", [2000.0, 10.0])
def test_with_the_default_policy_a_second_drift_after_the_first_is_retrained(
    build: Callable[..., Parts], clock: Clock, rate: float
) -> None:
    """The issue's cause 1: a cooldown of 120 s is 240,000 records at 2,000 records/s, so every
    drift after the first raised an alarm and got no retrain. Counted in labelled rows, the
    default ``[retrain]`` retrains the second drift at 2,000 records/s and at 10."""
    parts = build(retrain="")
    parts.bootstrap.run()
    play(parts, make_rows(1000, seed=2), "a", clock, rate=rate, retrain=True)
    play(parts, make_rows(3000, seed=3, flip=True), "b", clock, rate=rate, retrain=True)
    first = drift_jobs(parts)
    assert first and first[0]["outcome"] == "deployed"
    second_start = parts.store.last_index()
    play(parts, make_rows(3000, seed=4), "c", clock, rate=rate, retrain=True)
    later = [
        d
        for d in drift_jobs(parts)[len(first) :]
        if d["window"]["since_drift_point"] > second_start - 100
    ]
    assert later and later[0]["outcome"] == "deployed", drift_jobs(parts)


def test_a_drift_retrain_held_by_the_cooldown_is_deferred_recorded_and_run_later(
    build: Callable[..., Parts], clock: Clock, metrics: Metrics
) -> None:
    """Never dropped: a ``retrain_deferred`` event says why (once), the counter counts it, and
    the retrain starts as soon as the cooldown's labelled rows are in."""
    parts = build(
        retrain="cooldown_labels = 1200\nmin_rows_after_drift = 300\nmin_new_labels = 100"
    )
    parts.bootstrap.run()
    play(parts, make_rows(300, seed=2), "a", clock)
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "deployed"
    play(parts, make_rows(300, seed=5), "a2", clock)
    play(parts, make_rows(500, seed=3, flip=True), "b", clock, retrain=True)
    (deferred,) = parts.store.events(kind="retrain_deferred", limit=5)
    assert deferred.data["reason"] == "cooldown" and deferred.data["cooldown_labels"] == 1200
    sample = metrics.registry.get_sample_value
    assert sample("driftd_retrain_deferred_total", {"reason": "cooldown"}) == 1
    assert not drift_jobs(parts), "held while fewer than 1,200 labelled rows came"
    play(parts, make_rows(500, seed=4, flip=True), "c", clock, retrain=True)
    ran = drift_jobs(parts)
    assert ran and ran[0]["outcome"] == "deployed"
    assert ran[0]["window"]["since_drift_point"] == deferred.data["drift_point"]


def test_a_tie_rejection_does_not_back_off_the_next_drift(
    build: Callable[..., Parts], clock: Clock, fits: Fits
) -> None:
    """The issue's cause 4: a candidate that lost by a hair doubled the cooldown. Here the gate
    asks for a gain no candidate makes, with a tie margin that covers it: the rejection is a tie
    and the next wait is one cooldown, not two."""
    parts = build(gate="min_holdout = 50\nmin_absolute_change = 0.5\ntie_margin = 1.0")
    parts.bootstrap.run()
    play(parts, make_rows(500, seed=2), "a", clock)
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "rejected"
    assert finished(parts)["verdict"]["tie"] is True
    status = parts.retrainer.status()
    assert status["consecutive_rejections"] == 0 and status["cooldown_labels"] == 200
    play(parts, make_rows(200, seed=6), "b", clock)
    assert parts.retrainer.request("schedule").outcome == "queued"


def test_without_an_alarm_a_challenger_is_fitted_on_the_recent_window_every_n_labels(
    build: Callable[..., Parts], clock: Clock
) -> None:
    """A drift the detectors miss still gets retrained: every ``challenger_labels`` labelled
    rows newer than the last training a challenger fits on the most recent window, and the gate
    deploys it only if it does as well as the champion on the same holdout."""
    parts = build(retrain="cooldown_labels = 200\nwindow_rows = 800\nchallenger_labels = 400")
    parts.bootstrap.run()
    play(parts, make_rows(300, seed=2), "a", clock, retrain=True)
    assert not kinds(parts, limit=100).count("retrain_started"), "not before 400 labels"
    play(parts, make_rows(100, seed=3), "b", clock, retrain=True)
    done = [e.data for e in parts.store.events(kind="retrain_finished", limit=10)]
    assert [d["reasons"] for d in done] == [["challenger"], ["bootstrap"]]
    assert done[0]["window"]["since_drift_point"] is None and done[0]["rows"] == 400
    verdict = done[0]["verdict"]
    assert done[0]["outcome"] == ("deployed" if verdict["passed"] else "rejected")
    assert {r["rule"] for r in verdict["rules"]} >= {"vs_champion"}, "scored against the champion"
    play(parts, make_rows(400, seed=4), "c", clock, retrain=True)
    reasons = [e.data["reasons"] for e in parts.store.events(kind="retrain_finished", limit=10)]
    assert reasons.count(["challenger"]) == 2
    assert parts.retrainer.status()["drift_regime"] is None


def deploy_flipped(parts: Parts, clock: Clock) -> int:
    """v1 on concept A, then the labels flip until a drift retrain deploys v2 on the flipped
    concept; returns v2's number."""
    parts.bootstrap.run()
    play(parts, make_rows(500, seed=2), "a", clock)
    play(parts, make_rows(400, seed=3, flip=True), "b", clock)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "deployed"
    live = parts.models.current
    assert live is not None and live.version == 2
    return live.version


def test_the_guard_rolls_back_when_the_previous_champion_scores_better_in_shadow(
    build: Callable[..., Parts], clock: Clock, deferred: list[Callable[[], None]]
) -> None:
    """v2 learnt the flipped concept; the stream goes back to concept A, where v1, scored in
    shadow on the very records v2 served, is right and v2 is wrong: the guard rolls back,
    through ``defer`` (it waits for the ingest worker the guard runs on)."""
    parts = build(guard="records = 100\nmargin = 0.1")
    deploy_flipped(parts, clock)
    assert parts.retrainer.status()["guard"] == {"version": 2, "seen": 0, "needed": 100}
    play(parts, make_rows(100, seed=5), "back", clock)
    (failed,) = parts.store.events(kind="guard_failed", limit=1)
    assert failed.data["shadow"] > failed.data["live_on_shadow"] + 0.1
    assert failed.data["shadow_records"] == 100 and len(deferred) == 1
    deferred.pop()()
    live = parts.models.current
    assert live is not None and live.version == 1
    (event,) = parts.store.events(kind="rollback", limit=1)
    assert event.data["reason"] == "guard" and event.data["from"] == 2
    assert "the previous champion v1 scored" in event.data["why"]
    assert parts.retrainer.status()["guard"] is None


def test_a_drift_right_after_a_deploy_is_retrained_not_rolled_back(
    build: Callable[..., Parts], clock: Clock, deferred: list[Callable[[], None]]
) -> None:
    """The issue's causes 2 and 3: a scheduled deploy lands just after a change point, before
    the error detector alarmed; its rebaseline restarts the detector on a model that is wrong
    from its first record, so no alarm ever comes. The old model, in shadow, is no better: no
    rollback. The guard sees the new one far under its holdout score and opens a drift regime
    at its first record, and the drift is retrained."""
    parts = build(
        guard="records = 100\nmargin = 0.02",
        gate="min_holdout = 50\nmin_absolute_change = -0.5",
    )
    parts.bootstrap.run()
    play(parts, make_rows(900, seed=2), "a", clock)
    play(parts, make_rows(10, seed=3, flip=True), "change", clock)
    assert not parts.store.events(kind="drift_alarm", limit=1), "the detector has not seen it"
    parts.retrainer.request("schedule")
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "deployed"
    first = parts.store.last_index() + 1
    play(parts, make_rows(600, seed=4, flip=True), "b", clock, retrain=True)
    assert not deferred and not parts.store.events(kind="rollback", limit=1)
    (drift,) = parts.store.events(kind="guard_drift", limit=1)
    assert drift.data["first_index"] == first and drift.data["opened"]
    assert drift.data["shadow"] <= drift.data["live_on_shadow"] + 0.02
    ran = drift_jobs(parts)
    assert ran and ran[0]["outcome"] == "deployed"
    assert ran[0]["window"]["since_drift_point"] == first
    live = parts.models.current
    assert live is not None and live.version == ran[-1]["version"] >= 3


def test_a_guard_drift_moves_a_regime_still_open_from_an_older_change(
    build: Callable[..., Parts], clock: Clock, deferred: list[Callable[[], None]]
) -> None:
    """A regime from an older change is still growing when a new change comes, and a deploy
    lands just after it: the rebaseline hides the new change from the detector. The guard sees
    the new champion fail from its first record and moves the open regime there, so the new
    drift is retrained now instead of at the old regime's next doubling."""
    parts = build(
        guard="records = 100\nmargin = 0.02",
        gate="min_holdout = 50\nmin_absolute_change = -0.5",
    )
    parts.bootstrap.run()
    play(parts, make_rows(900, seed=2), "a", clock)
    old = parts.store.last_index() - 500
    parts.retrainer.on_alarm(
        MonitorEvent("alarm", "concept_drift", "errors", None, old + 400, clock(), old, {})
    )
    play(parts, make_rows(10, seed=3, flip=True), "change", clock)
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "deployed"
    first = parts.store.last_index() + 1
    play(parts, make_rows(600, seed=4, flip=True), "b", clock, retrain=True)
    (drift,) = parts.store.events(kind="guard_drift", limit=1)
    assert drift.data["opened"] and drift.data["replaced"] == old
    ran = [r for r in drift_jobs(parts) if r["window"]["since_drift_point"] == first]
    assert ran and ran[0]["outcome"] == "deployed"
    fresh = make_rows(200, seed=5, flip=True)
    live = parts.models.current
    assert live is not None
    X = rows_to_matrix(parts.engine.schema, [r["features"] for r in fresh])
    accuracy = sum(p == r["label"] for p, r in zip(live.predict(X), fresh, strict=True)) / 200
    assert accuracy > 0.9


def test_a_restart_keeps_the_policy_and_records_an_interrupted_job(
    build: Callable[..., Parts], clock: Clock
) -> None:
    parts = build()
    parts.bootstrap.run()
    play(parts, make_rows(300, seed=2), "a", clock)
    parts.retrainer.request("operator", operator=True)
    assert parts.retrainer.poll() is not None  # started; the process dies here, unclosed
    again = build()
    assert "retrain_interrupted" in kinds(again)
    assert again.models.current is not None and again.models.current.version == 1
    assert again.retrainer.request("schedule").reason == "cooldown"


# A batch estimator that cannot learn anything, so that the online learner wins every pool.
WEAK = {"model": 'estimator = "sklearn.dummy.DummyClassifier"'}
ONLINE = {
    "pool": 'online_estimator = "river.tree.HoeffdingTreeClassifier"\nonline_params = {}\n'
    "online_max_rows = 0",
    "retrain": "cooldown_labels = 200\nmin_rows_after_drift = 300\nwindow_rows = 2000\n"
    "min_new_labels = 100\nchallenger_labels = 0",
}


def test_the_online_learner_keeps_learning_across_jobs_and_deploys_when_it_is_best(
    build: Callable[..., Parts],
    clock: Clock,
    fits: Fits,
    tmp_path: Path,
) -> None:
    """Against a batch estimator that learns nothing, the online learner wins the pool: it is
    deployed as a version (its family in the manifest), serves predictions, and survives a
    restart of the parts; the next job teaches it only the rows it has not seen."""
    parts = build(**WEAK, **ONLINE)
    parts.bootstrap.run()
    play(parts, make_rows(1000, seed=2), "a", clock)
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) == "deployed"
    record = finished(parts)
    assert record["chosen"]["name"] == "online", record["pool"]
    assert {c["name"] for c in record["pool"]} >= {"window", "online"}
    first = fits.jobs[-1].online
    assert first is not None and first.state is None and first.learn_from == 0
    live = parts.models.current
    assert live is not None and isinstance(live.model, RiverModel)
    assert live.manifest["estimator"] == "river.tree.HoeffdingTreeClassifier"
    through = parts.store.get_state(ONLINE_KEY)["through"]

    fresh = make_rows(300, seed=9)
    X = rows_to_matrix(parts.engine.schema, [r["features"] for r in fresh])
    accuracy = np.mean([p == r["label"] for p, r in zip(live.predict(X), fresh, strict=True)])
    assert accuracy > 0.85

    parts.close()
    again = build(boot=None, **WEAK, **ONLINE)
    assert again.models.current is not None and again.models.current.version == live.version
    assert isinstance(again.models.current.model, RiverModel)
    play(again, make_rows(600, seed=3), "b", clock)
    again.retrainer.request("operator", operator=True)
    job = again.retrainer.poll()
    assert job is not None and again.retrainer.run(job) in ("deployed", "rejected")
    second = fits.jobs[-1].online
    assert second is not None and second.state is not None and second.learn_from > 0
    assert again.store.get_state(ONLINE_KEY)["through"] > through


def test_a_job_teaches_the_online_learner_only_its_newest_rows(
    build: Callable[..., Parts],
    clock: Clock,
    fits: Fits,
) -> None:
    """``[pool] online_max_rows`` bounds what the learner learns in one job, its cost on the
    job's wall time: the newest training rows new to it, then the newest of the holdout; the
    older ones are skipped for good (the next job starts after them)."""
    pool = ONLINE["pool"].replace("online_max_rows = 0", "online_max_rows = 150")
    parts = build(**WEAK, **{**ONLINE, "pool": pool})
    parts.bootstrap.run()
    play(parts, make_rows(1000, seed=2), "a", clock)
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) in ("deployed", "rejected")
    online = fits.jobs[-1].online
    assert online is not None and online.max_rows == 150
    assert online.learn_from == len(fits.jobs[-1].y) - 150
    learned = {c["name"]: c["rows"] for c in finished(parts)["pool"]}["online"]
    assert learned == 150  # its snapshot, scored on the holdout before learning it
    saved = parts.retrainer.online.read() if parts.retrainer.online is not None else None
    learner = restricted_loads(saved or b"", ("river.", "driftd.models.online"))
    assert learner.learned == 300  # and 150 of the holdout


def test_with_the_online_learner_off_no_state_is_kept(
    build: Callable[..., Parts],
    clock: Clock,
    fits: Fits,
) -> None:
    parts = build(pool="online = false")
    parts.bootstrap.run()
    play(parts, make_rows(600, seed=2), "a", clock)
    parts.retrainer.request("operator", operator=True)
    job = parts.retrainer.poll()
    assert job is not None and parts.retrainer.run(job) in ("deployed", "rejected")
    assert fits.jobs[-1].online is None and parts.store.get_state(ONLINE_KEY) is None
    assert "online" not in {c["name"] for c in finished(parts)["pool"]}
