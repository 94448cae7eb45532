"""The candidate pool of a retrain: which models one job fits, and which of them meets the gate.

A retrain cannot know how far back the new regime reaches: an alarm's change point is an
estimate, a drift may touch only part of the population (then older rows still help), and a
stable concept is fitted with less variance on a longer window. So a job fits several candidates
on suffixes of one time-ordered training window, all ending where the holdout begins:

* ``since_change``: the rows after the alarm's change point (drift jobs);
* ``window``: the whole window (``[retrain] window_rows`` less the holdout);
* the growth sequence between them, ``recent_<rows>``: geometric steps from the change point
  back to the window's start (drift jobs), or the window's most recent half and quarter;
* ``online``: the river learner that keeps learning from every labelled row
  (:mod:`driftd.models.online`), as it stood when the holdout began.

Every candidate is scored on the same holdout, the most recent rows, which none of them learned
from; the best goes to the gate, which still compares it with the champion on that holdout.
What deploys is that candidate brought up to the newest row (``refit``): refitted on as many
rows, ending at the holdout's end, or for the online learner, as it stands after learning the
holdout. A model held away from the newest rows would serve a window staler than a periodic
refit's; the post-deploy guard, which scores the previous champion in shadow, is what answers
for the refit.
Among candidates within ``[gate] tie_margin`` of the best, the one that learned from the most
rows wins: the same score from more data is the lower-variance model.

>>> plan(PoolConfig(), train_rows=16_000, since_change=None)
[Member(name='window', rows=16000), Member(name='recent_8000', rows=8000), \
Member(name='recent_4000', rows=4000)]
>>> [m.name for m in plan(PoolConfig(), train_rows=19_920, since_change=320)]
['window', 'recent_5026', 'recent_1268', 'since_change']
>>> pick = choose([Entry("window", 16_000, 0.901), Entry("online", 40_000, 0.903),
...                Entry("since_change", 300, 0.95)], "accuracy", tie_margin=0.005)
>>> pick.index, pick.why
(2, 'best accuracy on the holdout: 0.9500 (online 0.9030)')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from driftd._imports import check_import
from driftd.retrain.gate import HIGHER_IS_BETTER

__all__ = [
    "Choice",
    "Entry",
    "Member",
    "PoolConfig",
    "choose",
    "online_enters",
    "online_estimator",
    "plan",
]

#: The online family when ``[pool] online_estimator`` is unset, by task.
ONLINE_DEFAULTS = {
    "classification": "river.forest.ARFClassifier",
    "regression": "river.forest.ARFRegressor",
}


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """``[pool]``: ``windows`` fits the growth sequence beside the window (and the rows since
    the change point); ``fast_first`` makes a drift regime's first retrain fit the rows since
    the change point alone (see :func:`plan`), and its growth retrains too while those rows
    are fewer than ``fast_until`` of ``[retrain] window_rows`` (0: the first alone);
    ``max_windows`` bounds the batch candidates of one job (the fits' cost);
    ``refit`` deploys the chosen candidate refitted up to the newest row (the holdout too);
    ``online`` keeps a river learner learning and enters its snapshot in every job (but see
    ``online_patience``, :func:`online_enters`);
    ``online_max_rows`` bounds what it learns in one job (0: no bound), of the training rows new
    to it and of the holdout each, the newest first: its cost is on every job's wall time."""

    windows: bool = True
    fast_first: bool = True
    fast_until: float = field(default=0.25, metadata={"min": 0.0, "max": 1.0})
    max_windows: int = field(default=4, metadata={"min": 1, "max": 16})
    min_rows: int = field(default=100, metadata={"min": 10})
    refit: bool = True
    online: bool = True
    online_estimator: str | None = None
    online_params: dict[str, Any] = field(default_factory=lambda: {"seed": 0})
    online_max_rows: int = field(default=1_000, metadata={"min": 0})
    online_patience: int = field(default=3, metadata={"min": 0})

    def validate(self) -> list[str]:
        if self.online_estimator is None:
            return []
        problem = check_import(self.online_estimator)
        return [f"online_estimator: got {self.online_estimator!r}, {problem}"] if problem else []


def online_enters(lost: int, sat_out: int, patience: int) -> bool:
    """Whether the online learner enters the next job, given how many of its entries in a row
    it lost (another candidate was chosen) and how many jobs it has sat out since its last.
    It enters every job until it loses ``patience`` in a row, then one job in
    ``patience + 1`` until it wins one (``patience`` 0: every job). Its part of a job is
    mostly its learning (ARF: 0.6 ms a row, up to 2,000 rows a job): over HTTP at 2,000
    records/s, 1.6 to 3.3 s of a challenger's 3.3 to 4.8 s on a hyperplane where it never won,
    so that challengers fell behind their cadence.

    >>> [online_enters(lost=3, sat_out=k, patience=3) for k in range(4)]
    [False, False, False, True]
    >>> online_enters(lost=2, sat_out=0, patience=3)
    True
    """
    return not patience or lost < patience or sat_out >= patience


def online_estimator(config: PoolConfig, task: str) -> str:
    """The import path of the online family for ``task``."""
    return config.online_estimator or ONLINE_DEFAULTS[task]


@dataclass(frozen=True, slots=True)
class Member:
    """A batch candidate: fitted on the most recent ``rows`` rows of the training window."""

    name: str
    rows: int


def plan(
    config: PoolConfig, *, train_rows: int, since_change: int | None, first: bool = False
) -> list[Member]:
    """The batch candidates for a training window of ``train_rows`` rows; ``since_change``, the
    rows of it after the alarm's change point (``None``: not a drift job). Largest first;
    sizes within 10% of one already planned are left out. Without ``windows`` (or with one
    slot), one candidate: the rows since the change point, or the window between drifts.

    A drift regime's ``first`` retrain, with ``fast_first``, fits the rows since the change
    point alone, and no online learner either: every second it takes serves the old model to
    the new regime (at 2,000 records/s on 2 cores the whole pool took 5 to 19 s), and right
    after a change those rows are the candidate most likely to be right. So do the regime's
    growth retrains (each when its rows have doubled) while they are young, under
    ``fast_until`` of the window: at 2,000 records/s a whole pool took 4 to 5 s, and replay
    meanwhile deployed four growth retrains; after that, they fit the whole pool. The caller
    says which (``first``).

    >>> plan(PoolConfig(), train_rows=19_920, since_change=320, first=True)
    [Member(name='since_change', rows=320)]
    """
    if (
        first
        and config.fast_first
        and since_change is not None
        and since_change >= min(config.min_rows, train_rows)
    ):
        return [Member("since_change", since_change)]
    if not config.windows or config.max_windows == 1:
        if since_change is not None and 0 < since_change < train_rows:
            return [Member("since_change", since_change)]
        return [Member("window", train_rows)]
    sizes: list[tuple[str, int]] = [("window", train_rows)]
    slots = config.max_windows - 1
    if since_change is not None and 0 < since_change < train_rows:
        low = max(since_change, min(config.min_rows, train_rows))
        if slots > 1:
            ratio = (train_rows / low) ** (1 / slots)
            sizes += [("recent", round(low * ratio**k)) for k in range(slots - 1, 0, -1)]
        sizes.append(("since_change", low))
    else:
        sizes += [("recent", train_rows >> k) for k in range(1, slots)]
    out: list[Member] = []
    for kind, rows in sizes:
        if rows < min(config.min_rows, train_rows) or any(
            abs(rows - m.rows) <= 0.1 * m.rows for m in out
        ):
            continue
        out.append(Member(kind if kind != "recent" else f"recent_{rows}", rows))
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    """A fitted candidate as the choice sees it: its name, the rows it learned from, and its
    score on the holdout (NaN when it failed or could not be scored)."""

    name: str
    rows: int
    score: float


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    why: str


def choose(entries: Sequence[Entry], metric: str, *, tie_margin: float) -> Choice:
    """The candidate that goes to the gate (see the module docstring), and why; raises
    ValueError when no candidate has a finite score."""
    higher = HIGHER_IS_BETTER[metric]
    scored = [(i, e) for i, e in enumerate(entries) if math.isfinite(e.score)]
    if not scored:
        raise ValueError("no candidate of the pool could be scored on the holdout")
    best = max(e.score for _, e in scored) if higher else min(e.score for _, e in scored)
    close = [(i, e) for i, e in scored if abs(e.score - best) <= tie_margin]
    index, chosen = max(close, key=lambda ie: ie[1].rows)
    others = [e for i, e in scored if i != index]
    runner = max(others, key=lambda e: e.score if higher else -e.score) if others else None
    versus = "" if runner is None else f" ({runner.name} {runner.score:.4f})"
    if chosen.score == best:
        return Choice(index, f"best {metric} on the holdout: {chosen.score:.4f}{versus}")
    return Choice(
        index,
        f"{metric} {chosen.score:.4f}, within {tie_margin:g} of the best ({best:.4f}),"
        f" learned from the most rows ({chosen.rows})",
    )
