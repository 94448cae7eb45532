"""The training worker: warm between jobs, timeouts that kill, a fresh process after a kill."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from driftd.config import ModelConfig
from driftd.schema import Feature, Schema
from driftd.training import FitJob, TrainingWorker, fit_and_dump

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
