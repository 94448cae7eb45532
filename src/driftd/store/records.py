"""What the store hands back: joined labels, the result of a write, events, training snapshots.

Plain values, the same whichever backend stored them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.ingest.schema import Label

__all__ = ["Event", "IngestResult", "Joined", "LabelResult", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Joined:
    """A label that met its prediction: the record's index, both values, the delay, the model
    that predicted, and the join's number in the order outcomes joined (``seq``)."""

    idx: int
    prediction: Label
    label: Label
    delay: float
    model_version: int | None = None
    seq: int = 0


@dataclass(slots=True)
class IngestResult:
    """What a committed batch of records became. ``inserted`` says, per record, whether it was
    stored (``None``: all were); ``ids`` are the batch's ids, made-up ones included."""

    first_idx: int
    accepted: int
    ids: Sequence[str] = ()
    inserted: list[bool] | None = None
    numeric: npt.NDArray[np.float64] | None = None  # the stored records' numeric features
    duplicates: list[str] = field(default_factory=list)
    inserted_idx: list[int] = field(default_factory=list)
    joined: list[Joined] = field(default_factory=list)


@dataclass(slots=True)
class LabelResult:
    """What a committed batch of labels became: joined now, kept until their record, duplicates."""

    joined: list[Joined] = field(default_factory=list)
    pending: int = 0
    duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    ts: float
    kind: str
    record_idx: int | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.data,
            "id": self.id,
            "time": self.ts,
            "kind": self.kind,
            "record_index": self.record_idx,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A frozen, time-ordered set of labelled rows, with a hash of exactly what it holds."""

    idx: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    numeric: npt.NDArray[np.float64]
    categorical: list[list[str]]
    labels: list[Label]
    sha256: str

    @classmethod
    def of(
        cls,
        idx: npt.NDArray[np.int64],
        ts: npt.NDArray[np.float64],
        numeric: npt.NDArray[np.float64],
        categorical: list[list[str]],
        labels: list[Label],
    ) -> Snapshot:
        """The snapshot of these rows, hashed."""
        return cls(idx, ts, numeric, categorical, labels, _hash(idx, numeric, categorical, labels))

    def __len__(self) -> int:
        return len(self.labels)

    def window(self) -> dict[str, Any]:
        if not len(self):
            return {"rows": 0}
        return {
            "rows": len(self),
            "first_index": int(self.idx[0]),
            "last_index": int(self.idx[-1]),
            "first_time": float(self.ts[0]),
            "last_time": float(self.ts[-1]),
            "sha256": self.sha256,
        }

    def split(self, holdout: int) -> tuple[Snapshot, Snapshot]:
        """The oldest rows for training and the most recent ``holdout`` rows, never overlapping."""
        cut = max(0, len(self) - holdout)
        return self._slice(0, cut), self._slice(cut, len(self))

    def _slice(self, lo: int, hi: int) -> Snapshot:
        return Snapshot.of(
            self.idx[lo:hi],
            self.ts[lo:hi],
            self.numeric[lo:hi],
            self.categorical[lo:hi],
            self.labels[lo:hi],
        )


def _hash(
    idx: npt.NDArray[np.int64],
    numeric: npt.NDArray[np.float64],
    categorical: list[list[str]],
    labels: list[Label],
) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(idx).tobytes())
    h.update(np.ascontiguousarray(numeric).tobytes())
    h.update(json.dumps(categorical).encode())
    h.update(json.dumps(labels).encode())
    return h.hexdigest()
