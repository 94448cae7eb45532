"""Settings of the drift monitor: which detector watches which signal, and the alarm policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AlarmConfig", "MonitorConfig"]

NumericDetector = Literal["adwin", "kswin", "page_hinkley"]
ErrorDetector = Literal["ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin", "page_hinkley"]


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    features: int = field(default=2, metadata={"min": 1})
    window: int = field(default=2000, metadata={"min": 1})
    suppress: int = field(default=1000, metadata={"min": 0})
    correct_for_features: bool = True


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    numeric_detector: NumericDetector = "adwin"
    error_detector: ErrorDetector = "hddm_a"
    detector_params: dict[str, dict[str, float]] = field(default_factory=dict)
    per_feature: dict[str, str] = field(default_factory=dict)
    top_categories: int = field(default=10, metadata={"min": 1, "max": 100})
    live_window: int = field(default=1000, metadata={"min": 10})
    checkpoint_interval_seconds: float = field(default=30.0, metadata={"min": 0.1})
    alarm: AlarmConfig = field(default_factory=AlarmConfig)
