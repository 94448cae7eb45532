"""The post-deploy guard: the first labelled records a new champion served, against its holdout.

Pure: joined labels in, a verdict out once ``needed`` of them have been seen. The verdict fails
when the live score falls short of the holdout score by more than the margin; what to do about
it (a rollback, an alert) is the retrainer's.

>>> from driftd.store import Joined
>>> guard = Guard(version=2, previous=1, expected=0.9, metric="accuracy", needed=4, margin=0.1)
>>> guard.observe([Joined(i, 1, 1, 0.0, model_version=2) for i in range(3)]) is None
True
>>> verdict = guard.observe([Joined(3, 0, 1, 0.0, model_version=2)])
>>> verdict.failed, verdict.record["live"]
(True, 0.75)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from driftd.retrain.gate import HIGHER_IS_BETTER
from driftd.store import Joined

__all__ = ["Guard", "GuardVerdict"]


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """How the new champion did on its first labelled records; ``why`` says it when it failed."""

    failed: bool
    record: dict[str, Any]
    why: str | None = None


class Guard:
    """Watches the first ``needed`` labelled records that model ``version`` served."""

    def __init__(
        self,
        *,
        version: int,
        previous: int | None,
        expected: float,
        metric: str,
        needed: int,
        margin: float,
    ) -> None:
        self.version = version
        self.previous = previous
        self.expected = expected
        self.metric = metric
        self.needed = needed
        self.margin = margin
        self._seen = 0
        self._total = 0.0

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def live(self) -> float:
        """The live score so far (NaN before the first labelled record)."""
        return self._total / self._seen if self._seen else math.nan

    def observe(self, joined: Iterable[Joined]) -> GuardVerdict | None:
        """Count the labels of records this version served; the verdict once enough are in."""
        if self._seen >= self.needed:
            return None
        for j in joined:
            if j.model_version != self.version:
                continue
            self._seen += 1
            if self.metric == "accuracy":
                self._total += float(j.prediction == j.label)
            else:
                self._total += abs(float(j.prediction) - float(j.label))
        if self._seen < self.needed:
            return None
        higher = HIGHER_IS_BETTER[self.metric]
        shortfall = self.expected - self.live if higher else self.live - self.expected
        record = {
            "version": self.version,
            "metric": self.metric,
            "holdout": self.expected,
            "live": self.live,
            "records": self._seen,
        }
        if shortfall > self.margin:
            why = (
                f"live {self.metric} {self.live:.4f} over {self._seen} records is"
                f" {shortfall:.4f} short of its holdout {self.expected:.4f}"
            )
            return GuardVerdict(True, record, why)
        return GuardVerdict(False, record)
