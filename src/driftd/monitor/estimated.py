"""The live score estimated from the model's probabilities, before any label arrives (CBPE).

Confidence-based performance estimation: if the probability the model gives its predicted
class is calibrated (of the records given 0.8, 80% are right), then the expected accuracy of a
window of predictions is the mean of those probabilities, and the expected confusion matrix of
a binary model follows from the probability of the positive class. The estimate needs no label,
so it sees a fall in accuracy caused by a shift of the inputs (covariate shift) as soon as the
predictions are made. It cannot see a change of the concept (the same inputs now meaning
another class): the probabilities do not change, only the labels do.

The band is the sampling error of the realized score given the probabilities: each record is
right with its own probability, so the realized accuracy of ``n`` records has variance
``sum(p (1 - p)) / n**2``; F1 and ROC AUC get theirs by the delta method and by Hanley and
McNeil's formula. ``value ± 3 SE`` is reported, as NannyML does.

>>> est = EstimatedScore(window=4, min_count=2)
>>> est.extend([0.9, 0.8, 0.7, 0.6], positives=None)
>>> round(est.scores()["accuracy"].value, 2)
0.75
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "EstimatedScore"]

BAND_SE = 3.0  # the band's half-width in standard errors


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimated score with its sampling-error band, over ``count`` predictions."""

    value: float
    lower: float
    upper: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "lower": self.lower, "upper": self.upper, "count": self.count}


class EstimatedScore:
    """Accuracy, and for a binary model F1 and ROC AUC, expected over the last ``window``
    predictions from their probabilities.

    Parameters
    ----------
    window
        Number of most recent predictions the estimate covers.
    min_count
        Nothing is estimated until this many predictions with probabilities arrived.
    """

    def __init__(self, window: int, min_count: int) -> None:
        self.window = window
        self.min_count = min_count
        self.reset()

    def reset(self) -> None:
        self._confidence: deque[float] = deque(maxlen=self.window)
        # For a binary model: the probability of the positive class, and whether it was
        # predicted. NaN where the model has more than two classes.
        self._positive: deque[float] = deque(maxlen=self.window)
        self._predicted: deque[bool] = deque(maxlen=self.window)

    def extend(
        self, confidence: Sequence[float], *, positives: Sequence[tuple[float, bool]] | None
    ) -> None:
        """Add predictions: the probability of each predicted class and, for a binary model,
        ``(probability of the positive class, predicted positive)``."""
        self._confidence.extend(confidence)
        if positives is None:
            self._positive.extend([math.nan] * len(confidence))
            self._predicted.extend([False] * len(confidence))
        else:
            self._positive.extend(p for p, _ in positives)
            self._predicted.extend(pred for _, pred in positives)

    def configure(self, window: int, min_count: int) -> None:
        """New settings (a restart under another config): keep the most recent ``window``
        predictions."""
        self.min_count = min_count
        if window != self.window:
            self.window = window
            self._confidence = deque(self._confidence, maxlen=window)
            self._positive = deque(self._positive, maxlen=window)
            self._predicted = deque(self._predicted, maxlen=window)

    @property
    def count(self) -> int:
        return len(self._confidence)

    def scores(self) -> dict[str, Estimate]:
        """The estimates that can be made now: accuracy, and F1 and ROC AUC when every
        prediction in the window came from a binary model."""
        n = len(self._confidence)
        if n < min(self.min_count, self.window) or n == 0:
            return {}
        conf = np.fromiter(self._confidence, dtype=np.float64, count=n)
        out = {
            "accuracy": _bounded(conf.mean(), math.sqrt(float((conf * (1 - conf)).sum())) / n, n)
        }
        positive = np.fromiter(self._positive, dtype=np.float64, count=n)
        if not np.isnan(positive).any():
            predicted = np.fromiter(self._predicted, dtype=bool, count=n)
            if (f1 := _f1(positive, predicted)) is not None:
                out["f1"] = f1
            if (auc := _roc_auc(positive)) is not None:
                out["roc_auc"] = auc
        return out


def _bounded(value: float, se: float, n: int) -> Estimate:
    v = float(value)
    return Estimate(v, max(0.0, v - BAND_SE * se), min(1.0, v + BAND_SE * se), n)


def _f1(p: np.ndarray, predicted: np.ndarray) -> Estimate | None:
    """Expected F1 from the expected confusion matrix: TP = the positive probability summed
    over predicted positives, FN over predicted negatives; FP = predicted positives - TP."""
    n_pred = float(predicted.sum())
    tp, fn = float(p[predicted].sum()), float(p[~predicted].sum())
    denom = n_pred + tp + fn
    if denom == 0:
        return None
    value = 2 * tp / denom
    var_tp = float((p[predicted] * (1 - p[predicted])).sum())
    var_fn = float((p[~predicted] * (1 - p[~predicted])).sum())
    d_tp, d_fn = 2 * (n_pred + fn) / denom**2, -2 * tp / denom**2
    return _bounded(value, math.sqrt(d_tp**2 * var_tp + d_fn**2 * var_fn), len(p))


def _roc_auc(p: np.ndarray) -> Estimate | None:
    """Expected ROC AUC when the scores are the probabilities themselves: the expected number
    of (positive, negative) pairs the scores order right, ties counting half, over the expected
    number of pairs; band from Hanley and McNeil with the expected class counts."""
    order = np.argsort(p, kind="stable")
    s, q = p[order], 1 - p[order]
    # the expected negatives scored strictly below each record, and those tied with it
    before = np.cumsum(q) - q
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    below = np.repeat(before[first], counts)
    tied = np.repeat(np.add.reduceat(q, first), counts) - q
    concordant = float((s * (below + 0.5 * tied)).sum())
    pos, neg = float(s.sum()), float(q.sum())
    pairs = pos * neg - float((s * q).sum())
    if pairs <= 0:
        return None
    auc = min(1.0, max(0.0, concordant / pairs))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (pos - 1) * (q1 - auc**2) + (neg - 1) * (q2 - auc**2)) / (pos * neg)
    return _bounded(auc, math.sqrt(max(var, 0.0)), len(p))
