"""The post-deploy guard: the new champion against the previous one, in shadow, on the same records.

Pure: joined labels in, then the previous champion's predictions for the same records, a verdict
out. A new champion's live score is never compared with its own holdout score to roll back: when
the data keeps moving, every model scores under its holdout, and rolling back then serves an
older, staler model. The guard rolls back only when the previous champion, scored on the very
records the new one served, does better by more than ``margin``.

A live score short of the holdout score by more than ``drift_margin`` means something else: the
data moved since the training window (a deploy that landed just after a change point, whose
rebaseline restarted the detectors before they could see it). The verdict says ``drifted``, and
the retrainer opens a drift regime at the new champion's first record instead of letting the
rebaseline swallow the change.

>>> from driftd.store import Joined
>>> guard = Guard(version=2, previous=1, expected=0.9, metric="accuracy", needed=4, margin=0.1,
...               drift_margin=0.1)
>>> guard.observe([Joined(i, 1, 1, 0.0, model_version=2) for i in range(3)])
False
>>> guard.observe([Joined(3, 0, 1, 0.0, model_version=2)])
True
>>> verdict = guard.judge({0: 1, 1: 1, 2: 1, 3: 1})  # the previous champion got all four right
>>> verdict.rollback, verdict.drifted, verdict.record["live"], verdict.record["shadow"]
(True, True, 0.75, 1.0)
>>> guard.judge({0: 0, 1: 1, 2: 1, 3: 0}).rollback  # it was worse: a drift, not a bad model
False
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftd.ingest.schema import Label
from driftd.retrain.gate import HIGHER_IS_BETTER
from driftd.store import Joined

__all__ = ["Guard", "GuardVerdict"]


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """How the new champion did on its first labelled records: ``rollback`` when the previous
    champion did better there, ``drifted`` when it fell short of its own holdout score; ``why``
    says it for either."""

    rollback: bool
    drifted: bool
    record: dict[str, Any]
    why: str | None = None


class Guard:
    """Watches the first ``needed`` labelled records that model ``version`` served."""

    def __init__(
        self,
        *,
        version: int,
        previous: int,
        expected: float,
        metric: str,
        needed: int,
        margin: float,
        drift_margin: float,
    ) -> None:
        self.version = version
        self.previous = previous
        self.expected = expected
        self.metric = metric
        self.needed = needed
        self.margin = margin
        self.drift_margin = drift_margin
        self._served: dict[int, tuple[Label, Label]] = {}  # idx -> (prediction, label)

    @property
    def seen(self) -> int:
        return len(self._served)

    @property
    def indices(self) -> list[int]:
        """The records watched, in index order: the ones to score the previous champion on."""
        return sorted(self._served)

    def observe(self, joined: Iterable[Joined]) -> bool:
        """Keep the labels of records this version served; True once, when ``needed`` are in."""
        if self.seen >= self.needed:
            return False
        for j in joined:
            if j.model_version == self.version and self.seen < self.needed:
                self._served[j.idx] = (j.prediction, j.label)
        return self.seen >= self.needed

    def judge(self, shadow: Mapping[int, Label] | None) -> GuardVerdict:
        """The verdict, given the previous champion's prediction for each watched record it
        could be scored on (None when it is not loaded: then nothing says roll back)."""
        served = self._served
        live = self._score([p for p, _ in served.values()], [y for _, y in served.values()])
        record: dict[str, Any] = {
            "version": self.version,
            "previous": self.previous,
            "metric": self.metric,
            "holdout": self.expected,
            "live": live,
            "records": self.seen,
            "first_index": min(served),
        }
        why = []
        rollback = False
        common = [i for i in served if shadow is not None and i in shadow]
        if shadow is not None and common:
            ys = [served[i][1] for i in common]
            mine = self._score([served[i][0] for i in common], ys)
            theirs = self._score([shadow[i] for i in common], ys)
            record.update(shadow=theirs, shadow_records=len(common), live_on_shadow=mine)
            rollback = self._gain(theirs, mine) > self.margin
            if rollback:
                why.append(
                    f"the previous champion v{self.previous} scored {self.metric} {theirs:.4f}"
                    f" on the {len(common)} records v{self.version} served, which scored {mine:.4f}"
                )
        shortfall = self._gain(self.expected, live)
        drifted = shortfall > self.drift_margin
        if drifted:
            why.append(
                f"live {self.metric} {live:.4f} over {self.seen} records is {shortfall:.4f}"
                f" short of the holdout {self.expected:.4f}: the data moved since the training"
                " window"
            )
        record["drifted"] = drifted
        return GuardVerdict(rollback, drifted, record, "; ".join(why) or None)

    def _score(self, predictions: Sequence[Label], labels: Sequence[Label]) -> float:
        pairs = list(zip(predictions, labels, strict=True))
        if self.metric == "accuracy":
            return sum(float(p == y) for p, y in pairs) / len(pairs)
        return sum(abs(float(p) - float(y)) for p, y in pairs) / len(pairs)

    def _gain(self, better: float, worse: float) -> float:
        """How much ``better`` beats ``worse`` in the metric's direction."""
        return better - worse if HIGHER_IS_BETTER[self.metric] else worse - better
