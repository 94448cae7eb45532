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

This module never reads a file: the registry stores and verifies the bytes.

>>> confidence = np.array([0.9, 0.9, 0.6, 0.6])
>>> round(expected_calibration_error(confidence, np.array([1, 1, 1, 0])), 3)
0.1
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BINS",
    "FOLDS",
    "MIN_ROWS",
    "Calibration",
    "Calibrator",
    "IsotonicMap",
    "calibrate",
    "expected_calibration_error",
]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]

FORMAT = 1
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


@dataclass(frozen=True, slots=True)
class Calibrator:
    """Isotonic maps for a model's ``classes`` (as strings, in the model's order): one, of the
    last (positive) class, for two classes; one per class beyond."""

    classes: tuple[str, ...]
    maps: tuple[IsotonicMap, ...]

    def apply(self, proba: Floats) -> Floats:
        """Calibrated rows of ``proba`` (rows by the model's class order), each summing to 1;
        a row every map sends to 0 becomes uniform rather than undefined."""
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
        maps = {c: {"x": list(m.x), "y": list(m.y)} for c, m in zip(mapped, self.maps, strict=True)}
        body = {"format": FORMAT, "method": "isotonic", "classes": list(self.classes), "maps": maps}
        return json.dumps(body, indent=1).encode()

    @classmethod
    def loads(cls, data: bytes) -> Calibrator:
        """Parse :meth:`dumps` output; raise ValueError naming the field that is wrong."""
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from exc
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError(f"format: expected {FORMAT}")
        if body.get("method") != "isotonic":
            raise ValueError("method: expected 'isotonic'")
        classes = body.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("classes: expected a list of class names (strings)")
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError("classes: expected at least two distinct class names")
        mapped = classes[-1:] if len(classes) == 2 else classes
        maps = body.get("maps")
        if not isinstance(maps, dict) or set(maps) != set(mapped):
            raise ValueError(f"maps: expected one map for each of {mapped}")
        return cls(
            tuple(classes), tuple(IsotonicMap.from_dict(maps[c], f"maps.{c}") for c in mapped)
        )


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a deploy's holdout decided: the calibrator (``None`` when it did not help or was
    not tried), the ECE of the raw and of the out-of-fold calibrated probabilities (means
    over the folds) and the standard error of the gain; ``ece_after`` and ``ece_se`` are
    ``None``, and ``folds`` 0, when the holdout had fewer than :data:`MIN_ROWS` rows."""

    calibrator: Calibrator | None
    ece_before: float
    ece_after: float | None
    ece_se: float | None
    folds: int
    rows: int

    def record(self) -> dict[str, Any]:
        """The manifest's account of it."""
        return {
            "method": "isotonic",
            "applied": self.calibrator is not None,
            "ece_before": round(self.ece_before, 6),
            "ece_after": _rounded(self.ece_after),
            "ece_se": _rounded(self.ece_se),
            "folds": self.folds,
            "rows": self.rows,
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
    folds: int = FOLDS,
    seed: int = 0,
) -> Calibration:
    """Decide a version's calibration on its holdout (see the module docstring).

    ``proba`` holds the raw probabilities by the model's class order, ``labels`` and
    ``predicted`` the class indices of the true labels (-1 for a class the model does not
    know) and of the model's predictions. The ECE is that of the predicted class's
    probability, the one the estimate averages."""
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
    mean_before, mean_after = float(np.mean(before)), float(np.mean(after))
    return Calibration(kept, mean_before, mean_after, se, folds, len(labels))


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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _floats(values: Any, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ValueError(f"{where}: expected a list of finite numbers")
    return tuple(float(v) for v in values)
