"""The alarm policy: which detections are reported and when they add up to an alarm.

Pure bookkeeping on record indices; no detector, clock or I/O here.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["AlarmPolicy"]


class AlarmPolicy:
    """Suppression of repeated firings, K-of-W data-drift alarms and concept-drift alarms.

    Parameters
    ----------
    features
        Distinct features that must drift within ``window`` records for a data-drift alarm
        (capped at the number of monitored features, so one-feature models can alarm).
    window
        Records within which the feature detections must fall.
    suppress
        A detector that fires again within this many records of its last reported firing is
        not reported; an alarm of a kind within this many records of the last one is dropped.
    n_features
        Number of monitored input features.

    Examples
    --------
    >>> policy = AlarmPolicy(features=2, window=100, suppress=50, n_features=5)
    >>> policy.admit(("feature", "a"), 10), policy.admit(("feature", "a"), 40)
    (True, False)
    >>> policy.feature_drift("a", 10), policy.feature_drift("b", 200)
    ((), ())
    >>> policy.feature_drift("c", 250)
    ('b', 'c')

    """

    def __init__(self, features: int, window: int, suppress: int, n_features: int) -> None:
        self.features = features
        self.window = window
        self.suppress = suppress
        self.n_features = n_features
        self._reset()

    def configure(self, features: int, window: int, suppress: int) -> None:
        """New settings (a restart under another config), keeping what has fired."""
        self.features, self.window, self.suppress = features, window, suppress

    def _reset(self) -> None:
        self._fired: dict[Hashable, int] = {}
        self._recent: dict[str, int] = {}
        self._alarmed: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every firing and alarm (a new model: a new reference)."""
        self._reset()

    @property
    def needed(self) -> int:
        return max(1, min(self.features, self.n_features))

    def admit(self, key: Hashable, index: int) -> bool:
        """Whether a firing of detector ``key`` at ``index`` is reported (not suppressed)."""
        last = self._fired.get(key)
        if last is not None and index - last < self.suppress:
            return False
        self._fired[key] = index
        return True

    def feature_drift(self, feature: str, index: int) -> tuple[str, ...]:
        """Record a reported feature drift; return the features of the data-drift alarm it
        completes, oldest first, or ``()`` when it completes none."""
        self._recent[feature] = index
        for name, at in list(self._recent.items()):
            if index - at >= self.window:
                del self._recent[name]
        if len(self._recent) < self.needed:
            return ()
        drifting = self.drifting()
        self._recent.clear()
        return tuple(drifting) if self._alarm("data_drift", index) else ()

    def concept_drift(self, index: int) -> bool:
        """Record a reported error-stream drift; return whether it raises an alarm."""
        return self._alarm("concept_drift", index)

    def performance_drop(self, index: int) -> bool:
        """Record a reported rise of the estimated error; return whether it raises an alarm."""
        return self._alarm("performance_drop_estimated", index)

    def drifting(self) -> list[str]:
        """Features with a reported drift in the current window, oldest first."""
        return sorted(self._recent, key=self._recent.__getitem__)

    def _alarm(self, kind: str, index: int) -> bool:
        last = self._alarmed.get(kind)
        if last is not None and index - last < self.suppress:
            return False
        self._alarmed[kind] = index
        return True
