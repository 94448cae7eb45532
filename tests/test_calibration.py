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
    Correctness,
    IsotonicMap,
    Rows,
    calibrate,
    expected_calibration_error,
)
from driftd.retrain.fit import out_of_fold
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
        (_set("format", 3), "format: expected 1 or 2"),
        (_set("maps", {}), "maps: expected maps, a correctness model, or both"),
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


def subgroup(rng: np.random.Generator, n: int, hard_share: float) -> tuple[np.ndarray, np.ndarray]:
    """An easy cluster and a noisy one (labels nearly coin flips), ``hard_share`` of the rows
    in the noisy one: a boosted model memorises its noise and is as sure there as elsewhere."""
    hard = rng.random(n) < hard_share
    X = rng.normal(0, 1, size=(n, 2)) + np.where(hard[:, None], 3.0, -3.0)
    margin = np.where(hard, 0.6 * (X[:, 0] - 3.0), 3.0 * (X[:, 0] + 3.0))
    return X, (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(int)


def estimate(calibrator: Calibrator | None, model: Any, X: np.ndarray) -> float:
    """The estimated accuracy of ``model`` on ``X``: the mean calibrated probability of each
    predicted class, as the monitor computes it from what serving gives it."""
    raw = model.predict_proba(X)
    predicted = raw.argmax(axis=1)
    proba = raw if calibrator is None else calibrator.apply(raw, X, predicted)
    return float(proba[np.arange(len(X)), predicted].mean())


def test_a_correctness_model_follows_a_shift_toward_where_the_model_is_wrong() -> None:
    """Covariate shift: the noisy region's share grows from 20% to 70%. The probability of
    the predicted class, raw or mapped, keeps saying what the old mixture's accuracy was;
    the correctness model, fitted on the same 1,000-row holdout, follows the inputs: closer
    than the raw confidence in every seed, and within 0.02 in the median of 8 (its tail is
    the holdout's 200 noisy rows, from which it extrapolates)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    raw_errors, mapped_errors, errors = [], [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        model = HistGradientBoostingClassifier(random_state=0).fit(*subgroup(rng, 4000, 0.2))
        X_hold, y_hold = subgroup(rng, 1000, 0.2)
        raw = model.predict_proba(X_hold)
        decision = calibrate(raw, y_hold, raw.argmax(axis=1), ["0", "1"], numeric=X_hold)
        calibrator = decision.calibrator
        assert calibrator is not None and calibrator.correctness is not None
        correctness = {"applied": True, "inputs": 2, "degree": 2, "cross_fitted": 0}
        assert decision.record()["correctness"] == correctness
        X_new, y_new = subgroup(rng, 20_000, 0.7)
        realized = float((model.predict(X_new) == y_new).mean())
        mapped = Calibrator(("0", "1"), calibrator.maps) if calibrator.maps else None
        raw_errors.append(abs(estimate(None, model, X_new) - realized))
        mapped_errors.append(abs(estimate(mapped, model, X_new) - realized))
        errors.append(abs(estimate(calibrator, model, X_new) - realized))
    assert all(e < r for e, r in zip(errors, raw_errors, strict=True)), (errors, raw_errors)
    assert np.median(errors) < 0.02 < min(raw_errors), (errors, raw_errors)
    assert np.median(errors) < np.median(mapped_errors), (errors, mapped_errors)


def onto_boundary(rng: np.random.Generator, n: int, centre: float) -> tuple[np.ndarray, ...]:
    """Logistic classes around x0 + x1 = 0, the inputs ``centre`` off it on either side."""
    x = rng.choice((-1.0, 1.0), size=(n, 1)) * centre + rng.normal(0, 1, size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * (x[:, 0] + x[:, 1])))).astype(int)
    return x, y


def test_a_small_holdouts_correctness_model_learns_from_the_training_rows_out_of_fold() -> None:
    """A first model's 1,000-row holdout, far from the boundary, holds about 25 mistakes: a
    correctness model of them alone misjudges the inputs moving onto the boundary. Lent the
    4,000 training rows, each predicted by a model fitted without its fold, its estimate is
    within 0.015 of the realized accuracy in every seed (alone: up to 0.047), and its mean
    error less than half of the holdout's alone."""
    alone, lent = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        X, y = onto_boundary(rng, 5000, 1.6)
        model = LogisticRegression().fit(X[:4000], y[:4000])
        raw = model.predict_proba(X[4000:])
        top = raw.argmax(axis=1)
        confidence, right = out_of_fold(LogisticRegression, X[:4000], y[:4000])
        assert confidence.shape == right.shape == (4000,) and set(right) == {0.0, 1.0}
        decided = {
            name: calibrate(raw, y[4000:], top, ["0", "1"], numeric=X[4000:], also=also)
            for name, also in (("alone", None), ("lent", Rows(X[:4000], confidence, right)))
        }
        assert decided["lent"].record()["correctness"]["cross_fitted"] == 4000
        X_new, y_new = onto_boundary(rng, 20_000, 0.4)
        realized = float((model.predict(X_new) == y_new).mean())
        alone.append(abs(estimate(decided["alone"].calibrator, model, X_new) - realized))
        lent.append(abs(estimate(decided["lent"].calibrator, model, X_new) - realized))
    assert max(lent) < 0.015 < max(alone), (lent, alone)
    assert np.mean(lent) < np.mean(alone) / 2, (lent, alone)


@pytest.mark.parametrize("seed", range(5))
def test_a_correctness_model_costs_a_calibrated_model_no_more_than_its_holdouts_noise(
    seed: int,
) -> None:
    """A logistic regression on logistic data is calibrated already: the correctness model
    fitted on its holdout moves its estimate of new rows by no more than three standard
    errors of the holdout's accuracy, the sampling error it inherits from those rows."""
    rng = np.random.default_rng(seed)
    model = LogisticRegression().fit(*logistic(rng, 2000))
    X_hold, y_hold = logistic(rng, 1000)
    raw = model.predict_proba(X_hold)
    decision = calibrate(raw, y_hold, raw.argmax(axis=1), ["0", "1"], numeric=X_hold)
    assert decision.calibrator is not None and decision.calibrator.correctness is not None
    X_new, y_new = logistic(rng, 20_000)
    realized = float((model.predict(X_new) == y_new).mean())
    noise = 3 * np.sqrt(realized * (1 - realized) / len(y_hold))
    assert abs(estimate(decision.calibrator, model, X_new) - realized) < noise
    assert abs(estimate(None, model, X_new) - realized) < 0.01  # what it had without


def test_the_correctness_model_sets_the_predicted_class_and_keeps_the_others_in_ratio() -> None:
    flat = Correctness((0.0, 0.0), (1.0, 1.0), 1, (0.0, 0.0), 0.0)  # always 0.5
    calibrator = Calibrator(("a", "b", "c"), (), flat)
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])
    out = calibrator.apply(proba, np.zeros((3, 1)), np.array([0, 2, 0]))
    np.testing.assert_allclose(out, [[0.5, 0.375, 0.125], [0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])
    # without the inputs (a producer's own probabilities) only the maps would apply: none here
    np.testing.assert_allclose(calibrator.apply(proba), proba)


def test_a_correctness_model_round_trips_and_a_format_1_calibrator_still_loads() -> None:
    rng = np.random.default_rng(5)
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=0).fit(*subgroup(rng, 2000, 0.2))
    X_hold, y_hold = subgroup(rng, 1000, 0.2)
    raw = model.predict_proba(X_hold)
    calibrator = calibrate(raw, y_hold, raw.argmax(axis=1), ["0", "1"], numeric=X_hold).calibrator
    assert calibrator is not None and calibrator.correctness is not None
    assert Calibrator.loads(calibrator.dumps()) == calibrator
    old = json.loads(fitted(2).dumps())
    old["format"] = 1
    del old["correctness"]
    assert Calibrator.loads(json.dumps(old).encode()).correctness is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("correctness.degree", 3), r"correctness\.degree: expected 1 or 2"),
        (_set("correctness.scale", [1.0, 0.0]), r"correctness\.scale: expected one positive"),
        (_set("correctness.coef", [0.1]), r"correctness\.coef: expected 2 values"),
        (_set("correctness.intercept", "1"), r"correctness\.intercept: expected a list of"),
        (_set("correctness", {"mean": [0.0]}), r"correctness: expected an object with keys"),
    ],
)
def test_a_malformed_correctness_model_is_refused_naming_the_field(
    change: Any, message: str
) -> None:
    body = json.loads(
        Calibrator(("0", "1"), (), Correctness((0.0, 0.0), (1.0, 1.0), 1, (0.5, -0.5), 0.1)).dumps()
    )
    change(body)
    with pytest.raises(ValueError, match=message):
        Calibrator.loads(json.dumps(body).encode())


def test_a_correctness_model_gives_a_probability_for_any_input() -> None:
    """Inputs far outside the holdout (1e308, its negative, a missing value, an infinite
    one) get a probability in [0, 1], never NaN: the estimate, and the status that shows
    it, must survive what a fuzzer or a broken producer sends."""
    rng = np.random.default_rng(6)
    model = LogisticRegression().fit(*logistic(rng, 2000))
    X_hold, y_hold = logistic(rng, 1000)
    raw = model.predict_proba(X_hold)
    calibrator = calibrate(raw, y_hold, raw.argmax(axis=1), ["0", "1"], numeric=X_hold).calibrator
    assert calibrator is not None and calibrator.correctness is not None
    wild = np.array([[1e308, -1e308], [np.nan, 0.0], [np.inf, -np.inf], [0.0, 0.0]])
    proba = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    out = calibrator.apply(proba, wild, proba.argmax(axis=1))
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
