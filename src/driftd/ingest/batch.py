"""A batch of records on its way into the store: its columns, as one request body became them.

The numeric features may come already packed (native float64 rows in the schema's order, see
:func:`packer`), the layout the store writes, so that they are not taken out of the feature
dicts again. How a batch is written is the store's business (:mod:`driftd.store.batch_insert`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from driftd.ingest.schema import Label

__all__ = ["Batch", "packer"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Records to store, column by column, as one request body became them.

    ``ts`` is one time for every record or one per record. ``ids`` has one entry per record,
    ``None`` where the store is to make one up (``None`` alone: for all of them);
    ``predictions`` and ``labels`` are ``None`` when no record has one, ``probas`` (each a
    mapping of class, as a string, to its probability) likewise. ``numeric``, when
    given, is the numeric features already packed as the store writes them (native float64
    rows in the schema's order), so that they are not taken out of ``features`` again.
    """

    features: Sequence[Mapping[str, float | str]]
    ts: float | Sequence[float]
    ids: Sequence[str | None] | None = None
    predictions: Sequence[Label | None] | None = None
    labels: Sequence[Label | None] | None = None
    model_version: int | None = None
    numeric: bytes | None = None
    probas: Sequence[Mapping[str, float] | None] | None = None

    def __len__(self) -> int:
        return len(self.features)


@lru_cache(maxsize=64)
def packer(count: int) -> struct.Struct:
    """Packs ``count`` floats as native float64, the layout of the stored feature blocks."""
    return struct.Struct(f"={count}d")
