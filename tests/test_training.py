"""The training worker: warm between jobs, timeouts that kill, a fresh process after a kill."""

from __future__ import annotations

import dataclasses
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from driftd.ingest.schema import Feature, Schema
from driftd.retrain.config import ModelConfig
from driftd.retrain.fit import FitJob, FitResult, OnlineFit, fit_and_dump
from driftd.retrain.worker import TrainingWorker
from tests.streams import logistic, redundant

SCHEMA = Schema((Feature("a"), Feature("b")))
X = np.random.default_rng(0).random((300, 2))
Y = (X[:, 0] > 0.5).astype(int).tolist()


def job(factory: str | None = None) -> FitJob:
    model = ModelConfig(estimator="sklearn.linear_model.LogisticRegression", factory=factory)
    return FitJob(model, SCHEMA, X, Y)


def test_the_timeout_covers_the_fit_not_the_workers_start() -> None:
    """A cold worker still imports scikit-learn; a short timeout must not count that."""
    worker = TrainingWorker()
    try:
        result = worker(job(), timeout=5.0)
        assert result.ok, result.error
        assert result.artifact.startswith(b"PK")  # a skops zip
    finally:
        worker.close()


def test_a_job_past_its_timeout_kills_the_worker_and_the_next_job_gets_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "slow"
    monkeypatch.setenv("DRIFTD_TEST_SLOW_FLAG", str(flag))
    worker = TrainingWorker()
    try:
        assert worker(job("tests.models:slow_when_flagged"), timeout=30).ok
        first = worker._proc.pid
        assert worker(job(), timeout=30).ok
        assert worker._proc.pid == first, "the worker is reused between jobs"
        flag.touch()
        slow = worker(job("tests.models:slow_when_flagged"), timeout=1.0, kill_grace=2.0)
        assert not slow.ok and slow.timed_out
        assert "timed out after 1 s" in (slow.error or "")
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        flag.unlink()
        again = worker(job(), timeout=30)
        assert again.ok
        assert worker._proc.pid != first
    finally:
        worker.close()


def test_a_failing_fit_comes_back_with_its_traceback() -> None:
    bad = FitJob(
        ModelConfig(estimator="sklearn.linear_model.LogisticRegression", params={"C": -1.0}),
        SCHEMA,
        X,
        Y,
    )
    result = fit_and_dump(bad)
    assert not result.ok
    assert "InvalidParameterError" in (result.traceback or "")


def test_the_worker_evaluates_the_candidate_for_the_gate() -> None:
    """With a holdout, the training process loads the artifact back, warms it up and scores
    it, so that the serving process never loads a candidate it may not deploy. The scores are
    those of the artifact itself, scored anywhere."""
    from driftd.models.registry import load_artifact
    from driftd.retrain.fit import score

    rng = np.random.default_rng(1)
    X_hold = rng.random((120, 2))
    y_hold = (X_hold[:, 0] > 0.5).astype(int).tolist()
    base = job()
    with_holdout = FitJob(
        base.model,
        SCHEMA,
        X,
        Y,
        holdout=(X_hold, y_hold),
        warmup=X_hold[:4],
        metrics=("accuracy", "log_loss"),
    )
    worker = TrainingWorker()
    try:
        result = worker(with_holdout, timeout=60.0)
    finally:
        worker.close()
    assert result.ok and result.evaluation is not None, result.error
    ev = result.evaluation
    assert ev.loads and ev.load_error is None
    assert ev.latency_ms is not None and ev.latency_ms > 0
    model = load_artifact(result.artifact)
    assert ev.scores == {m: score(m, model, X_hold, y_hold) for m in ("accuracy", "log_loss")}
    assert ev.scores["accuracy"] > 0.9
    # The loaded object came back over the pipe, for a deploy to serve: it is the artifact.
    served = ev.model()
    assert type(served) is type(model)
    assert (served.predict_proba(X_hold) == model.predict_proba(X_hold)).all()
    assert fit_and_dump(base).evaluation is None  # no holdout, nothing evaluated


