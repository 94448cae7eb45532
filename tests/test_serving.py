"""The live model answers predictions and probabilities from one model call, exactly as apart."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from driftd.models.calibration import calibrate
from driftd.models.serving import ARGMAX_OF_PROBA, LOGISTIC, LiveModel, top_class


def _data(classes: int, seed: int = 0) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (classes > 2) * (X[:, 2] > 0.5)
    names = np.array(["no", "yes", "maybe"])
    return X, names[y]


def _boundary(model: LogisticRegression, X: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``X`` projected onto a binary logistic model's decision boundary (and a hair either
    side of it): rows whose probabilities are tied or nearly so."""
    w, b = model.coef_[0], model.intercept_[0]
    on = X - np.outer((X @ w + b) / (w @ w), w)
    return np.vstack([on, on + 1e-17 * w, on - 1e-17 * w, on + 1e-12 * w])


ESTIMATORS = [
    LogisticRegression(),
    HistGradientBoostingClassifier(max_iter=20, random_state=0),
    RandomForestClassifier(n_estimators=10, random_state=0),
    ExtraTreesClassifier(n_estimators=10, random_state=0),
]


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("steps", [0, 1, 2], ids=["bare", "one-step", "scaled"])
def test_answer_equals_predict_and_predict_proba(estimator: Any, classes: int, steps: int) -> None:
    """For every estimator whose predictions follow from its probabilities, alone or in a
    pipeline, ``answer`` gives what ``predict`` and ``predict_proba`` give apart."""
    X, y = _data(classes)
    if steps == 0:
        model = estimator
    elif steps == 1:
        model = Pipeline([("model", estimator)])
    else:
        model = Pipeline([("scale", StandardScaler()), ("model", estimator)])
    model.fit(X, y)
    probe = np.vstack([X, np.zeros((3, 5)), np.random.default_rng(1).normal(size=(50, 5)) * 5])
    live = LiveModel(1, model, {}, 0.0)
    preds, probas = live.answer(probe, probabilities=True)
    assert preds == model.predict(probe).tolist()
    assert probas == live.probabilities(probe)


def test_rows_on_the_decision_boundary_are_predicted_as_predict_does() -> None:
    """Where a logistic model's two probabilities tie after rounding (a score within 1e-16 of
    zero), the most probable class is not what ``predict`` says; such rows ask ``predict``."""
    X, y = _data(2)
    model = LogisticRegression().fit(X, y)
    edge = _boundary(model, X[:50])
    proba = model.predict_proba(edge)
    assert (model.classes_[proba.argmax(axis=1)] != model.predict(edge)).any()
    _, tied = top_class(proba)
    assert tied.any()
    preds, _ = LiveModel(1, model, {}, 0.0).answer(edge, probabilities=True)
    assert preds == model.predict(edge).tolist()


def test_other_classifiers_keep_two_calls_and_the_same_answers() -> None:
    """A classifier not known to predict the most probable class is asked both ways."""
    X, y = _data(3)
    model = KNeighborsClassifier(n_neighbors=4).fit(X, y)
    assert f"{type(model).__module__}.{type(model).__qualname__}" not in ARGMAX_OF_PROBA
    live = LiveModel(1, model, {}, 0.0)
    preds, probas = live.answer(X, probabilities=True)
    assert preds == model.predict(X).tolist()
    assert probas == live.probabilities(X)


def test_the_known_names_are_the_classes_scikit_learn_has() -> None:
    """A scikit-learn release that moves one of these classes is noticed, not silently slower."""
    for est in ESTIMATORS:
        assert f"{type(est).__module__}.{type(est).__qualname__}" in ARGMAX_OF_PROBA
    assert f"{LogisticRegression.__module__}.{LogisticRegression.__qualname__}" == LOGISTIC


@pytest.mark.parametrize("classes", [2, 3])
def test_a_logistic_regression_answers_what_its_checks_would_and_fails_as_they_do(
    classes: int,
) -> None:
    """A logistic regression's probabilities are computed without scikit-learn's input
    checks, to the bit what ``predict_proba`` gives, far out in the tails too; what those
    checks are for still meets them: a missing value is refused with scikit-learn's own
    error, and another dtype is converted as ``predict_proba`` converts it."""
    X, y = _data(classes)
    model = LogisticRegression().fit(X, y)
    live = LiveModel(1, model, {}, 0.0)
    tails = np.random.default_rng(2).normal(size=(200, 5)) * 40
    for probe in (X, tails, X.astype(np.float32), np.rint(X).astype(np.int64)):
        preds, probas = live.answer(probe, probabilities=True)
        assert probas is not None
        want = model.predict_proba(probe)
        got = np.array([[row[str(c)] for c in model.classes_] for row in probas.raw])
        assert np.array_equal(got, want)
        assert preds == model.predict(probe).tolist()
    holed = X[:3].copy()
    holed[1, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN") as ours:
        live.answer(holed, probabilities=True)
    with pytest.raises(ValueError, match="Input X contains NaN") as theirs:
        model.predict_proba(holed)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("classes", [2, 3])
def test_a_versions_correctness_model_sets_each_predicted_class_probability(classes: int) -> None:
    """The calibrated rows the estimate reads give each prediction the probability the
    version's correctness model gives it being right (from the row's numeric inputs and the
    raw probability of the class that was predicted); the raw rows stay the model's own."""
    X, y = _data(classes)
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X[:300], y[:300])
    raw = model.predict_proba(X[300:])
    index = {c: i for i, c in enumerate(model.classes_.tolist())}
    labels = np.array([index[v] for v in y[300:]])
    names = [str(c) for c in model.classes_]
    calibration = calibrate(raw, labels, raw.argmax(axis=1), names, numeric=X[300:])
    calibrator = calibration.calibrator
    assert calibrator is not None and calibrator.correctness is not None
    probe = np.random.default_rng(2).normal(size=(40, 5))
    preds, probas = LiveModel(1, model, {}, 0.0, calibrator).answer(probe, probabilities=True)
    assert probas is not None
    own = model.predict_proba(probe)
    top = np.array([index[p] for p in preds])
    right = calibrator.correctness(probe, own[np.arange(len(probe)), top])
    got = np.array([row[str(p)] for row, p in zip(probas.calibrated, preds, strict=True)])
    np.testing.assert_allclose(got, right)
    np.testing.assert_allclose([sum(row.values()) for row in probas.calibrated], 1.0)
    assert probas.raw == [dict(zip(names, r, strict=True)) for r in own.tolist()]
