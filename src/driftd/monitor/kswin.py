"""KSWIN with river's decisions, computed per batch instead of per record.

``river.drift.KSWIN`` draws a random subsample of its window and runs ``scipy.stats.ks_2samp``
on every record, which caps it at a few thousand records a second. This class takes the same
decisions on the same data and seed, but

* draws the same random numbers: ``random.Random(seed)`` and numpy's ``MT19937`` are the same
  Mersenne Twister, so the words ``Random.sample`` would consume are generated in bulk and
  decoded (rejection sampling and the pool shuffle of ``Random.sample``) for a whole batch;
* computes only the KS statistic, on integer ranks, for all records of a batch at once; the
  p-value ``ks_2samp(method="auto")`` would give for each possible statistic is tabulated once
  per ``(stat_size, alpha)``, so no test runs per record.

It must never diverge from river: ``tests/test_monitor_kswin.py`` compares decisions against
``river.drift.KSWIN`` on the same streams and seeds.
"""

from __future__ import annotations

import copy
import functools
import random
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["KSWIN"]

_CHUNK = 1024  # tests evaluated together; a drift wastes the rest of a chunk


class KSWIN:
    """Kolmogorov-Smirnov windowing drift detector, batch-vectorised, river-exact.

    Parameters
    ----------
    alpha
        Significance of the two-sample KS test (river's ``alpha``).
    window_size
        Size of the sliding window.
    stat_size
        Size of the most recent sub-window compared against a random subsample of the rest.
    seed
        Seed of the subsampling; the same seed gives river's decisions exactly.

    Notes
    -----
    After a drift the detector forgets everything at the next record (window, counter and
    random generator), exactly like river. The change point of a drift is the first record of
    the recent sub-window: ``index - stat_size + 1``.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(12345)
    >>> kswin = KSWIN(alpha=0.0001, seed=42)
    >>> data_stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
    >>> kswin.update_many(data_stream)
    [1016]
    >>> kswin.drift_detected
    False

    """

    def __init__(
        self,
        alpha: float = 0.005,
        window_size: int = 100,
        stat_size: int = 30,
        seed: int | None = None,
    ) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha: got {alpha!r}, expected a value in [0, 1]")
        if not 0 < stat_size < window_size:
            raise ValueError(
                f"stat_size: got {stat_size!r}, expected 0 < stat_size < window_size"
                f" ({window_size})"
            )
        self.alpha = alpha
        self.window_size = window_size
        self.stat_size = stat_size
        self.seed = random.randrange(2**32) if seed is None else seed
        self._reset()

    def _reset(self) -> None:
        self._drift_detected = False
        self.p_value = 0.0
        self.statistic = 0.0
        self.n = 0
        self._window: npt.NDArray[np.float64] = np.empty(0)
        self._tests = 0  # KS tests since the reset: the position in the seed's row sequence
        self._own: _Sampler | None = None  # only past the shared prefix of the row sequence

    @property
    def drift_detected(self) -> bool:
        """Whether the last record completed a drift."""
        return self._drift_detected

    def update(self, x: float) -> None:
        """Update with one value (slow path; the monitor calls :meth:`update_many`)."""
        self.update_many([x])

    def update_many(self, values: Sequence[float] | npt.NDArray[np.float64]) -> list[int]:
        """Update with many values; return the offsets (into ``values``) of the drifts."""
        xs = np.asarray(values, dtype=np.float64)
        drifts: list[int] = []
        start = 0
        while start < len(xs):
            if self._drift_detected:
                self._reset()
            hit = self._run(xs[start:])
            if hit is None:
                break
            drifts.append(start + hit)
            start += hit + 1
        return drifts

    def _run(self, xs: npt.NDArray[np.float64]) -> int | None:
        """Feed ``xs`` until the first drift; return its offset, or None if there was none."""
        ws, ss = self.window_size, self.stat_size
        keep = self._window
        buf = np.concatenate([keep, xs]) if len(keep) else xs
        first = ws - 1  # buf position of the first record that completes a window
        decide, p_values, stats = _tables(ss, self.alpha)
        pos = first
        while pos < len(buf):
            stop = min(len(buf), pos + _CHUNK)
            ends = np.arange(pos, stop)
            h = self._statistics(buf, ends)
            drift = decide[h]
            if drift.any():
                f = int(np.argmax(drift))
                self._after(buf, int(ends[f]), len(keep), h[f], p_values, stats)
                self._drift_detected = True
                return int(ends[f]) - len(keep)
            pos = stop
            self.p_value, self.statistic = float(p_values[h[-1]]), float(stats[h[-1]])
        self.n += len(xs)
        self._window = buf[-(ws - 1) :].copy()
        return None

    def _after(  # noqa: PLR0917 - private helper of _run
        self,
        buf: npt.NDArray[np.float64],
        end: int,
        kept: int,
        h: Any,
        p_values: npt.NDArray[np.float64],
        stats: npt.NDArray[np.float64],
    ) -> None:
        self.n += end + 1 - kept
        self.p_value, self.statistic = float(p_values[h]), float(stats[h])
        self._window = buf[end - self.stat_size + 1 : end + 1].copy()

    def _statistics(
        self, buf: npt.NDArray[np.float64], ends: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.intp]:
        """The KS statistic times ``stat_size`` (an integer) for the window ending at each end."""
        ws, ss = self.window_size, self.stat_size
        lo = int(ends[0]) - ws + 1
        seg = buf[lo : int(ends[-1]) + 1]
        ranks = np.unique(seg, return_inverse=True)[1].astype(np.int32)
        rows = self._rows(len(ends))
        starts = ends - ends[0]
        sampled = ranks[starts[:, None] + rows]
        recent = np.lib.stride_tricks.sliding_window_view(ranks, ss)[starts + (ws - ss)]
        keys = np.concatenate([sampled << 1, (recent << 1) | 1], axis=1)
        keys.sort(axis=1)
        # +1 for a sampled value, -1 for a recent one; the running sum is the ECDF difference
        # (times stat_size), read only at the last of each run of equal values.
        steps = (1 - 2 * (keys & 1)).astype(np.int16)
        cum = np.cumsum(steps, axis=1, dtype=np.int16)
        value = keys >> 1
        last = np.empty(keys.shape, dtype=bool)
        np.not_equal(value[:, :-1], value[:, 1:], out=last[:, :-1])
        last[:, -1] = True
        np.abs(cum, out=cum)
        cum *= last
        out: npt.NDArray[np.intp] = cum.max(axis=1).astype(np.intp)
        return out

    def _rows(self, count: int) -> npt.NDArray[np.intp]:
        """The next ``count`` subsample rows; the seed's first rows are decoded once and shared."""
        if self._own is not None:
            return self._own.take(count)
        key = (self.seed, self.window_size - self.stat_size, self.stat_size)
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = _Prefix(*key)
        start, self._tests = self._tests, self._tests + count
        if self._tests <= _PREFIX_ROWS:
            return shared.rows(start, self._tests)
        head = shared.rows(start, _PREFIX_ROWS) if start < _PREFIX_ROWS else None
        if start <= _PREFIX_ROWS:
            self._own = shared.continuation()
        assert self._own is not None
        tail = self._own.take(self._tests - max(start, _PREFIX_ROWS))
        return tail if head is None else np.concatenate([head, tail])


