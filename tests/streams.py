"""Seeded synthetic streams for the monitor tests and benchmarks.

Each generator is a pure function of its arguments: the same seed gives the same records.
A change, when there is one, starts exactly at record ``change``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "categories",
    "error_bits",
    "feature_names",
    "gaussian_batches",
    "logistic",
    "mean_shift",
    "records",
    "redundant",
    "regression_outcomes",
    "variance_shift",
]


def feature_names(n: int) -> list[str]:
    return [f"x{i}" for i in range(n)]


def records(columns: dict[str, np.ndarray]) -> list[dict[str, float | str]]:
    """Rows (dicts of feature name -> value) from equal-length columns."""
    names = list(columns)
    values = [c.tolist() for c in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def mean_shift(n: int, change: int, seed: int, shift: float = 1.0) -> np.ndarray:
    """Standard normal values whose mean moves by ``shift`` at record ``change``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, n)
    x[change:] += shift
    return x


def variance_shift(n: int, change: int, seed: int, scale: float = 3.0) -> np.ndarray:
    """Standard normal values whose standard deviation becomes ``scale`` at record ``change``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, n)
    x[change:] *= scale
    return x


def categories(
    n: int,
    change: int,
    seed: int,
    before: dict[str, float] | None = None,
    after: dict[str, float] | None = None,
) -> list[str]:
    """Categories drawn with weights ``before`` until ``change`` and ``after`` from then on."""
    before = before or {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}
    after = after or {"a": 0.3, "b": 0.3, "c": 0.15, "d": 0.25}
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for weights, size in ((before, change), (after, n - change)):
        names = list(weights)
        p = np.array([weights[k] for k in names], dtype=float)
        out += [names[i] for i in rng.choice(len(names), size=size, p=p / p.sum())]
    return out


def error_bits(
    n: int, change: int, seed: int, before: float = 0.1, after: float = 0.3
) -> tuple[list[int], list[int]]:
    """Predictions and labels of a binary classifier whose error rate jumps at ``change``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    rate = np.where(np.arange(n) < change, before, after)
    wrong = rng.random(n) < rate
    predictions = np.where(wrong, 1 - labels, labels)
    return predictions.tolist(), labels.tolist()


def regression_outcomes(
    n: int, change: int, seed: int, noise_before: float = 1.0, noise_after: float = 2.0
) -> tuple[list[float], list[float]]:
    """Predictions and targets of a regressor whose absolute error grows at ``change``."""
    rng = np.random.default_rng(seed)
    target = rng.normal(10.0, 3.0, n)
    noise = np.where(np.arange(n) < change, noise_before, noise_after)
    return (target + rng.normal(0.0, 1.0, n) * noise).tolist(), target.tolist()


def gaussian_batches(
    n: int, n_features: int, seed: int, batch: int = 2000
) -> Iterator[tuple[int, list[dict[str, float | str]]]]:
    """A stationary stream of ``n`` records with independent standard normal features."""
    rng = np.random.default_rng(seed)
    names = feature_names(n_features)
    for start in range(0, n, batch):
        size = min(batch, n - start)
        block = rng.normal(0.0, 1.0, (size, n_features))
        yield start, [dict(zip(names, row, strict=True)) for row in block.tolist()]


def redundant(
    rng: np.random.Generator, n: int, classes: int = 2, copies: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..classes-1 and one informative value per row seen through ``copies`` noisy
    features: naive Bayes counts the same evidence ``copies`` times, and its probabilities
    crowd at 0 and 1 (overconfident, far from calibrated)."""
    y = rng.integers(0, classes, n)
    z = rng.normal(y.astype(float), 1.0)
    return np.column_stack([z + rng.normal(0, 0.3, n) for _ in range(copies)]), y


def logistic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two features and labels drawn from a logistic model of them: a logistic regression's
    probabilities are calibrated."""
    X = rng.normal(0, 1, (n, 2))
    p = 1 / (1 + np.exp(-(1.5 * X[:, 0] - X[:, 1])))
    return X, (rng.random(n) < p).astype(int)
