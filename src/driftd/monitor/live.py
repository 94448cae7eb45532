"""The live performance estimate: accuracy or MAE over the most recent labelled records."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

__all__ = ["LiveScore"]


class LiveScore:
    """Windowed accuracy (classification) or mean absolute error (regression).

    Parameters
    ----------
    metric
        ``"accuracy"`` (fed 1 for a correct prediction, 0 otherwise) or ``"mae"`` (fed
        absolute errors).
    window
        Number of most recent labelled records averaged.
    min_count
        The estimate is None until this many labelled records arrived.

    Examples
    --------
    >>> live = LiveScore("accuracy", window=4, min_count=2)
    >>> live.value is None
    True
    >>> live.extend([1, 0, 1, 1, 1])
    >>> live.value
    0.75

    """

    def __init__(self, metric: str, window: int, min_count: int) -> None:
        self.metric = metric
        self.window = window
        self.min_count = min_count
        self._reset()

    def _reset(self) -> None:
        self._values: deque[float] = deque(maxlen=self.window)

    def reset(self) -> None:
        self._reset()

    def extend(self, values: Iterable[float]) -> None:
        self._values.extend(values)

    def configure(self, window: int, min_count: int) -> None:
        """New settings (a restart under another config): keep the most recent ``window``
        values."""
        self.min_count = min_count
        if window != self.window:
            self.window = window
            self._values = deque(self._values, maxlen=window)

    @property
    def count(self) -> int:
        return len(self._values)

    @property
    def value(self) -> float | None:
        if len(self._values) < min(self.min_count, self.window):
            return None
        return math.fsum(self._values) / len(self._values)