@functools.lru_cache(maxsize=32)
def _tables(
    stat_size: int, alpha: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """River's decision, p-value and statistic for each integer statistic ``h = D * stat_size``.

    ``ks_2samp`` (exact mode for equal sizes) rounds D to ``h / stat_size`` before computing
    the p-value, so both depend on ``h`` only; they are taken from scipy itself, on samples
    built to have exactly that ``h``.
    """
    from scipy import stats

    p_values = np.empty(stat_size + 1)
    statistic = np.empty(stat_size + 1)
    base = np.arange(stat_size, dtype=np.float64)
    for h in range(stat_size + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            st, p = stats.ks_2samp(base, base + h, method="auto")
        statistic[h], p_values[h] = float(st), float(p)
    decide = (p_values <= alpha) & (statistic > 0.1)
    return decide, p_values, statistic


_PREFIX_ROWS = 1 << 17  # rows shared per (seed, n, k): about 4 MB


class _Prefix:
    """The first rows of one seed's subsample sequence, decoded on demand, shared by detectors.

    River re-seeds KSWIN at every drift, so a detector keeps re-reading the start of the same
    sequence; decoding it once makes most tests cost only the statistic.
    """

    def __init__(self, seed: int, n: int, k: int) -> None:
        self._sampler = _Sampler(seed, n, k)
        self._dtype = np.uint8 if n <= 256 else np.intp
        self._rows: npt.NDArray[Any] = np.empty((0, k), dtype=self._dtype)

    def rows(self, start: int, stop: int) -> npt.NDArray[np.intp]:
        if stop > len(self._rows):
            more = max(stop - len(self._rows), min(len(self._rows), _PREFIX_ROWS - len(self._rows)))
            fresh = self._sampler.take(more).astype(self._dtype)
            self._rows = np.concatenate([self._rows, fresh])
        return self._rows[start:stop].astype(np.intp)

    def continuation(self) -> _Sampler:
        """A private sampler positioned right after the shared prefix."""
        self.rows(0, _PREFIX_ROWS)
        clone = _Sampler.__new__(_Sampler)
        clone.__setstate__(copy.deepcopy(self._sampler.__getstate__()))
        return clone


_SHARED: dict[tuple[int, int, int], _Prefix] = {}


class _Sampler:
    """The index rows ``Random(seed).sample(range(n), k)`` would return, generated in bulk.

    ``Random.sample`` (pool branch) calls ``_randbelow(n - i)`` for ``i < k``; each call draws
    32-bit words, keeps the top ``bit_length(n - i)`` bits and rejects values ``>= n - i``.
    The top byte of each word decides acceptance at every step (``n <= 256``), so a regular
    expression over those bytes walks the rejection automaton in C; the pool shuffle is then
    replayed with numpy for all rows at once.
    """

    def __init__(self, seed: int, n: int, k: int) -> None:
        self.n, self.k = n, k
        state = random.Random(seed).getstate()[1]
        self._key = list(state[:624])
        self._pos = int(state[624])
        self._tail = b""
        self._rows: npt.NDArray[np.intp] = np.empty((0, k), dtype=np.intp)
        self._rng: random.Random | None = None
        if not _vectorised(n, k):
            self._rng = random.Random(seed)

    def take(self, count: int) -> npt.NDArray[np.intp]:
        if self._rng is not None:
            rng = self._rng
            return np.array(
                [rng.sample(range(self.n), self.k) for _ in range(count)], dtype=np.intp
            )
        have = len(self._rows)
        if have < count:
            parts = [self._rows]
            while have < count:
                rows = self._decode(min(count - have, _CHUNK))
                parts.append(rows)
                have += len(rows)
            self._rows = np.concatenate(parts)
        out, self._rows = self._rows[:count], self._rows[count:]
        return out

    def _decode(self, count: int) -> npt.NDArray[np.intp]:
        pattern, shifts, per_row = _automaton(self.n, self.k)
        bitgen = np.random.MT19937()
        bitgen.state = {
            "bit_generator": "MT19937",
            "state": {"key": np.array(self._key, dtype=np.uint32), "pos": self._pos},
        }
        words = bitgen.random_raw(int(count * per_row * 1.1) + 64)
        state = bitgen.state["state"]
        self._key, self._pos = state["key"].tolist(), int(state["pos"])
        parts = pattern.split(self._tail + (words >> 24).astype(np.uint8).tobytes())
        self._tail = parts.pop()
        del parts[:: self.k + 1]  # the empty text between consecutive matches
        draws = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(-1, self.k) >> shifts
        return _pool(draws.astype(np.intp), self.n)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._rng is not None:
            state["_rng"] = self._rng.getstate()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.get("_rng")
        if saved is not None:
            rng = random.Random()
            rng.setstate(tuple(saved))
            state["_rng"] = rng
        self.__dict__.update(state)


def _vectorised(n: int, k: int) -> bool:
    """Whether ``Random.sample(range(n), k)`` takes the pool branch with byte-wide draws."""
    import math

    setsize = 21
    if k > 5:
        setsize += 4 ** math.ceil(math.log(k * 3, 4))
    return n <= setsize and n <= 256


@functools.lru_cache(maxsize=32)
def _automaton(n: int, k: int) -> tuple[re.Pattern[bytes], npt.NDArray[np.uint8], float]:
    """The rejection automaton of ``k`` draws as a regex; one match per sample row."""
    parts = []
    shifts = []
    per_row = 0.0
    for i in range(k):
        m = n - i
        bits = m.bit_length()
        limit = m << (8 - bits)  # top byte < limit  <=>  top ``bits`` bits < m
        shifts.append(8 - bits)
        per_row += 256 / limit
        if limit >= 256:
            parts.append(rb"([\x00-\xff])")
        else:
            accept = rb"\x00-" + re.escape(bytes([limit - 1]))
            reject = re.escape(bytes([limit])) + rb"-\xff"
            parts.append(b"[" + reject + b"]*+([" + accept + b"])")
    return re.compile(b"".join(parts), re.DOTALL), np.array(shifts, dtype=np.uint8), per_row


def _pool(draws: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp]:
    """Replay the pool shuffle of ``Random.sample`` for every row of draws at once."""
    rows, k = draws.shape
    pool = np.tile(np.arange(n, dtype=np.intp), rows)
    base = np.arange(rows, dtype=np.intp) * n
    out = np.empty((k, rows), dtype=np.intp)
    for i in range(k):
        idx = base + draws[:, i]
        out[i] = pool[idx]
        pool[idx] = pool[base + (n - i - 1)]
    return out.T.copy()
