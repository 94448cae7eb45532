"""Second moments of the numeric features: a change of variance, or of correlation, as a test.

The feature detectors (ADWIN by default) watch each feature's mean, so a change in spread, or
two features that start to move together while each keeps its distribution, never shows to
them. This watch compares, every ``window`` records, the window's variance of each feature and
the correlation of each pair with a reference: the first ``reference`` records after a
(re)baseline.

The tests run on normal scores, not on the raw values: each value falls in one of
:data:`BUCKETS` quantile buckets of the reference and is scored by the standard normal quantile
of that bucket's middle (its share of the reference, cumulated). Window and reference are
scored alike, so under no change the scores of a window are distributed as the reference's
whatever the feature's distribution, ties included: a heavy-tailed or a skewed feature holds
the same false-alarm budget as a normal one (on the raw values, Student t(3) and log-normal
features raised about 200 false alarms per million records).

* variance: ``log(s_w^2 / s_ref^2)`` of the scores, whose standard error is
  ``sqrt((kurtosis - 1) / n)`` for each sample (the scores' kurtosis on the reference, at
  least the normal's 3, which ties can raise);
* correlation: Fisher's ``atanh(r_w) - atanh(r_ref)`` of the scores, standard error
  ``sqrt(1/(n_w - 3) + 1/(n_ref - 3))``.

A test fires when its statistic passes ``threshold`` standard errors. The threshold comes from
a false-alarm budget (:func:`threshold_for`): with ``m`` tests every ``window`` records and an
expected run of ``run_length`` records between false alarms of the whole family, each test may
err with probability ``window / (run_length * m)``, two-sided (Bonferroni).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> watch = SecondMoments(["a", "b", "c"], window=250, reference=1000, run_length=1e8)
>>> watch.feed(rng.normal(size=(2000, 3)))
[]
>>> x = rng.normal(size=(250, 3))
>>> x[:, 1] = 0.9 * x[:, 0] + 0.44 * x[:, 1]
>>> [(h.test, h.features, h.at) for h in watch.feed(x)]
[('correlation', ('a', 'b'), 2249)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BUCKETS", "CHUNK", "GRID", "MomentHit", "SecondMoments", "threshold_for"]

#: Quantile buckets of the reference a value is scored by: fine enough to lose little power
#: (the scores of 64 equal buckets have 99% of a normal's variance), coarse enough that the
#: lookup costs a third of a search among all 1,000 reference values.
BUCKETS = 64
#: Cells of the grid a value is placed on before its bucket is looked up (a vectorised
#: lookup over the whole batch instead of a search per feature).
GRID = 1024
#: Records gathered before they are scored and summed, when they arrive a few at a time.
CHUNK = 64


def threshold_for(run_length: float, window: int, tests: int) -> float:
    """Standard errors a test must pass so that the family of ``tests`` tests, run every
    ``window`` records, errs once per ``run_length`` records on average (two-sided)."""
    alpha = window / (run_length * max(1, tests))
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


@dataclass(frozen=True, slots=True)
class MomentHit:
    """A test that fired at stream position ``at`` (the window's last record): ``test`` is
    ``variance`` or ``correlation``, ``features`` the feature or the pair, ``statistic`` in
    standard errors."""

    test: str
    features: tuple[str, ...]
    at: int
    statistic: float
    before: float
    after: float

    def stats(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "features": list(self.features),
            "statistic": round(self.statistic, 3),
            "before": round(self.before, 6),
            "after": round(self.after, 6),
        }


class SecondMoments:
    """Variance and pairwise-correlation tests on the numeric features, window by window.

    Parameters
    ----------
    names
        The numeric features, in the order of the columns fed.
    window, reference
        Records per test, and records that form the reference after a reset.
    run_length
        Records between false alarms of all the tests together, on average: the threshold,
        in standard errors, is derived from it (:func:`threshold_for`).
    pairs
        Whether to test correlations (all pairs; the caller turns it off for wide schemas).
    """

    def __init__(
        self,
        names: list[str],
        *,
        window: int = 250,
        reference: int = 1000,
        run_length: float = 1e8,
        pairs: bool = True,
    ) -> None:
        self.names = list(names)
        self.window = window
        self.reference = reference
        self.pairs = pairs and len(names) > 1
        k = len(names)
        self._upper = np.triu_indices(k, 1)
        self.threshold = threshold_for(run_length, window, self.tests)
        self.pos = 0
        self._reset()

    @property
    def tests(self) -> int:
        k = len(self.names)
        return k + (k * (k - 1) // 2 if self.pairs else 0)

    def _reset(self) -> None:
        k = len(self.names)
        self._pending: list[npt.NDArray[np.float64]] = []
        self._pending_n = 0
        self._ref_rows: list[npt.NDArray[np.float64]] = []
        self._ref_n = 0
        self._mean = np.zeros(k)
        self._sd = np.ones(k)
        self._log_var = np.zeros(k)
        self._kurt = np.full(k, 3.0)
        self._fisher = np.zeros(len(self._upper[0]))
        self._constant = np.zeros(k, dtype=bool)
        self._low = np.zeros(k)
        self._scale = np.ones(k)
        self._offsets = np.arange(k) * GRID
        self._cell_score = np.zeros(k * GRID)
        self._ready = False
        self._acc = _Sums(k)

    def reset(self) -> None:
        """Start over: the next ``reference`` records form a new reference."""
        self._reset()

    @property
    def reference_mean(self) -> npt.NDArray[np.float64]:
        return self._mean

    @property
    def reference_sd(self) -> npt.NDArray[np.float64]:
        return self._sd

    def feed(self, block: npt.NDArray[np.float64]) -> list[MomentHit]:
        """Feed the next records (an ``(n, k)`` array); return the tests that fired.

        Records arriving a few at a time (single predictions) wait until :data:`CHUNK` have
        come, so that each is not a dozen array operations of its own, or until they complete
        a test's window: a test is reported with its window's last record, whatever the
        batches, so the alarm policy sees it in record order among the other signals."""
        if self._pending or len(block) < CHUNK:
            self._pending.append(np.array(block, dtype=np.float64))
            self._pending_n += len(block)
            if self._pending_n < min(CHUNK, self._to_next_test()):
                return []
            block = np.concatenate(self._pending)
            self._pending, self._pending_n = [], 0
        hits: list[MomentHit] = []
        i, n = 0, len(block)
        if not self._ready:
            i = min(n, self.reference - self._ref_n)
            self._ref_rows.append(np.array(block[:i], dtype=np.float64))
            self._ref_n += i
            self.pos += i
            if self._ref_n >= self.reference:
                self._set_reference(np.concatenate(self._ref_rows))
        if i >= n:
            return hits
        scores = self._scores_of(block[i:])  # the rest, scored at once
        j = 0
        while j < len(scores):
            take = min(len(scores) - j, self.window - self._acc.n)
            self._acc.add(scores[j : j + take])
            j += take
            self.pos += take
            if self._acc.n >= self.window:
                hits += self._test(self.pos - 1)
                self._acc = _Sums(len(self.names))
        return hits

    def _to_next_test(self) -> int:
        """Records still to come before the next test runs."""
        if self._ready:
            return self.window - self._acc.n
        return self.reference - self._ref_n + self.window

    def _scores_of(self, block: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Normal scores: each value's cell on the reference's grid (values past its ends in the
        end cells), scored as the bucket of the reference's quantiles that holds the cell."""
        cell = ((block - self._low) * self._scale).astype(np.intp)
        np.clip(cell, 0, GRID - 1, out=cell)
        cell += self._offsets
        return self._cell_score.take(cell)

    def _set_reference(self, rows: npt.NDArray[np.float64]) -> None:
        self._ref_rows = []
        self._mean = rows.mean(axis=0)
        sd = rows.std(axis=0, ddof=1)
        self._sd = np.where(sd > 0, sd, 1.0)
        k = len(self.names)
        # A grid of GRID cells from the 0.5% to the 99.5% quantile of each feature; each cell
        # belongs to the quantile bucket of its middle.
        low, high = np.quantile(rows, [0.005, 0.995], axis=0)
        span = np.where(high > low, high - low, 1.0)
        self._low, self._scale = low, GRID / span
        self._offsets = np.arange(k) * GRID
        cuts = np.quantile(rows, np.arange(1, BUCKETS) / BUCKETS, axis=0).T
        middles = low[:, None] + (np.arange(GRID) + 0.5)[None, :] * (span / GRID)[:, None]
        bucket = np.stack([c.searchsorted(m, "right") for c, m in zip(cuts, middles, strict=True)])
        self._cell_score = np.zeros(k * GRID)  # the buckets' scores, cell by cell
        cells = ((rows - low) * self._scale).astype(np.intp).clip(0, GRID - 1)
        normal = NormalDist()
        for j in range(k):
            of_rows = bucket[j, cells[:, j]]
            share = np.bincount(of_rows, minlength=BUCKETS) / len(rows)
            middle = np.clip(np.cumsum(share) - share / 2, 1e-9, 1 - 1e-9)
            score = np.array([normal.inv_cdf(float(m)) for m in middle])
            self._cell_score[j * GRID : (j + 1) * GRID] = score[bucket[j]]
        scores = self._scores_of(rows)
        spread = scores.std(axis=0, ddof=1)
        self._log_var = np.log(np.maximum(spread**2, 1e-300))
        z = (scores - scores.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        self._kurt = np.maximum((z**4).mean(axis=0), 3.0)
        if self.pairs:
            corr = (z.T @ z) / (len(z) - 1)
            self._fisher = np.arctanh(np.clip(corr[self._upper], -0.999999, 0.999999))
        self._constant = sd <= 0  # a constant feature has no spread to test
        self._ready = True

    def _test(self, at: int) -> list[MomentHit]:
        acc, n_ref = self._acc, self.reference
        n = acc.n
        mean = acc.sum / n
        var = np.maximum((acc.sq - n * mean**2) / (n - 1), 1e-300)
        se_var = np.sqrt((self._kurt - 1.0) / n + (self._kurt - 1.0) / n_ref)
        t_var = (np.log(var) - self._log_var) / se_var
        fired = np.flatnonzero((np.abs(t_var) > self.threshold) & ~self._constant)
        hits = [
            MomentHit(
                "variance",
                (self.names[j],),
                at,
                float(t_var[j]),
                float(math.exp(self._log_var[j])),
                float(var[j]),
            )
            for j in fired
        ]
        if self.pairs:
            cov = (acc.cross - n * np.outer(mean, mean)) / (n - 1)
            sd = np.sqrt(var)
            corr = (cov / np.outer(sd, sd))[self._upper]
            fisher = np.arctanh(np.clip(corr, -0.999999, 0.999999))
            t_corr = (fisher - self._fisher) / math.sqrt(1.0 / (n - 3) + 1.0 / (n_ref - 3))
            rows, cols = self._upper
            for p in np.flatnonzero(np.abs(t_corr) > self.threshold):
                pair = (self.names[rows[p]], self.names[cols[p]])
                before, after = float(np.tanh(self._fisher[p])), float(corr[p])
                hits.append(MomentHit("correlation", pair, at, float(t_corr[p]), before, after))
        return sorted(hits, key=lambda h: -abs(h.statistic))


class _Sums:
    """Sums, squares and cross products of a window's standardised records."""

    __slots__ = ("cross", "n", "sq", "sum")

    def __init__(self, k: int) -> None:
        self.n = 0
        self.sum = np.zeros(k)
        self.sq = np.zeros(k)
        self.cross = np.zeros((k, k))

    def add(self, z: npt.NDArray[np.float64]) -> None:
        self.n += len(z)
        self.sum += z.sum(axis=0)
        self.sq += (z**2).sum(axis=0)
        self.cross += z.T @ z
