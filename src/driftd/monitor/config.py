"""Settings of the drift monitor: which detector watches which signal, and the alarm policy.

Loaded from the ``[monitor]`` section by :mod:`driftd.config`; every field has a default so
``MonitorConfig()`` is a working monitor. ``detector_params`` are passed to the river
detector's constructor (``[monitor.detector_params.adwin] delta = 0.001``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BINARY_DETECTORS",
    "ERROR_DETECTORS",
    "NUMERIC_DETECTORS",
    "AlarmConfig",
    "MonitorConfig",
]

NumericDetector = Literal["adwin", "kswin", "page_hinkley"]
ErrorDetector = Literal["ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin", "page_hinkley"]
RegressionErrorDetector = Literal["adwin", "page_hinkley"]

NUMERIC_DETECTORS: tuple[str, ...] = ("adwin", "kswin", "page_hinkley")
BINARY_DETECTORS: tuple[str, ...] = ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm")
ERROR_DETECTORS: tuple[str, ...] = (*BINARY_DETECTORS, "adwin", "page_hinkley")


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    """When detections become alarms.

    ``features`` distinct features must drift within ``window`` records for a data-drift
    alarm (one by default: a drift confined to one feature alarms, and the per-feature
    confidence correction below keeps the family's false alarms within budget); a detector
    firing again within ``suppress`` records of its last reported firing is not reported, and
    neither is an alarm of the same kind. ``correct_for_features`` shares the false-alarm
    budget among the features, so the family-wise rate stays put as features grow: the mean
    detectors' ``delta`` is derived from the run length for their number; a confidence set
    by hand (ADWIN ``delta``, KSWIN ``alpha``), and the categories' ADWIN, are divided by the
    number of features, Bonferroni-style.
    """

    features: int = field(default=1, metadata={"min": 1})
    window: int = field(default=2000, metadata={"min": 1})
    suppress: int = field(default=1000, metadata={"min": 0})
    correct_for_features: bool = True


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Detectors per signal, their parameters, the live score window and the alarm policy.

    ``robust_scale`` feeds ADWIN feature detectors each value's normal score, the standard
    normal quantile of its rank among the first ``robust_warmup`` values after a
    rebaseline, so that a skewed or heavy-tailed feature errs no more than a normal one (see
    :mod:`driftd.monitor.scores`). ``second_moments`` adds tests of each numeric feature's
    variance and of each pair's correlation every ``moments_window`` records against the
    first ``moments_reference`` records after a rebaseline (pairs only up to
    ``moments_pairs_max_features`` numeric features; :mod:`driftd.monitor.moments`).
    ``false_alarm_run`` is the records between false alarms of those feature tests, on
    average: the mean detectors and the second-moment tests each take half of the rate, and
    ADWIN's ``delta`` (unless set in ``detector_params``) and the tests' threshold are derived
    from it. ``estimate_performance`` (classification) estimates the
    live score from the models' class probabilities before labels arrive and watches the
    expected error with ADWIN (:mod:`driftd.monitor.estimated`); with ``estimated_retrain``
    its alarm reaches the retrain trigger like a drift alarm.
    """

    numeric_detector: NumericDetector = "adwin"
    error_detector: ErrorDetector = "adwin"
    regression_error_detector: RegressionErrorDetector = "adwin"
    detector_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_feature: dict[str, str] = field(default_factory=dict)
    top_categories: int = field(default=10, metadata={"min": 1, "max": 100})
    category_reference: int = field(default=1000, metadata={"min": 10})
    live_window: int = field(default=1000, metadata={"min": 10})
    live_min_labels: int = field(default=50, metadata={"min": 1})
    seed: int = 0
    checkpoint_interval_seconds: float = field(default=30.0, metadata={"min": 0.1})
    robust_scale: bool = True
    robust_warmup: int = field(default=100, metadata={"min": 10})
    second_moments: bool = True
    moments_window: int = field(default=250, metadata={"min": 50})
    moments_reference: int = field(default=1000, metadata={"min": 100})
    moments_pairs_max_features: int = field(default=32, metadata={"min": 0})
    false_alarm_run: float = field(default=5e7, metadata={"min": 1000})
    estimate_performance: bool = True
    estimated_retrain: bool = True
    alarm: AlarmConfig = field(default_factory=AlarmConfig)

    def validate(self) -> list[str]:
        from driftd.monitor.watch import DETECTORS

        errors = []
        for name, kind in sorted(self.per_feature.items()):
            if kind not in NUMERIC_DETECTORS:
                errors.append(
                    f"per_feature.{name}: got {kind!r}, expected one of "
                    + ", ".join(repr(k) for k in NUMERIC_DETECTORS)
                )
        for kind, params in sorted(self.detector_params.items()):
            if kind not in DETECTORS:
                known = ", ".join(repr(k) for k in DETECTORS)
                errors.append(
                    f"detector_params.{kind}: got an unknown detector, expected one of {known}"
                )
                continue
            if not isinstance(params, Mapping):  # the loader only checks the outer table
                errors.append(f"detector_params.{kind}: got {params!r}, expected a table")  # type: ignore[unreachable,unused-ignore]
                continue
            accepted = inspect.signature(DETECTORS[kind]).parameters
            for key in sorted(params):
                if key not in accepted or key == "seed":
                    names = ", ".join(k for k in accepted if k not in ("seed", "window"))
                    errors.append(
                        f"detector_params.{kind}.{key}: got an unknown parameter,"
                        f" expected one of {names}"
                    )
        return errors

    def fingerprint(self) -> str:
        """A digest of every setting that shapes detector state; checkpoints must match it."""
        relevant = {
            "numeric_detector": self.numeric_detector,
            "error_detector": self.error_detector,
            "regression_error_detector": self.regression_error_detector,
            "detector_params": self.detector_params,
            "per_feature": self.per_feature,
            "top_categories": self.top_categories,
            "category_reference": self.category_reference,
            "seed": self.seed,
            "correct_for_features": self.alarm.correct_for_features,
            "robust_scale": self.robust_scale,
            "robust_warmup": self.robust_warmup,
            "feature_scores": "normal",
            "false_alarm_run": self.false_alarm_run,
            "second_moments": self.second_moments,
            "moments_window": self.moments_window,
            "moments_reference": self.moments_reference,
            "moments_pairs_max_features": self.moments_pairs_max_features,
            "estimate_performance": self.estimate_performance,
        }
        text = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
