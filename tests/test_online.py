"""The online learner's adapter: stored, verified and served like any version, and never a way
to run code from a file (its retrains are in test_retrainer.py)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import skops.io as sio
from river import forest, tree

from driftd.errors import IntegrityError
from driftd.ingest.schema import Feature, Schema
from driftd.models.inputs import rows_to_matrix
from driftd.models.online import RiverModel
from driftd.models.registry import load_artifact
from driftd.models.serving import LiveModel
from tests.conftest import make_rows

NUMERIC, CATEGORICAL = ("x0", "x1", "x2"), ("color",)


def learned(n: int = 2000, seed: int = 1) -> tuple[RiverModel, np.ndarray, list[int]]:
    rows = make_rows(n, seed=seed)
    schema = Schema(
        features=tuple(
            Feature(name, "categorical" if name in CATEGORICAL else "numeric")
            for name in (*NUMERIC, *CATEGORICAL)
        )
    )
    X = rows_to_matrix(schema, [r["features"] for r in rows])
    y = [r["label"] for r in rows]
    model = RiverModel(tree.HoeffdingTreeClassifier(), numeric=NUMERIC, categorical=CATEGORICAL)
    return model.learn(X, y), X, y


def test_a_snapshot_round_trips_through_skops_and_answers_the_same() -> None:
    model, X, y = learned()
    loaded = load_artifact(sio.dumps(model))
    assert isinstance(loaded, RiverModel) and loaded.learned == 2000
    assert (loaded.predict(X) == model.predict(X)).all()
    assert np.allclose(loaded.predict_proba(X), model.predict_proba(X))
    assert (model.predict(X) == np.asarray(y)).mean() > 0.9


def test_served_predictions_and_probabilities_match_predict_and_predict_proba() -> None:
    """The one-call path of the serving model holds for the adapter: its prediction is the
    argmax of its probabilities, row by row."""
    model, X, _ = learned()
    live = LiveModel(1, model, {}, 0.0)
    preds, proba = live.answer(X[:300], probabilities=True)
    assert preds == model.predict(X[:300]).tolist()
    assert proba is not None and len(proba.raw) == 300
    assert all(abs(sum(p.values()) - 1.0) < 1e-9 for p in proba.raw)


def test_an_artifact_whose_river_state_names_a_function_is_refused() -> None:
    """The adapter's river model is unpickled by the restricted loader: a file that would call
    ``os.system`` on load is refused before anything runs."""
    evil = RiverModel(os.system, numeric=NUMERIC, categorical=CATEGORICAL)
    with pytest.raises(IntegrityError, match=r"refusing to load posix\.system"):
        load_artifact(sio.dumps(evil))
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(pickle.dumps(evil))  # noqa: S301 - the point: the adapter refuses it


def test_a_regressor_snapshot_round_trips_and_answers_the_same() -> None:
    """River's regression trees keep a node method in their state: the restricted loader takes
    exactly those, and the snapshot predicts as the learner did."""
    _, X, y = learned()
    regressor = RiverModel(forest.ARFRegressor(seed=0), numeric=NUMERIC, categorical=CATEGORICAL)
    regressor.learn(X, [float(v) for v in y])
    loaded = load_artifact(sio.dumps(regressor))
    assert np.allclose(loaded.predict(X[:100]), regressor.predict(X[:100]))
    with pytest.raises(AttributeError):
        _ = regressor.classes_
