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

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_SIDE", "RECENT", "RecentValues", "mean_change"]

#: Values kept per stream, for the estimate: more than the slowest detection the monitor's
#: defaults make on a step in the mean (+0.5 sd: 175 records), and few enough that keeping them
#: costs the monitor nothing measurable (4,096 cost it 5-10% of its throughput).
RECENT = 2048
#: Batches smaller than this are merged as they arrive.
_SMALL = 64
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
    """The values of ``width`` streams that advance together (the numeric features of a
    batch), addressed by stream position: the newest batch and at least :data:`RECENT` (or
    ``capacity``) values before it.

    Batches are kept as they came (a block, or the columns as lists): nothing is copied or
    converted until a detector fires and :meth:`window` is read. A kept batch must not be
    changed by the caller afterwards."""

    def __init__(
        self, width: int, capacity: int = RECENT, *, start: int = 0, dtype: str = "float64"
    ) -> None:
        self.width = width
        self.capacity = capacity
        # "object" for the categories of categorical features; a name, not a type, so that
        # a checkpoint holds only plain values
        self.dtype = dtype
        self._chunks: deque[tuple[int, int, Any]] = deque()  # (first position, length, data)
        self._kept = 0
        self.end = start  # stream position after the last value

    def extend(self, block: npt.NDArray[np.float64]) -> None:
        """Append the next ``len(block)`` positions: an ``(n, width)`` array."""
        self._append(len(block), block)

    def extend_columns(self, columns: Sequence[Sequence[float]]) -> None:
        """Append the next positions as ``width`` equal-length columns."""
        self._append(len(columns[0]) if columns else 0, list(columns))

    def _append(self, n: int, data: Any) -> None:
        if n == 0:
            return
        last = self._chunks[-1] if self._chunks else None
        if last is not None and last[1] + n <= _SMALL and type(last[2]) is type(data):
            # records arriving one at a time: grow the last small batch instead of keeping
            # thousands of one-record ones
            pos, m, old = self._chunks.pop()
            if isinstance(data, np.ndarray):
                data = np.concatenate([old, data])
            else:
                data = [a + b for a, b in zip(old, data, strict=True)]
            n, self.end, self._kept = m + n, self.end - m, self._kept - m
            del pos
        self._chunks.append((self.end, n, data))
        self._kept += n
        self.end += n
        # A detector may fire anywhere in the newest batch: keep capacity values before it.
        while self._kept - self._chunks[0][1] - n >= self.capacity:
            self._kept -= self._chunks.popleft()[1]

    def window(self, column: int, start: int, stop: int) -> tuple[int, npt.NDArray[np.float64]]:
        """The values of stream ``column`` at positions ``[start, stop)``, clipped to what is
        kept, and the position of the first one returned."""
        parts: list[npt.NDArray[np.float64]] = []
        first = None
        for pos, n, data in self._chunks:
            lo, hi = max(start, pos), min(stop, pos + n)
            if hi <= lo:
                continue
            values = data[:, column] if isinstance(data, np.ndarray) else data[column]
            parts.append(np.asarray(values[lo - pos : hi - pos], dtype=self.dtype))
            first = lo if first is None else first
        if first is None:
            return max(start, self.end - self._kept), np.empty(0, dtype=self.dtype)
        return first, np.concatenate(parts)

    def change_point(self, column: int, start: int, stop: int) -> int | None:
        """The estimated stream position of a change between ``start`` and ``stop``, from at
        most ``capacity`` values before ``stop`` (whatever else happens to be kept)."""
        first, values = self.window(column, max(start, stop - self.capacity), stop)
        k = mean_change(values)
        return None if k is None else first + k

    def __getstate__(self) -> dict[str, Any]:
        # A checkpoint holds what is kept, as one block.
        start = self.end - self._kept
        if not self._kept or not self.width:  # no numeric column: only the positions count
            block = np.empty((self._kept, self.width), dtype=self.dtype)
        else:
            block = np.column_stack([self.window(c, start, self.end)[1] for c in range(self.width)])
        return {
            "width": self.width,
            "capacity": self.capacity,
            "end": self.end,
            "block": block,
            "dtype": self.dtype,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.width, self.capacity = state["width"], state["capacity"]
        self.dtype = state.get("dtype", "float64")
        block = state["block"]
        self._chunks, self._kept = deque(), 0
        self.end = state["end"] - len(block)
        self._append(len(block), block)
