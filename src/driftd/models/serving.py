"""The live model: one reference, read once per request, replaced only by a warmed-up model.

A new model is loaded and answers a few real predictions before :meth:`Serving.swap` moves the
reference, so no request ever sees a half-loaded model: a request holds the
:class:`LiveModel` it read for its whole life, and the swap is a single assignment. A version's
calibrator is part of its :class:`LiveModel`, so a batch's probabilities are calibrated by the
version that gave them.

A prediction that also needs its class probabilities costs one model call, not two, for the
estimators whose ``predict`` follows exactly from ``predict_proba`` (see
:data:`ARGMAX_OF_PROBA`): on a model this cheap, scikit-learn's input checks are most of a call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.ingest.schema import Label
from driftd.models.calibration import Calibrator
from driftd.models.online import RIVER_MODEL

__all__ = ["ARGMAX_OF_PROBA", "LiveModel", "Probabilities", "Serving", "WarmupError", "top_class"]

log = logging.getLogger(__name__)

# Classifiers whose ``predict`` is the class of the highest of scores that ``predict_proba`` maps
# to the probabilities monotonically, row by row (scikit-learn 1.9): LogisticRegression and
# HistGradientBoostingClassifier take the sign or the argmax of their decision function, whose
# expit or softmax are the probabilities; the forests take the argmax of ``predict_proba``
# itself, as driftd's online adapter does (driftd.models.online). So the most probable class is
# the predicted one wherever it is not (nearly) tied; tied rows ask ``predict`` (see
# :func:`top_class`). Exact types only: a subclass may predict otherwise.
ARGMAX_OF_PROBA = frozenset(
    {
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        RIVER_MODEL,
    }
)
PIPELINE = "sklearn.pipeline.Pipeline"
LOGISTIC = "sklearn.linear_model._logistic.LogisticRegression"
# Far above the rounding of an expit or a softmax (a few units in the last place of 1.0), far
# below any difference between two classes' probabilities that decides a prediction.
TIE = 1e-9


class WarmupError(RuntimeError):
    """The model failed to answer its warm-up predictions."""


@dataclass(frozen=True, slots=True)
class Probabilities:
    """A batch's class probabilities, class (as a string) -> probability per row: ``raw`` as
    the model gave them, which the store keeps, and ``calibrated`` through the version's
    calibrator, which the estimate reads (the same rows when the version has none)."""

    raw: list[dict[str, float]]
    calibrated: list[dict[str, float]]


@dataclass(frozen=True, slots=True)
class LiveModel:
    version: int
    model: Any
    manifest: dict[str, Any]
    loaded_at: float
    calibrator: Calibrator | None = None

    def predict(self, X: npt.NDArray[Any]) -> list[Label]:
        out: npt.NDArray[Any] = self.model.predict(X)
        return _labels(out)

    def answer(
        self, X: npt.NDArray[Any], *, probabilities: bool
    ) -> tuple[list[Label], Probabilities | None]:
        """The predictions and, when asked for, the class probabilities (as
        :meth:`probabilities`), equal to ``predict`` and ``probabilities`` called apart, from
        one model call when the model is one of :data:`ARGMAX_OF_PROBA`."""
        if not probabilities:
            return self.predict(X), None
        derived = _derived(self.model, X)
        if derived is not None:
            preds, raw = derived
            return preds, self._calibrated(raw, X, preds)
        preds = self.predict(X)
        return preds, self.probabilities(X, preds)

    def class_names(self) -> tuple[str, ...] | None:
        """The model's classes as strings, in its order, or ``None`` for a model without any."""
        classes = getattr(self.model, "classes_", None)
        return None if classes is None else tuple(str(c) for c in np.asarray(classes).tolist())

    def raw_probabilities(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64] | None:
        """Each row's class probabilities by the model's class order, or ``None`` for a model
        that gives none (a regressor, an SVC without ``probability=True``) or gives some that
        are not finite."""
        proba = getattr(self.model, "predict_proba", None)  # absent where it is not offered
        names = self.class_names()
        if proba is None or names is None:
            return None
        try:
            out = np.asarray(proba(X), dtype=np.float64)
        except (AttributeError, NotImplementedError, ValueError, TypeError):
            return None
        if not _usable(out, names):
            return None
        return out

    def probabilities(
        self, X: npt.NDArray[Any], preds: list[Label] | None = None
    ) -> Probabilities | None:
        """Each row's probabilities, raw and calibrated (see :class:`Probabilities`); a
        correctness model calibrates the probability of ``preds`` (default: the most probable
        classes)."""
        raw = self.raw_probabilities(X)
        return None if raw is None else self._calibrated(raw, X, preds)

    def _calibrated(
        self, raw: npt.NDArray[np.float64], X: npt.NDArray[Any], preds: list[Label] | None
    ) -> Probabilities | None:
        names = self.class_names()
        if names is None:
            return None
        rows = _rows(names, raw)
        calibrator = self.calibrator
        if calibrator is None:
            return Probabilities(rows, rows)
        if calibrator.correctness is None:  # no need to know which class each row predicted
            return Probabilities(rows, _rows(names, calibrator.apply(raw)))
        top = raw.argmax(axis=1)
        if preds is not None:  # a class the model has no column for keeps the top one
            index = {name: i for i, name in enumerate(names)}
            top = np.array([index.get(str(p), t) for p, t in zip(preds, top.tolist(), strict=True)])
        return Probabilities(rows, _rows(names, calibrator.apply(raw, X, top)))

    def warm_up(self, rows: npt.NDArray[Any]) -> float:
        """Predict ``rows`` one at a time; raise :class:`WarmupError` on any
        failure. Returns the fastest single-row latency in seconds, leaving out the first call,
        which pays one-time costs (thread pools, caches) that warm-up exists to absorb. The
        fastest, not the median: the latency rule is there to catch a model that is slow on
        every call, and the training process that measures it runs at a lower CPU priority,
        so on a busy host most of its calls wait for the CPU (a bootstrap beside a benchmark
        failed the 250 ms rule on a 1,212 ms median of a model that answers in 1 ms)."""
        times = []
        for i in range(len(rows)):
            start = time.perf_counter()
            try:
                out = self.predict(rows[i : i + 1])
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                raise WarmupError(f"v{self.version}: warm-up prediction failed ({why})") from exc
            times.append(time.perf_counter() - start)
            if len(out) != 1:
                raise WarmupError(f"v{self.version}: predict returned {len(out)} values for 1 row")
        steady = times[1:] or times
        return min(steady) if steady else 0.0


