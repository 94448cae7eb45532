"""Which registry versions to keep, and so which to delete: the retention rule, pure.

A version is about 750 KB for the demo's model and a busy daemon publishes several a day, so a
registry that keeps every version fills its disk. The rule keeps what an operator can still
want: the champion and the version serving (one and the same except for an instant), the
previous champion (the rollback and the post-deploy guard's target), the versions pinned in
``[model] pinned``, and the newest ``[model] keep_versions``. It never reads the registry: the
lifecycle (:mod:`driftd.models.lifecycle`) hands it the numbers and performs the deletions.

>>> from driftd.models.retention import Retention
>>> rule = Retention(keep_versions=2, pinned=frozenset({1}))
>>> rule.doomed([1, 2, 3, 4, 5, 6, 7], protected=(3, 6, None))
[2, 4, 5]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Retention"]


@dataclass(frozen=True, slots=True)
class Retention:
    """Keep the newest ``keep_versions`` (at least 1), the ``pinned`` ones, and whatever the
    caller protects (the champion, the previous champion, the serving version)."""

    keep_versions: int = 10
    pinned: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.keep_versions < 1:
            # The newest version must stay: the next one's number is the newest's plus one.
            raise ValueError(f"keep_versions: got {self.keep_versions}, expected a value >= 1")

    def doomed(self, numbers: Iterable[int], *, protected: Iterable[int | None]) -> list[int]:
        """The versions among ``numbers`` that the rule lets go, oldest first."""
        ordered = sorted(numbers)
        keep = set(ordered[-self.keep_versions :]) | self.pinned
        keep.update(n for n in protected if n is not None)
        return [n for n in ordered if n not in keep]
