"""The deployment gate: a verdict on a candidate, with a pass/fail reason for every rule.

Pure: scores and facts in, verdict out. The rules:

* ``evaluated``: the candidate's score exists and is finite (fail closed: an evaluation error,
  a NaN or a missing metric never deploys);
* ``holdout``: the holdout has at least ``min_holdout`` rows (and, for classification,
  ``min_holdout_per_class`` of every class it contains);
* ``threshold``: the candidate's score is on the right side of the absolute threshold;
* ``vs_champion``: the candidate improves on the champion, scored on the same holdout, by at
  least ``min_absolute_change`` and ``min_relative_change`` (MLflow ``MetricThreshold``
  semantics; a negative value tolerates that much degradation). Skipped for the first model;
* ``loads``: the artifact loads with the trusted-type list;
* ``latency``: its fastest single-row warm-up prediction is within ``max_latency_ms``.

A verdict that failed ``vs_champion`` alone, with the candidate worse than the champion by less
than ``tie_margin`` (or better, but not by the required change), is a *tie*: the champion stays,
but the retrain policy does not back off for it, since a candidate as good as the champion is no
sign that retraining has gone wrong (0.989 against 0.990 on one holdout is no evidence).

>>> from driftd.retrain.gate import Gate, GateConfig
>>> gate = Gate(GateConfig(threshold=0.7, min_absolute_change=0.0), "accuracy")
>>> v = gate.judge(candidate=0.82, champion=0.75, holdout=500)
>>> v.passed, [r.name for r in v.rules if not r.passed]
(True, [])
>>> v = gate.judge(candidate=0.74, champion=0.75, holdout=500)
>>> v.passed, v.tie
(False, False)
>>> v.failed[0].reason
'accuracy 0.7400 is worse than the champion 0.7500 by 0.0100; allowed change is >= 0'
>>> gate.judge(candidate=0.989, champion=0.990, holdout=500).tie
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HIGHER_IS_BETTER", "Gate", "GateConfig", "Rule", "Verdict"]

HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1": True,
    "roc_auc": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,
    "r2": True,
}


@dataclass(frozen=True, slots=True)
class GateConfig:
    threshold: float | None = None
    min_absolute_change: float | None = 0.0
    min_relative_change: float | None = None
    min_holdout: int = field(default=50, metadata={"min": 1})
    min_holdout_per_class: int = field(default=5, metadata={"min": 0})
    max_latency_ms: float = field(default=250.0, metadata={"min": 0.1})
    tie_margin: float = field(default=0.005, metadata={"min": 0})


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    metric: str
    candidate: float | None
    champion: float | None
    rules: tuple[Rule, ...]
    tie: bool = False

    @property
    def failed(self) -> list[Rule]:
        return [r for r in self.rules if not r.passed]

    def summary(self) -> str:
        if self.passed:
            return "passed: " + "; ".join(r.reason for r in self.rules)
        return "rejected: " + "; ".join(r.reason for r in self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metric": self.metric,
            "candidate": _finite_or_none(self.candidate),
            "champion": _finite_or_none(self.champion),
            "rules": [r.as_dict() for r in self.rules],
            "tie": self.tie,
        }


class Gate:
    """Judges candidates on ``metric`` with the rules of ``config``."""

    def __init__(self, config: GateConfig, metric: str) -> None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {metric!r}")
        self.config = config
        self.metric = metric
        self.higher = HIGHER_IS_BETTER[metric]

    def judge(
        self,
        *,
        candidate: float | None,
        champion: float | None,
        holdout: int,
        class_counts: Mapping[Any, int] | None = None,
        loads: bool = True,
        load_error: str | None = None,
        latency_ms: float | None = 0.0,
    ) -> Verdict:
        """The verdict; ``champion`` None means there is no champion (the first model)."""
        cfg, m = self.config, self.metric
        rules = [self._evaluated(candidate), self._holdout(holdout, class_counts)]
        ok = candidate is not None and math.isfinite(candidate)
        if cfg.threshold is not None:
            if not ok:
                rules.append(Rule("threshold", False, f"no {m} to compare with the threshold"))
            else:
                assert candidate is not None
                good = candidate >= cfg.threshold if self.higher else candidate <= cfg.threshold
                op = ">=" if self.higher else "<="
                rules.append(
                    Rule(
                        "threshold",
                        good,
                        f"{m} {candidate:.4f} {'' if good else 'not '}{op} {cfg.threshold:g}",
                    )
                )
        if champion is not None:
            rules.append(self._vs_champion(candidate if ok else None, champion))
        rules.append(
            Rule(
                "loads",
                loads,
                "loads with the trusted types" if loads else f"does not load: {load_error}",
            )
        )
        if latency_ms is None or not math.isfinite(latency_ms):
            rules.append(Rule("latency", False, "no warm-up latency measured"))
        else:
            fast = latency_ms <= cfg.max_latency_ms
            rules.append(
                Rule(
                    "latency",
                    fast,
                    f"warm-up latency {latency_ms:.1f} ms"
                    f" {'<=' if fast else '>'} {cfg.max_latency_ms:g} ms",
                )
            )
        passed = all(r.passed for r in rules)
        tie = not passed and self._tie(candidate, champion, rules)
        return Verdict(passed, m, candidate, champion, tuple(rules), tie)

    def _tie(self, candidate: float | None, champion: float | None, rules: list[Rule]) -> bool:
        """Whether the candidate lost to the champion alone, and by less than ``tie_margin``."""
        if [r.name for r in rules if not r.passed] != ["vs_champion"]:
            return False
        assert candidate is not None  # vs_champion compared the two
        assert champion is not None
        loss = champion - candidate if self.higher else candidate - champion
        return loss < self.config.tie_margin

    def _evaluated(self, candidate: float | None) -> Rule:
        if candidate is None:
            return Rule("evaluated", False, f"candidate {self.metric} is missing")
        if not math.isfinite(candidate):
            return Rule("evaluated", False, f"candidate {self.metric} is {candidate}")
        return Rule("evaluated", True, f"candidate {self.metric} {candidate:.4f}")

    def _holdout(self, n: int, class_counts: Mapping[Any, int] | None) -> Rule:
        cfg = self.config
        if n < cfg.min_holdout:
            return Rule(
                "holdout", False, f"holdout of {n} rows is under the minimum {cfg.min_holdout}"
            )
        if class_counts:
            thin = sorted(
                (str(k) for k, c in class_counts.items() if c < cfg.min_holdout_per_class)
            )
            if thin:
                return Rule(
                    "holdout",
                    False,
                    f"class(es) {', '.join(thin)} have under"
                    f" {cfg.min_holdout_per_class} holdout rows",
                )
        return Rule("holdout", True, f"holdout of {n} rows")

    def _vs_champion(self, candidate: float | None, champion: float) -> Rule:
        cfg, m = self.config, self.metric
        if candidate is None:
            return Rule("vs_champion", False, f"no candidate {m} to compare with the champion")
        if not math.isfinite(champion):
            # Closed, not open: a champion that cannot be scored on the holdout means the two
            # do not see the same task (labels of another type, classes it never knew), and
            # a candidate that passes only the absolute rules could answer in other types.
            return Rule(
                "vs_champion",
                False,
                f"the champion's {m} on the holdout is {champion}: it cannot be compared,"
                " so no candidate replaces it",
            )
        gain = candidate - champion if self.higher else champion - candidate
        reasons, good = [], True
        if cfg.min_absolute_change is not None and gain < cfg.min_absolute_change:
            good = False
            reasons.append(
                f"{m} {candidate:.4f} is worse than the champion {champion:.4f} by {-gain:.4f};"
                f" allowed change is >= {cfg.min_absolute_change:g}"
                if gain < 0
                else f"{m} {candidate:.4f} improves on the champion {champion:.4f} by {gain:.4f},"
                f" under the required {cfg.min_absolute_change:g}"
            )
        if cfg.min_relative_change is not None:
            if champion == 0:
                rel_ok = gain > 0 or (gain == 0 and cfg.min_relative_change <= 0)
                rel_text = "champion is 0: any improvement counts"
            else:
                rel = gain / abs(champion)
                rel_ok = rel >= cfg.min_relative_change
                rel_text = f"relative change {rel:+.2%} vs required {cfg.min_relative_change:+.2%}"
            if not rel_ok:
                good = False
                reasons.append(rel_text)
        if good:
            return Rule(
                "vs_champion", True, f"{m} {candidate:.4f} vs champion {champion:.4f} ({gain:+.4f})"
            )
        return Rule("vs_champion", False, "; ".join(reasons))


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
