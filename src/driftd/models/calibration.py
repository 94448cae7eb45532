"""Calibrated class probabilities: the isotonic maps a version applies, and when it gets them.

The estimated score (:mod:`driftd.monitor.estimated`) is the mean probability of the predicted
class, so its bias over any window is at most the expected calibration error (ECE) of that
probability. A model whose probabilities are not calibrated (naive Bayes on correlated
features, boosted trees, an SVM's Platt scores on a shifted holdout) gets isotonic maps fitted
on its deploy's holdout, but only where they help: the holdout is cut in ``folds``, maps fitted
on the other folds calibrate each fold, and the maps are kept only if they lower the ECE on the
held-out folds, against the raw probabilities' ECE on the same folds, by more than the standard
error of that gain over the folds (the one-standard-error rule of model selection: the simpler
choice, no maps, wins a tie within noise). A strict "lower" would not do: on 40 holdouts of
200 rows of an already calibrated logistic regression it keeps maps for 12, by chance, and
their steps then add 0.02 to 0.07 to the ECE on new rows; the rule keeps them for 4. Maps that
help, they keep: for naive Bayes on redundant features, on every one of those holdouts.

A binary model gets one map, on the positive class, the other being its complement; a model
with more classes one map per class (one-vs-rest), its rows renormalised to sum to 1, as
scikit-learn's ``CalibratedClassifierCV`` does. A map is the fitted ``IsotonicRegression``'s
``X_thresholds_`` and ``y_thresholds_``, applied by linear interpolation clipped at the ends,
which is what ``IsotonicRegression.predict`` computes; a calibrator is therefore plain JSON,
and loading one runs no code and needs no trusted types.

A probability of the predicted class that is calibrated on average can still be wrong where
the inputs go: a boosted model that memorised a noisy region is as confident there as in a
clean one, so when the noisy region's share grows, a map of the confidence alone (fitted on
the old mixture) overstates the accuracy. So the holdout also fits a **correctness model**,
the probability that the prediction is right given the numeric inputs and the predicted
class's raw probability: a ridge logistic regression on their standardized values and, where
the holdout has ten rows per term, their squares and pairwise products (a second degree is
the least that can say "wrong near a boundary, on both sides of it"; a linear model of the
inputs can only say "wrong on one side"). It is fitted on every holdout of
:data:`MIN_ROWS` rows or more, not kept by a rule: what it is for cannot be seen on the
holdout's own mixture, where a calibrated confidence is right on average too (measured: the
one-standard-error rule on the out-of-fold Brier score, and on the ECE over k-means regions of
the inputs, never kept it, in any seed of the benchmark's scenarios, including those where it
halves the error under shift). Its price is the sampling error of the rows it learns from,
which its estimate inherits (a logistic regression's mean prediction is its training rows'
mean): about ``sqrt(a (1 - a) / rows)`` for an accuracy ``a``, 0.013 at 1,000 rows and 0.82,
0.006 at 4,000. So a small holdout is lent more rows (:class:`Rows`): the training rows, each
predicted by a model of the same family fitted without it (out of fold), whose mistakes are
the family's as the holdout's are (:func:`driftd.retrain.fit.out_of_fold`). It sets each
row's probability of the predicted class, the others scaled to the rest. Under covariate
shift, where the chance of being right given the inputs stays put, its estimate follows the
inputs; a map of the confidence cannot.

This module never reads a file: the registry stores and verifies the bytes.

>>> confidence = np.array([0.9, 0.9, 0.6, 0.6])
>>> round(expected_calibration_error(confidence, np.array([1, 1, 1, 0])), 3)
0.1
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BINS",
    "FOLDS",
    "MIN_ROWS",
    "Calibration",
    "Calibrator",
    "Correctness",
    "IsotonicMap",
    "Rows",
    "calibrate",
    "expected_calibration_error",
]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]

FORMAT = 2  # 2 added the correctness model; a version written in format 1 still loads
#: How far from its mean, in standard deviations, an input of the correctness model reaches.
REACH = 10.0
ROWS_PER_TERM = 10  # the second degree only where the holdout has this many rows per term
BINS = 10  # equal-width confidence bins of the ECE
FOLDS = 5
#: Below this many holdout rows a fold holds too few rows per bin for its ECE to mean anything:
#: the maps are not tried, and the raw probabilities serve.
MIN_ROWS = 100


@dataclass(frozen=True, slots=True)
class IsotonicMap:
    """A non-decreasing map of [0, 1] onto [0, 1]: linear between the points, flat past them."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, p: Floats) -> Floats:
        return np.interp(p, self.x, self.y)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> IsotonicMap:
        """Check a map read from JSON; raise ValueError naming ``where`` and what is wrong."""
        if not isinstance(data, dict) or set(data) != {"x", "y"}:
            raise ValueError(f"{where}: expected an object with keys 'x' and 'y'")
        x, y = (_floats(data[k], f"{where}.{k}") for k in ("x", "y"))
        if not x or len(x) != len(y):
            raise ValueError(f"{where}: expected 'x' and 'y' of one length, at least 1")
        if any(b <= a for a, b in itertools.pairwise(x)):
            raise ValueError(f"{where}.x: expected strictly increasing values")
        if any(b < a for a, b in itertools.pairwise(y)) or not 0 <= y[0] <= y[-1] <= 1:
            raise ValueError(f"{where}.y: expected non-decreasing values in [0, 1]")
        return cls(x, y)


