"""One river drift detector on one scalar stream, fed a column at a time.

A :class:`Watch` owns a detector, the stream position it has reached, and where its current
life began (river detectors forget everything on the record after a drift). It turns the
detector's flags into :class:`Hit` records that carry the estimated change point:

============  =================================================================================
detector      change point (first record of the change)
============  =================================================================================
adwin         first record of ADWIN's window after it dropped the old sub-window
page_hinkley  record after the minimum (increase) or maximum (decrease) of the cumulative sum
kswin         first record of the recent sub-window (``stat_size`` records)
hddm_a        record after the cut point (the split with the lowest upper bound of the mean)
ddm, eddm,    first record of the warning zone that preceded the drift; the drift record when
hddm_w        there was none
fhddm         first record of the sliding window in which accuracy fell
============  =================================================================================

ADWIN columns are pushed through the detector's compiled core with ``map`` so the loop runs
in C; the decisions are those of ``ADWIN.update`` (a test holds them to it).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from river import drift
from river.drift import binary

from driftd.monitor.kswin import KSWIN

__all__ = ["DETECTORS", "Hit", "Watch"]

DETECTORS: dict[str, Any] = {
    "adwin": drift.ADWIN,
    "kswin": KSWIN,
    "page_hinkley": drift.PageHinkley,
    "ddm": binary.DDM,
    "eddm": binary.EDDM,
    "hddm_a": binary.HDDMA,
    "hddm_w": binary.HDDMW,
    "fhddm": binary.FHDDM,
}

# The parameter that sets each detector's false-positive rate, for the Bonferroni correction.
CONFIDENCE: dict[str, tuple[str, float]] = {"adwin": ("delta", 0.002), "kswin": ("alpha", 0.005)}

WARNING, DRIFT = 1, 2


class Hit(NamedTuple):
    """A warning (1) or drift (2) at stream position ``at``; ``change``: where it began."""

    at: int
    level: int
    change: int
    stats: dict[str, Any]


class Watch:
    """A drift detector of kind ``kind`` (a key of :data:`DETECTORS`) on one scalar stream.

    Parameters
    ----------
    kind
        Detector name: ``adwin``, ``kswin``, ``page_hinkley``, ``ddm``, ``eddm``, ``hddm_a``,
        ``hddm_w`` or ``fhddm``.
    params
        Keyword arguments for the detector's constructor.
    scale
        The values arrive multiplied by this; means in stats and the estimate are divided
        by it again.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> watch = Watch("adwin")
    >>> hits = watch.feed([rng.gauss(0, 1) for _ in range(1000)])
    >>> hits += watch.feed([rng.gauss(2, 1) for _ in range(1000)])
    >>> [(h.at, h.level, h.change) for h in hits]
    [(1023, 2, 968)]
    >>> round(hits[0].stats["mean_before"], 2), round(hits[0].stats["mean_after"], 2)
    (-0.01, 0.92)

    """

    def __init__(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        start: int = 0,
        scale: float = 1.0,
    ) -> None:
        if kind not in DETECTORS:
            raise ValueError(f"detector: got {kind!r}, expected one of {', '.join(DETECTORS)}")
        self.kind = kind
        self.params = dict(params or {})
        self.scale = scale
        self.pos = start  # the stream position of the next value
        self._reset()

    def _reset(self) -> None:
        self.detector: Any = DETECTORS[self.kind](**self.params)
        self.origin = self.pos
        self.warning = False
        self.warning_start = self.pos
        self._sum = 0.0  # of the values since origin (ADWIN: the mean of the dropped part)
        self._low = self._high = self.pos  # Page-Hinkley: where the cumulative sums turned

    def reset(self) -> None:
        """Forget the reference: the detector starts over at the current position."""
        self._reset()

    @property
    def estimate(self) -> float:
        """The detector's current estimate of the monitored quantity (see docs/monitor.md)."""
        det = self.detector
        kind = self.kind
        value: Any
        if kind == "adwin":
            value = det.estimation / self.scale
        elif kind == "page_hinkley":
            value = det._x_mean.get()
        elif kind == "kswin":
            value = det.statistic
        elif kind == "ddm":
            value = det._p.get()
        elif kind == "eddm":
            value = det._error_distances.mean.get()
        elif kind == "hddm_a":
            value = det._z.get()
        elif kind == "hddm_w":
            value = det._total.ewma
        else:  # fhddm is fed correctness; report the error rate of its window
            size = len(det._sliding_window)
            value = 1.0 - det.n_one / size if size else 0.0
        return float(value)

    def feed(self, values: Sequence[Any]) -> list[Hit]:
        """Update with a column of values; return the warnings entered and drifts detected."""
        if not values:
            return []
        if self.kind == "adwin":
            hits = self._feed_adwin(values)
        elif self.kind == "kswin":
            hits = self._feed_kswin(values)
        elif self.kind == "page_hinkley":
            hits = self._feed_page_hinkley(values)
        else:
            hits = self._feed_binary(values)
        self.pos += len(values)
        return hits

    def _drifted(self, at: int) -> None:
        self.origin = at + 1
        self.warning = False
        self._sum = 0.0

    def _feed_adwin(self, values: Sequence[Any]) -> list[Hit]:
        det = self.detector
        hits: list[Hit] = []
        start = 0
        while start < len(values):
            if det._drift_detected:
                det._reset()
            helper = det._helper
            rest = values[start:] if start else values
            try:
                i = operator.indexOf(map(helper.update, rest), True)
            except ValueError:
                self._sum += float(sum(rest))
                break
            at = self.pos + start + i
            width = int(helper.get_width())
            after = float(helper.get_total())
            before = self._sum + float(sum(rest[: i + 1]))
            dropped = at - self.origin + 1 - width
            stats = {
                "width": width,
                "dropped": dropped,
                "mean_before": (before - after) / dropped / self.scale if dropped > 0 else None,
                "mean_after": after / width / self.scale if width else None,
                "delta": det.delta,
            }
            hits.append(Hit(at, DRIFT, at - width + 1, stats))
            det._drift_detected = True
            self._drifted(at)
            start += i + 1
        return hits

    def _feed_kswin(self, values: Sequence[Any]) -> list[Hit]:
        det = self.detector
        hits = []
        for offset in det.update_many(values):
            at = self.pos + offset
            change = max(self.origin, at - det.stat_size + 1)
            stats = {"statistic": det.statistic, "p_value": det.p_value, "alpha": det.alpha}
            hits.append(Hit(at, DRIFT, change, stats))
            self._drifted(at)
        if hits:  # statistic and p-value above are those of the last drift of the batch
            last = hits[-1]
            last.stats.update(statistic=det.statistic, p_value=det.p_value)
        return hits

    def _feed_page_hinkley(self, values: Sequence[Any]) -> list[Hit]:
        det = self.detector
        update = det.update
        hits = []
        pos = self.pos
        for i, x in enumerate(values):
            update(x)
            if det._sum_increase == det._min_increase:
                self._low = pos + i
            if det._sum_decrease == det._max_decrease:
                self._high = pos + i
            if det._drift_detected:
                at = pos + i
                up = det._sum_increase - det._min_increase
                down = det._max_decrease - det._sum_decrease
                change = (self._low if up >= down else self._high) + 1
                stats = {
                    "mean": det._x_mean.get(),
                    "test_increase": up,
                    "test_decrease": down,
                    "threshold": det.threshold,
                }
                hits.append(Hit(at, DRIFT, min(change, at), stats))
                self._drifted(at)
        return hits

    def _feed_binary(self, values: Sequence[Any]) -> list[Hit]:
        det = self.detector
        update = det.update
        hits = []
        pos = self.pos
        for i, x in enumerate(values):
            update(x)
            if det._drift_detected:
                at = pos + i
                hits.append(Hit(at, DRIFT, self._binary_change(at), {"estimate": self.estimate}))
                self._drifted(at)
            elif det._warning_detected:
                if not self.warning:
                    self.warning = True
                    self.warning_start = pos + i
                    stats = {"estimate": self.estimate}
                    hits.append(Hit(pos + i, WARNING, pos + i, stats))
            else:
                self.warning = False
        return hits

    def _binary_change(self, at: int) -> int:
        det = self.detector
        if self.kind == "hddm_a":
            return min(at, self.origin + int(det._x_min.n))
        if self.kind == "fhddm":
            return max(self.origin, at - int(det.sliding_window_size) + 1)
        return int(self.warning_start) if self.warning else at

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.kind == "page_hinkley":  # its bound method would need getattr to unpickle
            detector = dict(self.detector.__dict__)
            detector.pop("_test_drift", None)
            state["detector"] = detector
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["kind"] == "page_hinkley":
            det = drift.PageHinkley.__new__(drift.PageHinkley)
            det.__dict__.update(state["detector"])
            test = {"up": "_test_increase", "down": "_test_decrease"}.get(det.mode, "_test_both")
            det._test_drift = getattr(det, test)
            state = {**state, "detector": det}
        self.__dict__.update(state)
