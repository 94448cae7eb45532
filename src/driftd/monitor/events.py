"""What the monitor reports: events (detections, warnings, alarms) and per-detector states.

Both are plain frozen values; the daemon stores events and turns states into gauges. Label
values stay bounded: ``signal`` is one of four words and ``feature`` a schema feature name
(or None for the prediction and error streams); categories appear only inside ``stats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AlarmKind", "DetectorState", "EventKind", "MonitorEvent", "Signal"]

EventKind = Literal["detection", "warning", "alarm"]
AlarmKind = Literal["data_drift", "concept_drift", "performance_drop_estimated"]
Signal = Literal["feature", "category", "prediction", "error", "estimated"]


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    """One detection, warning or alarm, noticed at record ``index`` and time ``time``.

    ``change_point`` is the estimated index of the first record of the change (see
    docs/monitor.md for how each detector estimates it); retraining uses the records from
    there on. ``stats`` holds the detector's statistics (JSON-able).

    Examples
    --------
    >>> e = MonitorEvent("detection", None, "feature", "x", 1200, 5.0, 1100, {"width": 100})
    >>> e.as_dict()["change_point"]
    1100

    """

    kind: EventKind
    alarm: AlarmKind | None
    signal: Signal
    feature: str | None
    index: int
    time: float
    change_point: int
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The event as a JSON-able dict (non-finite numbers become None)."""
        return {
            "kind": self.kind,
            "alarm": self.alarm,
            "signal": self.signal,
            "feature": self.feature,
            "index": self.index,
            "time": self.time,
            "change_point": self.change_point,
            "stats": _jsonable(self.stats),
        }


@dataclass(frozen=True, slots=True)
class DetectorState:
    """The state of one detector: 0 stable, 1 warning, 2 drift, and its current estimate.

    ``state`` is 2 from a detection until ``alarm.window`` records later, so a scrape sees it.
    """

    signal: Signal
    feature: str | None
    state: int
    estimate: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "feature": self.feature,
            "state": self.state,
            "estimate": _jsonable(self.estimate),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