@dataclass(frozen=True)
class Correctness:
    """The probability that the model's prediction is right, from the row's numeric inputs and
    the raw probability of its predicted class (see the module docstring). ``mean`` and
    ``scale`` standardize the inputs, the confidence's logit last; ``coef`` weighs their
    :func:`_terms` of ``degree``. It is called on the serving path, once per prediction, so
    its arrays are made once, here."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    degree: int
    coef: tuple[float, ...]
    intercept: float
    _arrays: tuple[Floats, Floats, Floats] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arrays = (np.array(self.mean), np.array(self.scale), np.array(self.coef))
        object.__setattr__(self, "_arrays", arrays)

    def __call__(self, numeric: Floats, confidence: Floats) -> Floats:
        mean, scale, coef = self._arrays
        z = _standardized(_stacked(numeric, confidence), mean, scale)
        logit = _terms(z, self.degree) @ coef + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-logit)))

    @property
    def inputs(self) -> int:
        """How many numeric inputs it reads (the model's first columns)."""
        return len(self.mean) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "scale": list(self.scale),
            "degree": self.degree,
            "coef": list(self.coef),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Correctness:
        """Check a correctness model read from JSON; raise ValueError naming the field."""
        keys = {"mean", "scale", "degree", "coef", "intercept"}
        if not isinstance(data, dict) or set(data) != keys:
            raise ValueError(f"{where}: expected an object with keys {sorted(keys)}")
        mean, scale, coef = (_floats(data[k], f"{where}.{k}") for k in ("mean", "scale", "coef"))
        degree, intercept = data["degree"], data["intercept"]
        if degree not in (1, 2) or isinstance(degree, bool):
            raise ValueError(f"{where}.degree: expected 1 or 2")
        if not mean or len(scale) != len(mean) or any(v <= 0 for v in scale):
            raise ValueError(f"{where}.scale: expected one positive value per mean")
        if len(coef) != _width(len(mean), degree):
            raise ValueError(f"{where}.coef: expected {_width(len(mean), degree)} values")
        (intercept,) = _floats([intercept], f"{where}.intercept")
        return cls(mean, scale, degree, coef, intercept)


@dataclass(frozen=True, slots=True)
class Calibrator:
    """Isotonic maps for a model's ``classes`` (as strings, in the model's order): one, of the
    last (positive) class, for two classes; one per class beyond; none when only the
    ``correctness`` model is kept."""

    classes: tuple[str, ...]
    maps: tuple[IsotonicMap, ...]
    correctness: Correctness | None = None

    def apply(
        self,
        proba: Floats,
        X: npt.NDArray[Any] | None = None,
        predicted: Ints | None = None,
    ) -> Floats:
        """Calibrated rows of ``proba`` (rows by the model's class order), each summing to 1;
        a row every map sends to 0 becomes uniform rather than undefined. With the rows'
        inputs ``X`` (the model's input matrix, numeric columns first), a correctness model
        then sets the probability of each row's ``predicted`` class (by index; by default the
        most probable one)."""
        out = self._mapped(proba)
        if self.correctness is None or X is None:
            return out
        top = proba.argmax(axis=1) if predicted is None else predicted
        numeric = np.asarray(X[:, : self.correctness.inputs], dtype=np.float64)
        right = self.correctness(numeric, proba[np.arange(len(proba)), top])
        return _with_predicted(out, top, right)

    def _mapped(self, proba: Floats) -> Floats:
        if not self.maps:
            return proba
        if len(self.classes) == 2:
            positive = self.maps[0](proba[:, 1])
            return np.column_stack([1.0 - positive, positive])
        mapped = np.column_stack([m(proba[:, k]) for k, m in enumerate(self.maps)])
        total = mapped.sum(axis=1, keepdims=True)
        out = np.full_like(mapped, 1.0 / len(self.classes))
        np.divide(mapped, total, out=out, where=total > 0)
        return out

    def dumps(self) -> bytes:
        """The calibrator as JSON (floats written exactly), maps keyed by their class."""
        mapped = self.classes[-1:] if len(self.classes) == 2 else self.classes
        curves = zip(mapped, self.maps, strict=True) if self.maps else ()
        maps = {c: {"x": list(m.x), "y": list(m.y)} for c, m in curves}
        body = {
            "format": FORMAT,
            "method": "isotonic",
            "classes": list(self.classes),
            "maps": maps,
            "correctness": None if self.correctness is None else self.correctness.to_dict(),
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def loads(cls, data: bytes) -> Calibrator:
        """Parse :meth:`dumps` output; raise ValueError naming the field that is wrong."""
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from exc
        if not isinstance(body, dict) or body.get("format") not in (1, FORMAT):
            raise ValueError(f"format: expected 1 or {FORMAT}")
        if body.get("method") != "isotonic":
            raise ValueError("method: expected 'isotonic'")
        classes = body.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("classes: expected a list of class names (strings)")
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError("classes: expected at least two distinct class names")
        mapped = classes[-1:] if len(classes) == 2 else classes
        maps = body.get("maps")
        raw = body.get("correctness")
        correctness = None if raw is None else Correctness.from_dict(raw, "correctness")
        if not isinstance(maps, dict) or set(maps) not in (set(mapped), set()):
            raise ValueError(f"maps: expected one map for each of {mapped}")
        if not maps and correctness is None:
            raise ValueError("maps: expected maps, a correctness model, or both")
        return cls(
            tuple(classes),
            tuple(IsotonicMap.from_dict(maps[c], f"maps.{c}") for c in mapped if maps),
            correctness,
        )


@dataclass(frozen=True, slots=True)
class Rows:
    """More rows for the correctness model than the holdout's: the ``numeric`` inputs of
    rows the model did not learn from, the probability of the class predicted for each
    (``confidence``) and whether that class was right (``right``, 1.0 or 0.0)."""

    numeric: Floats
    confidence: Floats
    right: Floats

    def __len__(self) -> int:
        return len(self.right)


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a deploy's holdout decided: the calibrator (``None`` when its maps did not help
    and no correctness model was fitted), the ECE of the raw and of the out-of-fold calibrated
    probabilities (means over the folds) and the standard error of the gain; ``ece_after``
    and ``ece_se`` are ``None``, and ``folds`` 0, when the holdout had fewer than
    :data:`MIN_ROWS` rows. ``correctness`` says whether a correctness model was fitted, on how
    many inputs, of which degree, and on how many rows beyond the holdout's
    (``cross_fitted``; ``None`` when there were no numeric inputs)."""

    calibrator: Calibrator | None
    ece_before: float
    ece_after: float | None
    ece_se: float | None
    folds: int
    rows: int
    correctness: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The manifest's account of it."""
        return {
            "method": "isotonic",
            "applied": self.calibrator is not None and bool(self.calibrator.maps),
            "ece_before": round(self.ece_before, 6),
            "ece_after": _rounded(self.ece_after),
            "ece_se": _rounded(self.ece_se),
            "folds": self.folds,
            "rows": self.rows,
            "correctness": self.correctness,
        }


def expected_calibration_error(
    confidence: Floats, correct: npt.NDArray[Any], bins: int = BINS
) -> float:
    """The rows' mean gap between confidence and accuracy per equal-width confidence bin,
    weighted by the bin's share of rows: ``sum_b |sum_{i in b} (correct_i - confidence_i)| / n``.
    """
    which = np.minimum((confidence * bins).astype(np.intp), bins - 1)
    gaps = np.bincount(which, weights=correct.astype(np.float64) - confidence, minlength=bins)
    return float(np.abs(gaps).sum() / max(len(confidence), 1))


def calibrate(
    proba: Floats,
    labels: Ints,
    predicted: Ints,
    classes: Sequence[str],
    *,
    numeric: Floats | None = None,
    also: Rows | None = None,
    folds: int = FOLDS,
    seed: int = 0,
) -> Calibration:
    """Decide a version's calibration on its holdout (see the module docstring).

    ``proba`` holds the raw probabilities by the model's class order, ``labels`` and
    ``predicted`` the class indices of the true labels (-1 for a class the model does not
    know) and of the model's predictions. The ECE is that of the predicted class's
    probability, the one the estimate averages. With the holdout's ``numeric`` inputs (the
    model's numeric columns), a correctness model is fitted too, on ``also``'s rows as
    well as the holdout's; the maps are the holdout's alone."""
    from sklearn.model_selection import KFold

    if len(labels) < MIN_ROWS:
        return Calibration(None, _ece(proba, labels, predicted), None, None, 0, len(labels))
    before, after = [], []
    for fit_rows, test_rows in KFold(folds, shuffle=True, random_state=seed).split(proba):
        maps = _fit(proba[fit_rows], labels[fit_rows], classes)
        truth, guess = labels[test_rows], predicted[test_rows]
        before.append(_ece(proba[test_rows], truth, guess))
        after.append(_ece(maps.apply(proba[test_rows]), truth, guess))
    gains = np.subtract(before, after)
    se = float(gains.std(ddof=1) / math.sqrt(folds))
    kept = _fit(proba, labels, classes) if gains.mean() > se else None
    correctness, account = None, None
    if numeric is not None and numeric.shape[1] > 0:
        right = (labels == predicted).astype(np.float64)
        confidence = proba[np.arange(len(labels)), predicted]
        if also is not None and len(also):
            numeric = np.vstack([numeric, also.numeric])
            confidence = np.concatenate([confidence, also.confidence])
            right = np.concatenate([right, also.right])
        correctness = _fit_correctness(numeric, confidence, right)
        account = {
            "applied": correctness is not None,
            "inputs": numeric.shape[1],
            "degree": None if correctness is None else correctness.degree,
            "cross_fitted": 0 if also is None else len(also),
        }
    calibrator = None
    if kept is not None or correctness is not None:
        maps_kept = () if kept is None else kept.maps
        calibrator = Calibrator(tuple(classes), maps_kept, correctness)
    mean_before, mean_after = float(np.mean(before)), float(np.mean(after))
    return Calibration(calibrator, mean_before, mean_after, se, folds, len(labels), account)


def _ece(proba: Floats, labels: Ints, predicted: Ints) -> float:
    """The ECE of each row's probability of its predicted class."""
    confidence = proba[np.arange(len(predicted)), predicted]
    return expected_calibration_error(confidence, labels == predicted)


def _fit(proba: Floats, labels: Ints, classes: Sequence[str]) -> Calibrator:
    """Isotonic maps of each mapped class's probability onto its one-vs-rest outcome."""
    from sklearn.isotonic import IsotonicRegression

    mapped = [len(classes) - 1] if len(classes) == 2 else range(len(classes))
    maps = []
    for k in mapped:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(proba[:, k], (labels == k).astype(np.float64))
        maps.append(
            IsotonicMap(tuple(iso.X_thresholds_.tolist()), tuple(iso.y_thresholds_.tolist()))
        )
    return Calibrator(tuple(classes), tuple(maps))


def _fit_correctness(numeric: Floats, confidence: Floats, right: Floats) -> Correctness | None:
    """A correctness model of these rows (see :class:`Correctness`); ``None`` when they are
    all right or all wrong. L2-penalised (scikit-learn's default ``C=1``) on standardized
    terms, so that a term the rows say little about stays near 0."""
    from sklearn.linear_model import LogisticRegression

    if right.min() == right.max():
        return None
    stacked = _stacked(numeric, confidence)
    with np.errstate(all="ignore"):  # an all-missing column: mean 0, scale 1
        mean = np.nan_to_num(np.nanmean(stacked, axis=0))
        scale = np.nan_to_num(np.nanstd(stacked, axis=0))
    scale[scale <= 1e-12] = 1.0
    k = stacked.shape[1]
    degree = 2 if _width(k, 2) * ROWS_PER_TERM <= len(right) else 1
    z = _standardized(stacked, mean, scale)
    fitted = LogisticRegression(C=1.0, max_iter=1000).fit(_terms(z, degree), right.astype(int))
    return Correctness(
        tuple(mean.tolist()),
        tuple(scale.tolist()),
        degree,
        tuple(fitted.coef_[0].tolist()),
        float(fitted.intercept_[0]),
    )


def _logit(p: Floats) -> Floats:
    q = np.minimum(np.maximum(p, 1e-6), 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)))