def test_the_worker_loads_an_artifact_for_the_serving_process_unless_it_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback to a version no longer loaded has the worker run the skops load; an artifact
    it refuses raises as it would in process; while it fits, it says so (None) at once, and
    the caller loads the artifact itself rather than wait for the fit."""
    from driftd.errors import IntegrityError
    from driftd.models.registry import load_artifact

    flag = tmp_path / "slow"
    monkeypatch.setenv("DRIFTD_TEST_SLOW_FLAG", str(flag))
    worker = TrainingWorker()
    try:
        fit = worker(job(), timeout=30)
        assert fit.ok, fit.error
        model = worker.load(fit.artifact)
        assert (model.predict_proba(X) == load_artifact(fit.artifact).predict_proba(X)).all()
        with pytest.raises(IntegrityError, match="not a readable skops artifact"):
            worker.load(b"not a skops file")

        flag.touch()
        stop = threading.Event()
        slow = threading.Thread(
            target=worker,
            args=(job("tests.models:slow_when_flagged"),),
            kwargs={"timeout": 60.0, "kill_grace": 1.0, "cancel": stop},
        )
        slow.start()
        deadline = time.monotonic() + 10
        while not worker._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            assert worker.load(fit.artifact) is None  # at once, the fit still running
            assert slow.is_alive()
        finally:
            stop.set()
            slow.join()
    finally:
        worker.close()


def test_the_worker_runs_at_a_lower_cpu_priority_than_the_daemon() -> None:
    """``[training] nice``: when a fit and predictions both want the CPU, predictions win."""
    worker = TrainingWorker(nice=7)
    try:
        assert worker(job(), timeout=30).ok
        child = worker._proc.pid
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child) == min(19, ours + 7)
    finally:
        worker.close()


def test_a_cancel_during_a_fit_stops_the_worker_at_once_and_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The daemon stopping mid-fit: the result says cancelled (not failed) without waiting for
    the fit, and the worker prints no traceback (it once died on a ``BrokenPipeError`` when
    its 3 s fit ended inside the stop's grace and answered a closed pipe)."""
    flag = tmp_path / "slow"
    flag.touch()
    monkeypatch.setenv("DRIFTD_TEST_SLOW_FLAG", str(flag))
    monkeypatch.setenv("DRIFTD_TEST_SLOW_SECONDS", "3")
    worker = TrainingWorker()
    cancel = threading.Event()
    try:
        assert worker(job(), timeout=30).ok  # started and warm: the cancel lands in the fit
        timer = threading.Timer(0.5, cancel.set)
        timer.start()
        result = worker(job("tests.models:slow_when_flagged"), timeout=30, cancel=cancel)
        stopped = time.monotonic()
        assert result.cancelled and not result.ok and not result.timed_out
        assert result.error == "training cancelled: the daemon is stopping"
        assert result.seconds < 2.0
        time.sleep(3.5)  # past the end of the fit it was cut from
        assert time.monotonic() - stopped > 3
        assert "Traceback" not in capfd.readouterr().err
        cold = TrainingWorker()
        try:
            assert cold(job(), timeout=30, cancel=cancel).cancelled  # still starting: cancelled
        finally:
            cold.close()
    finally:
        worker.close()


def candidate(estimator: str, X_all: np.ndarray, y_all: np.ndarray, *, task: str) -> FitJob:
    """A job on the first half of the rows, evaluated on the second half."""
    schema = Schema(tuple(Feature(f"x{i}") for i in range(X_all.shape[1])), task=task)
    half = len(y_all) // 2
    hold = (X_all[half:], y_all[half:].tolist())
    return FitJob(
        ModelConfig(estimator=estimator),
        schema,
        X_all[:half],
        y_all[:half].tolist(),
        holdout=hold,
        metrics=("accuracy",) if task == "classification" else ("mae",),
    )


def test_the_training_process_calibrates_an_overconfident_candidate_on_its_holdout() -> None:
    """Naive Bayes on redundant features is overconfident: the training process, which has the
    holdout at hand, fits isotonic maps there and sends them back with the evaluation. A
    logistic regression on logistic data is calibrated already and gets no maps. Both get a
    correctness model of their numeric inputs."""
    nb = candidate(
        "sklearn.naive_bayes.GaussianNB",
        *redundant(np.random.default_rng(0), 2000),
        task="classification",
    )
    worker = TrainingWorker()
    try:
        result = worker(nb, timeout=60.0)
    finally:
        worker.close()
    assert result.ok and result.evaluation is not None, result.error
    calibration = result.evaluation.calibration
    assert calibration is not None and calibration.calibrator is not None
    assert calibration.calibrator.classes == ("0", "1")
    record = calibration.record()
    assert record["applied"] and record["rows"] == 1000 and record["folds"] == 5
    assert record["ece_before"] > 0.15 and record["ece_after"] < record["ece_before"] / 3
    assert record["correctness"] == {
        "applied": True,
        "inputs": 8,
        "degree": 2,
        "cross_fitted": 0,
    }

    lr = candidate(
        "sklearn.linear_model.LogisticRegression",
        *logistic(np.random.default_rng(0), 2000),
        task="classification",
    )
    evaluation = fit_and_dump(lr).evaluation
    assert evaluation is not None and evaluation.calibration is not None
    calibrator = evaluation.calibration.calibrator
    assert calibrator is not None and calibrator.maps == () and calibrator.correctness is not None
    assert evaluation.calibration.record()["applied"] is False


