"""Drift monitoring with river: detectors per feature, predictions and errors, and alarms.

The daemon builds one :class:`Monitor` from the schema and ``[monitor]`` config, feeds it
every accepted record and every joined label, stores the :class:`MonitorEvent` values it
returns, exports :class:`DetectorState` as gauges, and checkpoints it with ``dumps``/``loads``.
"""

from __future__ import annotations

from driftd.monitor.alarms import AlarmPolicy
from driftd.monitor.categories import CategoryWatch
from driftd.monitor.checkpoint import CheckpointMismatch
from driftd.monitor.config import AlarmConfig, MonitorConfig
from driftd.monitor.events import DetectorState, MonitorEvent
from driftd.monitor.kswin import KSWIN
from driftd.monitor.live import LiveScore
from driftd.monitor.monitor import Monitor
from driftd.monitor.watch import DETECTORS, Hit, Watch

__all__ = [
    "DETECTORS",
    "KSWIN",
    "AlarmConfig",
    "AlarmPolicy",
    "CategoryWatch",
    "CheckpointMismatch",
    "DetectorState",
    "Hit",
    "LiveScore",
    "Monitor",
    "MonitorConfig",
    "MonitorEvent",
    "Watch",
]
