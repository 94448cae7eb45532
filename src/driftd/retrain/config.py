"""Settings of the retrain stage: the model to fit, the training process, when to retrain,
the first model, and the post-deploy guard (``[model]``, ``[training]``, ``[retrain]``,
``[bootstrap]``, ``[guard]``). The gate's and the policy's own sections live beside them
(:mod:`driftd.retrain.gate`, :mod:`driftd.retrain.policy`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from driftd._imports import check_import
from driftd.retrain.gate import GateConfig
from driftd.retrain.policy import PolicyConfig
from driftd.retrain.pool import PoolConfig

__all__ = [
    "BootstrapConfig",
    "GuardConfig",
    "ModelConfig",
    "RetrainConfig",
    "RetrainSettings",
    "TrainingConfig",
]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    estimator: str = "sklearn.ensemble.HistGradientBoostingClassifier"
    params: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    metric: str = "accuracy"
    warmup_rows: int = field(default=8, metadata={"min": 1, "max": 10_000})
    trusted_types: list[str] = field(default_factory=list)
    keep_previous: bool = True
    keep_versions: int = field(default=10, metadata={"min": 1})
    pinned: list[int] = field(default_factory=list)

    def validate(self) -> list[str]:
        errors = [f"pinned: got {n}, expected version numbers >= 1" for n in self.pinned if n < 1]
        for key, path in (("estimator", self.estimator), ("factory", self.factory)):
            if path is None or (key == "estimator" and self.factory is not None):
                continue
            problem = check_import(path)
            if problem:
                errors.append(f"{key}: got {path!r}, {problem}")
        return errors


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    data: str | None = None
    min_rows: int = field(default=500, metadata={"min": 10})
    rows: int = field(default=5000, metadata={"min": 10})
    seed: int = 0
    retry_seconds: float = field(default=60.0, metadata={"min": 0.1})


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """``[training]``: the training process's limits. ``threads`` caps a fit's OpenMP and BLAS
    threads; unset, it is one fewer than the cores this process may run on (at least one), so
    that a fit leaves a core to serving. On 2 cores under 2,000 records/s a fit's second
    thread waited on a core that serving held, at every barrier: a boosted model of 400 rows
    fits in 0.06 s on one thread and 0.10 s on two even on an idle machine."""

    timeout_seconds: float = field(default=600.0, metadata={"min": 1})
    memory_limit_mb: int | None = field(default=4096, metadata={"min": 64})
    threads: int | None = field(default=None, metadata={"min": 1, "max": 1024})
    nice: int = field(default=10, metadata={"min": 0, "max": 19})

    def fit_threads(self) -> int:
        """``threads``, or one fewer than the cores available (at least one)."""
        if self.threads is not None:
            return self.threads
        return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True, slots=True)
class RetrainConfig(PolicyConfig):
    interval_seconds: float | None = field(default=None, metadata={"min": 1})
    cron: str | None = None
    misfire_grace_seconds: float = field(default=60.0, metadata={"min": 1})
    max_age_seconds: float | None = field(default=None, metadata={"min": 1})
    holdout_fraction: float = field(default=0.2, metadata={"min": 0.01, "max": 0.9})
    keep_rejected: int = field(default=5, metadata={"min": 0, "max": 1000})

    def validate(self) -> list[str]:
        if self.interval_seconds is not None and self.cron is not None:
            return ["cron: set either interval_seconds or cron, not both"]
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                return [f"cron: got {self.cron!r}, expected a crontab expression ({exc})"]
        return []

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            cooldown_labels=self.cooldown_labels,
            cooldown_seconds=self.cooldown_seconds,
            backoff_max_labels=self.backoff_max_labels,
            backoff_max_seconds=self.backoff_max_seconds,
            min_new_labels=self.min_new_labels,
            min_rows_after_drift=self.min_rows_after_drift,
            window_rows=self.window_rows,
            challenger_labels=self.challenger_labels,
        )


@dataclass(frozen=True, slots=True)
class GuardConfig:
    records: int = field(default=300, metadata={"min": 0})
    margin: float = field(default=0.02, metadata={"min": 0})
    drift_margin: float = field(default=0.05, metadata={"min": 0})


@dataclass(frozen=True, slots=True)
class RetrainSettings:
    """The sections a :class:`~driftd.retrain.retrainer.Retrainer` works from, together, so that a
    reload swaps them at once. ``escalate_after`` is ``[alerts] escalate_after``."""

    model: ModelConfig
    training: TrainingConfig
    retrain: RetrainConfig
    gate: GateConfig
    guard: GuardConfig
    escalate_after: int = 3
    pool: PoolConfig = field(default_factory=PoolConfig)
