"""Stream position -> record index, for streams that skip records or arrive out of order."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["IndexMap"]


class IndexMap:
    """Runs of consecutive record indices, so a position in a stream maps back to a record.

    Feature streams add one run per batch; the error stream (labels in arrival order) adds
    more. Only the last ``max_runs`` runs are kept; older positions map to the oldest kept.

    Examples
    --------
    >>> m = IndexMap()
    >>> m.extend_range(100, 3)
    >>> m.extend([103, 107, 108, 2])
    >>> [m.index_at(p) for p in range(7)]
    [100, 101, 102, 103, 107, 108, 2]

    """

    def __init__(self, max_runs: int = 65_536) -> None:
        self.max_runs = max_runs
        self._pos: list[int] = []
        self._index: list[int] = []
        self.length = 0

    def extend_range(self, first: int, count: int) -> None:
        """Append the records ``first, first + 1, ..., first + count - 1``."""
        if count <= 0:
            return
        if self._pos and self._index[-1] + (self.length - self._pos[-1]) == first:
            self.length += count
            return
        self._pos.append(self.length)
        self._index.append(first)
        self.length += count
        if len(self._pos) > 2 * self.max_runs:
            del self._pos[: -self.max_runs], self._index[: -self.max_runs]

    def extend(self, indices: Sequence[int]) -> None:
        """Append records in the given order."""
        start = 0
        n = len(indices)
        while start < n:
            end = start + 1
            while end < n and indices[end] == indices[end - 1] + 1:
                end += 1
            self.extend_range(indices[start], end - start)
            start = end

    def index_at(self, position: int) -> int:
        """The record index at stream ``position`` (clamped to what is kept)."""
        if not self._pos:
            return position
        k = max(0, bisect.bisect_right(self._pos, position) - 1)
        return self._index[k] + max(0, position - self._pos[k])
