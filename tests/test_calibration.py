"""Calibration on a deploy's holdout: isotonic maps where they lower the cross-validated ECE of
the predicted class's probability, none where the model was calibrated already, maps that are
exactly scikit-learn's isotonic regression, and a JSON form that refuses anything else."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from driftd.models.calibration import (
    MIN_ROWS,
    Calibration,
    Calibrator,
    IsotonicMap,
    calibrate,
    expected_calibration_error,
)
from tests.streams import logistic, redundant


def decide(model: Any, X: np.ndarray, y: np.ndarray) -> Calibration:
    """The holdout's decision, with the model's own predictions and class order."""
    classes = [str(c) for c in model.classes_]
    return calibrate(model.predict_proba(X), y.astype(np.intp), model.predict(X), classes)


def ece(model: Any, proba: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """The ECE of the predicted class's probability in ``proba`` on ``(X, y)``."""
    predicted = model.predict(X)
    confidence = proba[np.arange(len(y)), predicted]
    return expected_calibration_error(confidence, predicted == y)


@pytest.mark.parametrize("classes", [2, 3])
def test_isotonic_maps_lower_the_ece_of_an_overconfident_model(classes: int) -> None:
    rng = np.random.default_rng(0)
    model = GaussianNB().fit(*redundant(rng, 2000, classes))
    X_hold, y_hold = redundant(rng, 1000, classes)
    decision = decide(model, X_hold, y_hold)
    assert decision.calibrator is not None, decision.record()
    assert decision.ece_after is not None and decision.ece_after < decision.ece_before / 3
    X_new, y_new = redundant(rng, 5000, classes)  # rows the maps never saw
    raw = model.predict_proba(X_new)
    calibrated = decision.calibrator.apply(raw)
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    before, after = ece(model, raw, X_new, y_new), ece(model, calibrated, X_new, y_new)
    assert before > 0.15 and after < before / 3, (before, after)
    assert decision.record()["applied"] is True and decision.record()["folds"] == 5


@pytest.mark.parametrize("seed", range(10))
def test_a_calibrated_model_keeps_its_probabilities(seed: int) -> None:
    """Isotonic maps fitted on a holdout of a calibrated model are steps that add error of
    their own: whatever they gain on the held-out folds is within the noise, and the raw
    probabilities serve."""
    rng = np.random.default_rng(seed)
    model = LogisticRegression().fit(*logistic(rng, 2000))
    decision = decide(model, *logistic(rng, 1000))
    assert decision.calibrator is None, decision.record()
    assert decision.ece_after is not None and decision.ece_se is not None
    assert decision.ece_before - decision.ece_after <= decision.ece_se
    assert decision.record()["applied"] is False


def test_a_holdout_too_small_for_its_folds_is_not_calibrated() -> None:
    rng = np.random.default_rng(2)
    model = GaussianNB().fit(*redundant(rng, 500))
    decision = decide(model, *redundant(rng, MIN_ROWS - 1))
    assert decision.calibrator is None and decision.ece_after is None and decision.folds == 0
    assert decision.ece_before > 0


def test_a_map_computes_what_isotonic_regression_predicts() -> None:
    """The served map is the fitted thresholds, interpolated and clipped: the JSON needs no
    scikit-learn object to reproduce the calibration exactly."""
    rng = np.random.default_rng(3)
    p = rng.random(300)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, rng.random(300) < p)
    curve = IsotonicMap(tuple(iso.X_thresholds_.tolist()), tuple(iso.y_thresholds_.tolist()))
    probe = np.concatenate([rng.random(1000), [0.0, 1.0, -0.1, 1.1]])
    np.testing.assert_allclose(curve(probe), iso.predict(probe), rtol=0, atol=1e-12)


def fitted(classes: int) -> Calibrator:
    rng = np.random.default_rng(4)
    model = GaussianNB().fit(*redundant(rng, 1000, classes))
    calibrator = decide(model, *redundant(rng, 600, classes)).calibrator
    assert calibrator is not None
    return calibrator


@pytest.mark.parametrize("classes", [2, 3])
def test_the_json_round_trips_exactly(classes: int) -> None:
    calibrator = fitted(classes)
    assert Calibrator.loads(calibrator.dumps()) == calibrator
    body = json.loads(calibrator.dumps())
    assert set(body["maps"]) == ({"1"} if classes == 2 else {"0", "1", "2"})


def _set(path: str, value: Any) -> Any:
    def change(body: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        for name in parents:
            body = body[name]
        body[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("format", 2), "format: expected 1"),
        (_set("method", "sigmoid"), "method: expected 'isotonic'"),
        (_set("classes", ["0", "0"]), "classes: expected at least two distinct"),
        (_set("classes", [["0"], "1"]), r"classes: expected a list of class names"),
        (_set("maps", {"0": {"x": [0.5], "y": [0.5]}}), "maps: expected one map for each"),
        (_set("maps.1.y", [0.9] + [0.1] * 9), r"maps\.1\.y: expected non-decreasing"),
        (_set("maps.1.x", [0.5, 0.5]), r"maps\.1: expected 'x' and 'y' of one length"),
        (_set("maps.1", {"x": [0.2, 0.2], "y": [0.1, 0.3]}), r"maps\.1\.x: expected strictly"),
        (_set("maps.1", {"x": [0.5], "y": [float("nan")]}), r"maps\.1\.y: expected a list of"),
        (_set("maps.1", {"x": ["0.5"], "y": [0.5]}), r"maps\.1\.x: expected a list of"),
    ],
)
def test_a_malformed_calibrator_is_refused_naming_the_field(change: Any, message: str) -> None:
    body = json.loads(fitted(2).dumps())
    body["maps"]["1"] = {"x": [0.1 * k for k in range(10)], "y": [0.1 * k for k in range(10)]}
    change(body)
    with pytest.raises(ValueError, match=message):
        Calibrator.loads(json.dumps(body).encode())