def test_a_small_holdout_is_lent_the_chosen_candidates_rows_out_of_fold() -> None:
    """A job that cross-fits lends its holdout's correctness model the out-of-fold
    predictions of the rows the chosen candidate fitted; a job that does not (a drift
    regime's), nothing."""
    job = candidate(
        "sklearn.linear_model.LogisticRegression",
        *logistic(np.random.default_rng(2), 2400),
        task="classification",
    )
    job = dataclasses.replace(job, members=(("window", 1200), ("recent", 600)))

    def lent(job: FitJob) -> tuple[int, int]:
        result = fit_and_dump(job)
        assert result.evaluation is not None and result.evaluation.calibration is not None
        rows = dict(job.members)[result.chosen or ""]
        return rows, result.evaluation.calibration.record()["correctness"]["cross_fitted"]

    rows, cross_fitted = lent(dataclasses.replace(job, cross_fit=True))
    assert cross_fitted == rows
    assert lent(job)[1] == 0


def test_the_out_of_fold_fits_warnings_go_to_the_jobs_logs_not_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The evaluation's out-of-fold fits are fits too: a model that does not converge says
    so in the job's logs, as its fit does, and nothing reaches the daemon's stderr."""
    job = candidate(
        "sklearn.linear_model.LogisticRegression",
        *logistic(np.random.default_rng(3), 1200),
        task="classification",
    )
    job = dataclasses.replace(job, model=ModelConfig(job.model.estimator, {"max_iter": 1}))
    result = fit_and_dump(dataclasses.replace(job, cross_fit=True))
    assert result.ok and result.evaluation is not None, result.error
    calibration = result.evaluation.calibration
    assert calibration is not None and calibration.record()["correctness"]["cross_fitted"] == 600
    warned = [line for line in result.logs if "ConvergenceWarning" in line]
    assert len(warned) > 1  # the fit's and the folds'
    assert "ConvergenceWarning" not in capfd.readouterr().err


def test_a_regressor_has_no_calibration() -> None:
    X_all, _ = logistic(np.random.default_rng(1), 400)
    regression = candidate(
        "sklearn.linear_model.LinearRegression", X_all, X_all[:, 0] * 2, task="regression"
    )
    evaluation = fit_and_dump(regression).evaluation
    assert evaluation is not None and evaluation.loads and evaluation.calibration is None


def test_a_refit_brings_the_chosen_window_up_to_the_newest_row_and_keeps_its_judged_score() -> None:
    """The pool's choice is judged on the holdout it never saw; what deploys is the same window
    length refitted up to the newest row. The boundary moved in the newest rows: the judged
    model misses it, the refit learns it, and the scores the gate gets are the judged ones."""
    from driftd.models.registry import load_artifact
    from driftd.retrain.fit import score

    rng = np.random.default_rng(2)
    X_all = rng.random((1_400, 2))
    y_all = np.where(np.arange(1_400) < 1_000, X_all[:, 0] > 0.5, X_all[:, 0] > 0.2).astype(int)
    X_train, y_train = X_all[:1_000], y_all[:1_000].tolist()
    holdout = (X_all[1_000:], y_all[1_000:].tolist())
    model = ModelConfig(estimator="sklearn.tree.DecisionTreeClassifier", params={"max_depth": 3})
    refit = fit_and_dump(
        FitJob(
            model,
            SCHEMA,
            X_train,
            y_train,
            holdout=holdout,
            metrics=("accuracy",),
            members=(("window", 800),),
            refit=True,
        )
    )
    assert refit.ok and refit.refitted and refit.evaluation is not None, refit.error
    judged = refit.evaluation.scores
    assert judged is not None and judged["accuracy"] < 0.8  # the stale boundary
    deployed = load_artifact(refit.artifact)
    fresh = rng.random((500, 2))
    assert score("accuracy", deployed, fresh, (fresh[:, 0] > 0.2).astype(int).tolist()) > 0.95


def test_a_refit_that_would_answer_for_other_classes_is_not_deployed() -> None:
    """A class first seen in the holdout would leave the judged model's calibration keyed to
    the wrong classes: the judged candidate itself deploys."""
    holdout = (X[:60], [2] * 60)
    result = fit_and_dump(
        FitJob(
            job().model,
            SCHEMA,
            X,
            Y,
            holdout=holdout,
            metrics=("accuracy",),
            members=(("window", 300),),
            refit=True,
        )
    )
    assert result.ok and not result.refitted, result.error


def test_a_stop_is_honoured_at_every_step_of_a_job_through_its_evaluation() -> None:
    """A drift alarm must get the training process within one step, wherever the running job
    is: the pool's candidates, the online learner's chunks of rows (the training rows and the
    holdout), the refit, the dump, and the evaluation's scoring and out-of-fold fits. A stop
    at any one of the questions a job asks ends it there, preempted; the out-of-fold fits ask
    one each."""
    X_all, y_all = logistic(np.random.default_rng(5), 2400)
    base = dataclasses.replace(
        candidate("sklearn.linear_model.LogisticRegression", X_all, y_all, task="classification"),
        members=(("window", 1200), ("recent", 600)),
        online=OnlineFit("river.tree.HoeffdingTreeClassifier", {}, None, max_rows=1000),
        refit=True,
    )

    def questions(job: FitJob) -> int:
        asked = 0

        def never() -> bool:
            nonlocal asked
            asked += 1
            return False

        assert fit_and_dump(job, stop=never).ok
        return asked

    plain, crossed = questions(base), questions(dataclasses.replace(base, cross_fit=True))
    # two members, 1,200 training rows and 1,000 of the holdout in chunks of 200, the refit,
    # the dump, the evaluation's scoring and calibration: more than one question a step
    assert plain > 2 + 6 + 5 + 4
    assert crossed - plain == 5  # one before each out-of-fold fit
    for k in range(1, crossed + 1):
        asked = 0

        def at_k(k: int = k) -> bool:
            nonlocal asked
            asked += 1
            return asked >= k

        result = fit_and_dump(dataclasses.replace(base, cross_fit=True), stop=at_k)
        assert result.preempted and not result.ok, (k, result.error)
        assert asked == k  # it ended at the question that said stop


def test_the_next_job_goes_on_with_the_learner_its_state_restores() -> None:
    """The training process keeps the online learner its last job left and goes on with it
    when the next job brings that job's state, rather than unpickling it: the learner and the
    state it restores must be the same model. A job preempted half way through the learner's
    rows leaves nothing half-taught for the next one."""
    X_all, y_all = logistic(np.random.default_rng(6), 3600)
    online = OnlineFit("river.tree.HoeffdingTreeClassifier", {}, None, max_rows=1000)

    def job(lo: int, state: bytes | None) -> FitJob:
        return dataclasses.replace(
            candidate(
                "sklearn.linear_model.LogisticRegression",
                X_all[lo : lo + 2400],
                y_all[lo : lo + 2400],
                task="classification",
            ),
            members=(("window", 1200),),
            online=dataclasses.replace(online, state=state),
        )

    def taught(result: FitResult) -> list[object]:
        assert result.ok and result.online_state is not None, result.error
        learner = pickle.loads(result.online_state)  # noqa: S301 - pickled just above
        return [*learner.predict(X_all[-400:]), *(m["score"] for m in result.pool)]

    first = fit_and_dump(job(0, None))
    going_on = taught(fit_and_dump(job(1200, first.online_state)))  # the kept learner
    restored = taught(fit_and_dump(job(1200, first.online_state)))  # kept: another state's
    assert going_on == restored

    first = fit_and_dump(job(0, None))
    asked = 0

    def third_chunk() -> bool:
        nonlocal asked
        asked += 1
        return asked == 4  # the member, then the learner's third chunk of rows

    assert fit_and_dump(job(1200, first.online_state), stop=third_chunk).preempted
    assert taught(fit_and_dump(job(1200, first.online_state))) == restored


def test_a_preempted_fit_ends_at_its_next_step_and_the_worker_stays_warm() -> None:
    """A drift alarm asks the training process for a fit that runs long (ARF learning 40,000
    rows takes tens of seconds): it ends within a chunk of rows with a ``preempted`` result,
    and the same warm process runs the next job. A stop that arrives after its fit has ended
    does not stop the next one."""
    X_all, y_all = logistic(np.random.default_rng(3), 80_000)
    long = dataclasses.replace(
        candidate("sklearn.linear_model.LogisticRegression", X_all, y_all, task="classification"),
        online=OnlineFit("river.forest.ARFClassifier", {"seed": 0}, None),
    )
    short = candidate(
        "sklearn.linear_model.LogisticRegression",
        *logistic(np.random.default_rng(4), 400),
        task="classification",
    )
    worker = TrainingWorker()
    try:
        assert worker.preempt() is False  # nothing runs
        done: list[FitResult] = []
        thread = threading.Thread(target=lambda: done.append(worker(long, timeout=300.0)))
        thread.start()
        deadline = time.monotonic() + 60
        while not worker.preempt():  # True once the fit has been handed to the process
            assert time.monotonic() < deadline, "the fit never started"
            time.sleep(0.01)
        asked, pid = time.monotonic(), worker.pid
        thread.join(60)
        assert done and done[0].preempted and not done[0].ok, done
        assert time.monotonic() - asked < 10
        assert worker.preempt() is False
        after = worker(short, timeout=60.0)
        assert after.ok and not after.preempted, after.error
        assert worker.pid == pid
    finally:
        worker.close()