def _stacked(numeric: Floats, confidence: Floats) -> Floats:
    """The correctness model's inputs, a new matrix: the numeric inputs, then the logit of
    the confidence."""
    z = np.empty((len(confidence), numeric.shape[1] + 1))
    z[:, :-1] = numeric
    z[:, -1] = _logit(confidence)
    return z


def _standardized(z: Floats, mean: Floats, scale: Floats) -> Floats:
    """``z`` (:func:`_stacked`) standardized in place; a missing input is its mean, and one
    beyond :data:`REACH` standard deviations counts as that far (a quadratic fitted within a
    few has nothing to say of 1e300, and must not overflow on it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        z -= mean
        z /= scale
    np.copyto(z, 0.0, where=np.isnan(z))
    return np.clip(z, -REACH, REACH, out=z)


def _width(k: int, degree: int) -> int:
    """How many terms :func:`_terms` makes of ``k`` inputs."""
    return k if degree == 1 else k + k * (k + 1) // 2


def _terms(z: Floats, degree: int) -> Floats:
    """The inputs, then (degree 2) every product of two of them, squares included."""
    if degree == 1:
        return z
    i, j = _pairs(z.shape[1])
    return np.hstack([z, z[:, i] * z[:, j]])


@functools.cache
def _pairs(k: int) -> tuple[Ints, Ints]:
    """The column pairs of :func:`_terms`' products, in their order."""
    i, j = np.triu_indices(k)
    return i, j


def _with_predicted(proba: Floats, predicted: Ints, right: Floats) -> Floats:
    """``proba`` with each row's ``predicted`` class at ``right`` and the other classes scaled
    to share the rest as they did (evenly where they had nothing)."""
    rows = np.arange(len(proba))
    if proba.shape[1] == 2:  # the other class has the rest
        out = np.empty_like(proba)
        out[rows, predicted] = right
        out[rows, 1 - predicted] = 1.0 - right
        return out
    out = proba.copy()
    out[rows, predicted] = 0.0
    rest = out.sum(axis=1)
    others = proba.shape[1] - 1
    share = np.where(rest[:, None] > 0, out / np.where(rest > 0, rest, 1.0)[:, None], 1 / others)
    out = share * (1.0 - right)[:, None]
    out[rows, predicted] = right
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _floats(values: Any, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ValueError(f"{where}: expected a list of finite numbers")
    return tuple(float(v) for v in values)
