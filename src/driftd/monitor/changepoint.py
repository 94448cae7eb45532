"""Change-point estimation: where, in a detector's recent values, a change most likely began.

A detector says *that* a stream changed, and its own guess of *where* is coarse: ADWIN cuts at
a bucket boundary, HDDM_A at a prefix bound. When a detector fires, the monitor takes the values
of that stream since its last detection (at most :data:`RECENT` of them, kept here) and
estimates the change point by maximum likelihood for a single shift in the mean: the split
``k`` that maximises the standardised two-sample difference

    T(k) = |S(k) - k/n * S(n)| / sqrt(k * (n - k) / n),

``S(k)`` the sum of the first ``k`` values (the binary-segmentation CUSUM statistic). It runs
only when a detector fires, in numpy, over at most a few thousand values.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> values = np.concatenate([rng.normal(0, 1, 3000), rng.normal(1, 1, 60)])
>>> mean_change(values)
3006
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_SIDE", "RECENT", "RecentValues", "mean_change"]

#: Values kept per stream, for the estimate: more than the slowest detection the monitor's
#: defaults make on a mean shift (a +1 sd ramp over 20,000 records is seen ~3,400 in).
RECENT = 4096
#: Fewest values on either side of a split the estimate considers.
MIN_SIDE = 5


def mean_change(values: npt.NDArray[np.float64]) -> int | None:
    """The most likely first index of a single change in the mean of ``values``; None when
    there are too few values to split."""
    n = len(values)
    if n < 2 * MIN_SIDE:
        return None
    x = values - values.mean()  # the statistic is shift-invariant; this keeps the sums small
    sums = np.cumsum(x)[:-1]  # S(k) - k/n S(n), for k = 1 .. n-1 (S(n) is 0 after centring)
    k = np.arange(1, n, dtype=np.float64)
    score = np.abs(sums) / np.sqrt(k * (n - k) / n)
    score[: MIN_SIDE - 1] = score[n - MIN_SIDE :] = -1.0  # at least MIN_SIDE values a side
    return int(np.argmax(score)) + 1


class RecentValues:
    """At least the last :data:`RECENT` (or ``capacity``) values of ``width`` streams that advance
    together (the numeric features of a batch), addressed by stream position."""

    def __init__(self, width: int, capacity: int = RECENT) -> None:
        self.width = width
        self.capacity = capacity
        self._rows = np.empty((2 * capacity, width), dtype=np.float64)
        self._used = 0
        self._first = 0  # stream position of row 0
        self.end = 0  # stream position after the last value

    def extend(self, block: npt.NDArray[np.float64]) -> None:
        """Append the next ``len(block)`` positions: an ``(n, width)`` array (``(n,)`` for one
        stream)."""
        block = block.reshape(len(block), self.width)
        n = len(block)
        if n >= self.capacity:
            self._rows[: self.capacity] = block[-self.capacity :]
            self._used, self._first = self.capacity, self.end + n - self.capacity
        else:
            if self._used + n > len(self._rows):  # keep the newest capacity - n, then append
                keep = self.capacity - n
                self._rows[:keep] = self._rows[self._used - keep : self._used]
                self._first += self._used - keep
                self._used = keep
            self._rows[self._used : self._used + n] = block
            self._used += n
        self.end += n

    def window(self, column: int, start: int, stop: int) -> tuple[int, npt.NDArray[np.float64]]:
        """The values of stream ``column`` at positions ``[start, stop)``, clipped to what is
        kept, and the position of the first one returned."""
        lo = max(start, self._first)
        hi = min(stop, self.end)
        if hi <= lo:
            return lo, np.empty(0)
        return lo, self._rows[lo - self._first : hi - self._first, column]

    def change_point(self, column: int, start: int, stop: int) -> int | None:
        """The estimated stream position of a change between ``start`` and ``stop``."""
        first, values = self.window(column, start, stop)
        k = mean_change(values)
        return None if k is None else first + k

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rows"] = self._rows[: self._used].copy()  # a checkpoint holds what is kept
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        kept = state["_rows"]
        rows = np.empty((2 * state["capacity"], state["width"]), dtype=np.float64)
        rows[: len(kept)] = kept
        self.__dict__.update({**state, "_rows": rows})
