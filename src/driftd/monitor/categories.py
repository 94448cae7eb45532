"""Category-frequency drift of one categorical stream (a feature, or predicted classes).

The first ``reference`` records fix the reference: the ``top`` most frequent categories each
get a binary ADWIN on their indicator, and one more ADWIN watches the share of all other
categories. A category absent from the reference is *unseen*: it is counted, falls into the
"other" bucket, and never raises. The ADWIN confidence is divided by the number of buckets so
one feature's false-alarm rate does not grow with ``top``.

Why indicator ADWINs rather than a windowed chi-square test: the ADWINs reuse the numeric
detector's machinery, adapt their window to the size of the shift (no fixed test window to
wait for), and give a change point per category; docs/monitor.md has the measurements.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from driftd.monitor.watch import DRIFT, Hit, Watch

__all__ = ["OTHER", "CategoryWatch"]

OTHER = "__other__"
_EXAMPLES = 10


class CategoryWatch:
    """Indicator ADWINs on the top categories of a reference, plus an "other" bucket.

    Parameters
    ----------
    top
        Number of most frequent reference categories watched one by one.
    reference
        Number of records that form the reference.
    params
        ADWIN parameters; ``delta`` is divided by the number of buckets.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> watch = CategoryWatch(top=3, reference=500)
    >>> before = rng.choices("abcd", weights=[5, 3, 1, 1], k=3000)
    >>> after = rng.choices("abcde", weights=[2, 3, 1, 1, 3], k=3000)
    >>> hits = watch.feed(before) + watch.feed(after)
    >>> [(h.at, h.stats["category"]) for h in hits][:2]
    [(3103, '__other__'), (3135, 'a')]
    >>> watch.unseen
    900

    """

    def __init__(self, top: int, reference: int, params: Mapping[str, Any] | None = None) -> None:
        self.top = top
        self.reference = reference
        self.params = dict(params or {})
        self.pos = 0
        self._reset()

    def _reset(self) -> None:
        self.start = self.pos
        self._sample: list[Hashable] = []
        self.categories: tuple[Hashable, ...] = ()
        self.shares: tuple[float, ...] = ()
        self.seen: frozenset[Hashable] = frozenset()
        self.watches: list[Watch] = []
        self.unseen = 0
        self.unseen_examples: list[str] = []

    def reset(self) -> None:
        """Start a new reference at the current position."""
        self._reset()

    @property
    def ready(self) -> bool:
        return bool(self.watches)

    def feed(self, values: Sequence[Hashable]) -> list[Hit]:
        """Update with a column of categories; return the bucket drifts (``stats["category"]``)."""
        hits: list[Hit] = []
        if not self.watches:
            need = self.reference - len(self._sample)
            self._sample.extend(values[:need])
            self.pos += min(need, len(values))
            if len(self._sample) < self.reference:
                return hits
            sample, self._sample = self._sample, []
            self._freeze(sample)
            hits = self._feed_buckets(sample)
            values = values[need:]
            self.pos += len(values)
        else:
            self.pos += len(values)
        if values:
            seen = self.seen
            known = sum(map(seen.__contains__, values))
            if known < len(values):
                self._count_unseen(values)
            hits += self._feed_buckets(values)
        return hits

    def _freeze(self, sample: list[Hashable]) -> None:
        counts = Counter(sample)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[: self.top]
        self.categories = tuple(c for c, _ in ranked)
        total = len(sample)
        top_shares = [n / total for _, n in ranked]
        self.shares = (*top_shares, 1.0 - sum(top_shares))
        self.seen = frozenset(counts)
        buckets = len(self.categories) + 1
        params = dict(self.params)
        params["delta"] = float(params.get("delta", 0.002)) / buckets
        self.watches = []
        for _ in range(buckets):
            self.watches.append(Watch("adwin", params, start=self.start))

    def _count_unseen(self, values: Sequence[Hashable]) -> None:
        for value in values:
            if value not in self.seen:
                self.unseen += 1
                name = str(value)
                if len(self.unseen_examples) < _EXAMPLES and name not in self.unseen_examples:
                    self.unseen_examples.append(name)

    def _feed_buckets(self, values: Sequence[Hashable]) -> list[Hit]:
        hits: list[Hit] = []
        for cat, share, watch in zip(self.categories, self.shares, self.watches, strict=False):
            column = list(map(functools.partial(operator.eq, cat), values))
            hits.extend(_labelled(hit, cat, share, inverted=False) for hit in watch.feed(column))
        # The last bucket watches "in the top categories": the complement of "other".
        top = frozenset(self.categories)
        column = list(map(top.__contains__, values))
        other = self.shares[-1]
        hits.extend(
            _labelled(h, OTHER, other, inverted=True) for h in self.watches[-1].feed(column)
        )
        hits.sort(key=lambda h: h.at)
        return hits

    @property
    def current_shares(self) -> tuple[float, ...]:
        """Each bucket's share in its ADWIN window (the reference shares before one exists)."""
        if not self.watches:
            return ()
        shares = [w.estimate for w in self.watches[:-1]]
        shares.append(1.0 - self.watches[-1].estimate)
        return tuple(shares)

    @property
    def estimate(self) -> float:
        """Total variation distance between reference and current bucket shares (0..1)."""
        if not self.watches:
            return 0.0
        now = self.current_shares
        return 0.5 * sum(abs(a - b) for a, b in zip(self.shares, now, strict=True))


def _labelled(hit: Hit, category: Hashable, reference: float, *, inverted: bool) -> Hit:
    stats = dict(hit.stats)
    for key in ("mean_before", "mean_after"):
        value = stats.pop(key)
        if value is not None and inverted:
            value = 1.0 - value
        stats["share_" + key.split("_")[1]] = value
    stats["category"] = category if isinstance(category, int | str) else str(category)
    stats["reference_share"] = reference
    return Hit(hit.at, DRIFT, hit.change, stats)