def top_class(proba: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Each row's most probable column, and whether the runner-up is within :data:`TIE` of it
    (where the probabilities' rounding could put another class first than ``predict`` does)."""
    top = proba.argmax(axis=1)
    if proba.shape[1] < 2:
        return top, np.zeros(len(proba), dtype=bool)
    two = np.partition(proba, -2, axis=1)
    return top, two[:, -1] - two[:, -2] <= TIE


def _derived(model: Any, X: npt.NDArray[Any]) -> tuple[list[Label], npt.NDArray[np.float64]] | None:
    """Predictions and the raw probabilities from one ``predict_proba`` call, or ``None`` when
    the model is not one whose predictions follow from its probabilities (or gives unusable
    ones)."""
    scorer = _scorer(model)
    if scorer is None:
        return None
    proba = _predict_proba(scorer, X)
    classes = np.asarray(scorer.classes_)
    if not _usable(proba, classes):
        return None
    top, tied = top_class(proba)
    preds = classes[top]
    if tied.any():
        preds[tied] = scorer.predict(X[tied])
    return _labels(preds), proba


def _predict_proba(scorer: Any, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """``scorer.predict_proba(X)``. For a logistic regression given what it was fitted on (a
    finite float64 matrix of its width, no column names), the same arithmetic, to the bit,
    without scikit-learn's input checks, which are 85 us of its 88 on a single row of 20
    inputs: the scores ``X @ coef_.T + intercept_``, then for two classes the expit of the one
    column beside its complement, for more their softmax (scikit-learn 1.9's
    ``predict_proba``). Anything else, a missing value among it, goes through
    ``predict_proba``, its checks and its errors."""
    if (
        _name(scorer) == LOGISTIC
        and X.dtype == np.float64
        and X.ndim == 2
        and X.shape[1] == getattr(scorer, "n_features_in_", -1)
        and not hasattr(scorer, "feature_names_in_")
        and np.isfinite(X).all()
    ):
        scores = X @ scorer.coef_.T + scorer.intercept_
        if len(scorer.classes_) <= 2:
            from scipy.special import expit

            positive = expit(scores[:, 0])
            return np.stack([1 - positive, positive], axis=1)
        scores -= scores.max(axis=1).reshape(-1, 1)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1).reshape(-1, 1)
        return np.asarray(scores)
    return np.asarray(scorer.predict_proba(X), dtype=np.float64)


def _scorer(model: Any) -> Any:
    """What to call for :func:`_derived`: a pipeline's only step (a one-step pipeline only
    hands ``X`` on, at the cost of its own checks), a pipeline whose last step is one of
    :data:`ARGMAX_OF_PROBA` (its other steps transform alike for both calls), such a model
    itself, else ``None``."""
    last = model
    if _name(model) == PIPELINE:
        last = model.steps[-1][1]
        if len(model.steps) > 1 and _name(last) in ARGMAX_OF_PROBA:
            return model
    return last if _name(last) in ARGMAX_OF_PROBA else None


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _usable(proba: npt.NDArray[np.float64], classes: Any) -> bool:
    return bool(proba.ndim == 2 and proba.shape[1] == len(classes) and np.isfinite(proba).all())


def _labels(out: npt.NDArray[Any]) -> list[Label]:
    return [v.item() if isinstance(v, np.generic) else v for v in out]


class Serving:
    """Holds the live model. ``current`` is None until the first model is loaded."""

    def __init__(self) -> None:
        self.current: LiveModel | None = None
        self.fallback_reason: str | None = None

    def swap(self, model: LiveModel) -> LiveModel | None:
        """Make ``model`` live; returns the model it replaced."""
        old, self.current = self.current, model
        return old


def _rows(names: tuple[str, ...], proba: npt.NDArray[np.float64]) -> list[dict[str, float]]:
    return [dict(zip(names, row, strict=True)) for row in proba.tolist()]
