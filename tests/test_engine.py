"""The engine in process: model swaps and rollbacks on a real registry and store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftd.config import load_text
from driftd.metrics import Metrics
from driftd.models.inputs import rows_to_matrix
from driftd.retrain.fit import FitJob, fit_and_dump
from driftd.service.engine import Engine
from tests.conftest import config_text, make_rows


@pytest.fixture(params=[True, False], ids=["keep_previous", "reload"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    model = (
        'estimator = "sklearn.linear_model.LogisticRegression"\n'
        f"keep_previous = {str(request.param).lower()}"
    )
    cfg = load_text(config_text(tmp_path / "state", bootstrap=None, sections={"model": model}))
    eng = Engine(cfg, Metrics())
    eng.open()
    yield eng
    eng.close()


def deploy(engine: Engine, seed: int) -> int:
    rows = make_rows(300, seed=seed, flip=seed % 2 == 1)
    X = rows_to_matrix(engine.schema, [r["features"] for r in rows])
    fit = fit_and_dump(FitJob(engine.config.model, engine.schema, X, [r["label"] for r in rows]))
    assert fit.ok, fit.error
    warm = [r["features"] for r in rows[:4]]
    version = engine.deploy(fit.artifact, {"reason": "test", "warmup": warm}, X[:4])
    return version.number


def test_a_rollback_serves_the_version_asked_for_and_moves_the_alias(engine: Engine) -> None:
    """With ``keep_previous`` the previous champion comes back from memory (the very object that
    served before); without it, it is loaded, verified and warmed up from the registry again."""
    first = deploy(engine, 0)
    served_first = engine.serving.current
    second = deploy(engine, 1)
    assert engine.serving.current is not None and engine.serving.current.version == second

    live = engine.activate(first, event="rollback", details={"by": "test"})

    assert engine.serving.current is live and live.version == first
    assert engine.reg.aliases().champion == first
    assert served_first is not None
    assert (live.model is served_first.model) == engine.config.model.keep_previous
    # the rolled-back model answers as it did before
    X = rows_to_matrix(engine.schema, [r["features"] for r in make_rows(50, seed=9)])
    assert live.predict(X) == served_first.predict(X)
    kinds = [e.kind for e in engine.store.events(limit=10)]
    assert kinds.count("rollback") == 1 and kinds.count("deploy") == 2


def test_a_rollback_past_the_previous_champion_loads_from_the_registry(engine: Engine) -> None:
    first = deploy(engine, 0)
    served_first = engine.serving.current
    deploy(engine, 1)
    deploy(engine, 2)
    live = engine.activate(first, event="rollback", details={"by": "test"})
    assert served_first is not None and live.version == first
    assert live.model is not served_first.model


def test_a_deploy_serves_the_model_the_training_process_loaded(engine: Engine) -> None:
    """Given the candidate as the training process loaded it, a deploy reads back and verifies
    the published bytes but serves that object: no second load in the serving process."""
    rows = make_rows(300, seed=3)
    X = rows_to_matrix(engine.schema, [r["features"] for r in rows])
    y = [r["label"] for r in rows]
    job = FitJob(engine.config.model, engine.schema, X, y, holdout=(X[:50], y[:50]))
    fit = fit_and_dump(job)
    assert fit.ok and fit.evaluation is not None
    model = fit.evaluation.model()
    assert model is not None
    warm = [r["features"] for r in rows[:4]]
    manifest = {"reason": "test", "warmup": warm}
    version = engine.deploy(fit.artifact, manifest, X[:4], model=model)
    live = engine.serving.current
    assert live is not None and live.version == version.number
    assert live.model is model
    _, from_disk = engine.reg.load(version.number)
    assert live.predict(X) == from_disk.predict(X).tolist()


def test_a_load_from_the_registry_can_run_in_the_training_worker(engine: Engine) -> None:
    """With a loader (the daemon's training worker), a rollback past the previous champion
    verifies the bytes here and has the worker load them; the model serves as loaded here."""
    from driftd.retrain.worker import TrainingWorker

    first = deploy(engine, 0)
    deploy(engine, 1)
    deploy(engine, 2)
    worker = TrainingWorker()
    worker.start()
    loaded: list[Any] = []

    def loader(data: bytes, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 60  # the worker starts in the background
        while (model := worker.load(data, **kwargs)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        loaded.append(model)
        return model

    engine.loader = loader
    try:
        live = engine.activate(first, event="rollback", details={"by": "test"})
    finally:
        worker.close()
    assert live.version == first and loaded and live.model is loaded[0]
    X = rows_to_matrix(engine.schema, [r["features"] for r in make_rows(50, seed=9)])
    _, from_disk = engine.reg.load(first)
    assert live.predict(X) == from_disk.predict(X).tolist()


@pytest.mark.parametrize("outcome", ["cannot now", "fails"])
def test_a_loader_that_cannot_load_leaves_the_load_to_the_engine(
    engine: Engine, outcome: str
) -> None:
    """A worker busy fitting (None) or one whose load broke (an exception): the rollback still
    happens, loading in this process."""
    first = deploy(engine, 0)
    deploy(engine, 1)
    deploy(engine, 2)
    calls: list[bytes] = []

    def loader(data: bytes, **kwargs: Any) -> Any:
        calls.append(data)
        if outcome == "fails":
            raise EOFError("the worker went away")
        return None

    engine.loader = loader
    live = engine.activate(first, event="rollback", details={"by": "test"})
    assert calls and live.version == first and engine.serving.current is live
