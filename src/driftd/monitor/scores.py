"""What the mean detectors of numeric features see, and the confidence they run at.

ADWIN's cut test treats the mean of a few hundred values as normal. A skewed feature breaks
that: the mean of its last few hundred values has a heavier tail on one side, and on
log-normal features robust-scaled ADWIN raised three times the false alarms of normal ones
(3.7 against 1.2 per 10⁸ records at ``delta = 1e-4``); on raw Student t(3) or log-normal values
it raised 270 to 360 per million. So each numeric feature's value is replaced by its **normal
score**: the standard normal quantile of its mid-rank among the first ``warmup`` values after
a reset. Under no change the scores of any continuous feature have the same distribution, a
discretised standard normal that is symmetric and bounded (about ±2.6 for 100 reference
values), so one calibration of the detector holds for every feature. The map is monotone and
fixed until the next reset, so a detector still compares parts of one stream with each other.

The scores are fed at :data:`SCALE` times their size. ADWIN's cut threshold adds to its
variance term a range term, ``2/3 ln(2/delta') / m``, written for values in [0, 1]; at unit
scale it is a sixth of the threshold 100 records after a change, for a protection that
symmetric, bounded scores do not need. Fed ten times larger, the range term shrinks
tenfold and the confidence is set by measurement instead (:func:`delta_for`).

The first ``warmup`` values of a reset wait here and are released, scored, with the value
that completes the warm-up, in their order: no position is lost.

>>> import numpy as np
>>> scores = NormalScores(2, warmup=4)
>>> scores.feed(np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])) is None
True
>>> (scores.feed(np.array([[4.0, 10.0], [100.0, 10.0]])) / SCALE).round(2).tolist()
[[-0.84, 0.0], [-0.25, 0.0], [0.25, 0.0], [0.84, 0.0], [1.28, 0.0]]
>>> delta_for(run_length=1e8, tests=20) < delta_for(run_length=1e7, tests=20)
True
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = ["CALIBRATION", "SCALE", "NormalScores", "delta_for"]

#: Scores are fed to ADWIN at this multiple of their size (see the module's docstring).
SCALE = 10.0

#: ADWIN's false detections per record, by ``delta``, on the scores of a stationary normal
#: feature fed at :data:`SCALE` (100 reference values, detector reset after each detection).
#: Measured by ``benchmarks/calibrate_adwin.py``: 290 detections in 3 x 10⁸ records, 20 in
#: 3.1 x 10⁸ and 16 in 2 x 10⁹.
CALIBRATION: tuple[tuple[float, float], ...] = ((1e-3, 9.67e-7), (1e-4, 6.49e-8), (1e-5, 8.0e-9))


def delta_for(run_length: float, tests: int) -> float:
    """ADWIN's ``delta`` at which ``tests`` detectors fed scores err, together, once per
    ``run_length`` records on average.

    Each detector may err at ``1 / (run_length * tests)`` per record; the ``delta`` for that
    rate is read off :data:`CALIBRATION` on log-log axes, the line through its neighbouring
    points, or through the last two points beyond its ends.
    """
    rate = math.log(1.0 / (run_length * max(1, tests)))
    points = [(math.log(d), math.log(r)) for d, r in sorted(CALIBRATION)]
    # the segment that holds the rate, or the one at the nearer end
    i = next((i for i in range(1, len(points) - 1) if rate <= points[i][1]), len(points) - 1)
    (d0, r0), (d1, r1) = points[i - 1], points[i]
    return math.exp(d0 + (rate - r0) * (d1 - d0) / (r1 - r0))


#: Up to this many rows are scored by comparing them with the whole reference at once.
_FEW = 8

_Reference = tuple[npt.NDArray[np.float64], npt.NDArray[np.intp], npt.NDArray[np.intp]]


class NormalScores:
    """Normal scores of ``width`` features against the first ``warmup`` rows after a reset."""

    def __init__(self, width: int, *, warmup: int = 100) -> None:
        self.width = width
        self.warmup = warmup
        # the score of mid-rank position j / 2 among ``warmup`` values, j = 0 .. 2 * warmup
        normal = NormalDist()
        self._table = SCALE * np.array(
            [normal.inv_cdf((j + 1) / (2 * (warmup + 1))) for j in range(2 * warmup + 1)]
        )
        self._reset()

    def _reset(self) -> None:
        self._waiting: list[npt.NDArray[np.float64]] = []
        self._waited = 0
        # per feature: the reference's distinct values, twice the count of reference values
        # below each (and below none, past the last), and how many equal each
        self._reference: list[_Reference] = []
        self._sorted = np.empty((self.width, 0))  # the reference, feature by feature
        self._fitted = False

    def reset(self) -> None:
        """Take a new reference from the next ``warmup`` rows."""
        self._reset()

    def feed(self, block: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
        """The rows ready for the detectors, scored, in order (held rows first); None while
        the warm-up is incomplete."""
        if not self._fitted:
            self._waiting.append(np.array(block, dtype=np.float64))
            self._waited += len(block)
            if self._waited < self.warmup:
                return None
            rows = np.concatenate(self._waiting)
            self._waiting = []
            self._fit(rows[: self.warmup])
            block = rows
        if len(block) <= _FEW:
            # a few rows (a served prediction's pass): every comparison at once costs less
            # than a search per feature; twice the mid-rank is values below plus at or below
            rows3 = np.asarray(block, dtype=np.float64)[:, :, None]
            twice_rank = np.count_nonzero(rows3 > self._sorted, axis=2)
            twice_rank += np.count_nonzero(rows3 >= self._sorted, axis=2)
            scores: npt.NDArray[np.float64] = self._table.take(twice_rank)
            return scores
        columns = np.ascontiguousarray(block.T, dtype=np.float64)
        out = np.empty(columns.shape, dtype=np.float64)
        for j, (values, twice_below, ties) in enumerate(self._reference):
            column = columns[j]
            at = values.searchsorted(column)
            # twice the mid-rank: twice the values below, plus the values equal
            twice = twice_below[at] + (values.take(at, mode="clip") == column) * ties[at]
            np.take(self._table, twice, out=out[j])
        return out.T

    def _fit(self, rows: npt.NDArray[np.float64]) -> None:
        self._sorted = np.sort(rows.T, axis=1)
        self._reference = []
        for column in rows.T:
            values, ties = np.unique(column, return_counts=True)
            twice_below = 2 * np.concatenate([[0], np.cumsum(ties)])
            self._reference.append((values, twice_below, np.append(ties, 0)))
        self._fitted = True
