"""The model's input matrix, built from validated features in the schema's column order.

Numeric columns first, then categorical ones: the layout every pipeline driftd builds expects,
in serving, in training and in the warm-up rows kept in a manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.ingest.schema import Schema

__all__ = ["matrix", "rows_to_matrix"]


def matrix(
    schema: Schema, numeric: npt.NDArray[np.float64], categorical: Sequence[Sequence[Any]]
) -> npt.NDArray[Any]:
    """The model's input: numeric columns first, then categorical ones, in schema order."""
    if not schema.categorical:
        return numeric
    X = np.empty((numeric.shape[0], numeric.shape[1] + len(schema.categorical)), dtype=object)
    X[:, : numeric.shape[1]] = numeric
    X[:, numeric.shape[1] :] = np.asarray(categorical, dtype=object).reshape(
        numeric.shape[0], len(schema.categorical)
    )
    return X


def rows_to_matrix(schema: Schema, rows: Sequence[dict[str, float | str]]) -> npt.NDArray[Any]:
    """Feature dicts (as validated by the schema) to the model's input matrix."""
    num = np.array([[r[c] for c in schema.numeric] for r in rows], dtype=np.float64).reshape(
        len(rows), len(schema.numeric)
    )
    cat = [[r[c] for c in schema.categorical] for r in rows] if schema.categorical else []
    return matrix(schema, num, cat)
