"""The live model: one reference, read once per request, replaced only by a warmed-up model.

A new model is loaded and answers a few real predictions before :meth:`Serving.swap` moves the
reference, so no request ever sees a half-loaded model: a request holds the
:class:`LiveModel` it read for its whole life, and the swap is a single assignment. A version's
calibrator is part of its :class:`LiveModel`, so a batch's probabilities are calibrated by the
version that gave them.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.ingest.schema import Label
from driftd.models.calibration import Calibrator

__all__ = ["LiveModel", "Probabilities", "Serving", "WarmupError"]

log = logging.getLogger(__name__)


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
        return [v.item() if isinstance(v, np.generic) else v for v in out]

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
        if out.ndim != 2 or out.shape[1] != len(names) or not np.isfinite(out).all():
            return None
        return out

    def probabilities(self, X: npt.NDArray[Any]) -> Probabilities | None:
        """Each row's probabilities, raw and calibrated (see :class:`Probabilities`)."""
        raw = self.raw_probabilities(X)
        names = self.class_names()
        if raw is None or names is None:
            return None
        rows = _rows(names, raw)
        if self.calibrator is None:
            return Probabilities(rows, rows)
        return Probabilities(rows, _rows(names, self.calibrator.apply(raw)))

    def warm_up(self, rows: npt.NDArray[Any]) -> float:
        """Predict ``rows`` one at a time; raise :class:`WarmupError` on any
        failure. Returns the median single-row latency in seconds, leaving out the first call,
        which pays one-time costs (thread pools, caches) that warm-up exists to absorb. The
        median, not the maximum: one descheduled call on a busy host says nothing about the
        model, and the latency rule is there to catch a model that is slow on every call."""
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
        return statistics.median(steady) if steady else 0.0


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
