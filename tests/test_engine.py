"""The engine in process: model swaps and rollbacks on a real registry and store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driftd.config import load_text
from driftd.engine import Engine
from driftd.metrics import Metrics
from driftd.training import FitJob, fit_and_dump, rows_to_matrix
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
