"""Records of an all-numeric schema decoded straight into columns: the ingest fast path.

A ``POST /v1/records`` body of 1,000 records of 20 numbers is 570 kB of JSON. msgspec decodes
it into structs typed from the schema (the features an exact set of finite floats, the id, label
and prediction as the API allows them) in about half the time pydantic takes to build the same
records as dicts, and the features then pack into one float64 block without a dict lookup per
value. The block is what the store writes and the monitor reads.

This path only ever says yes or "not me": any body it does not take whole (a bad value, an
unknown or missing key, a key given twice, a batch over the cap) returns ``None``, and the
schema's pydantic validators then refuse it with every error listed, as they define the API.
A property test holds the two to the same records for every body this path accepts.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, overload

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import UNSET, Meta, UnsetType
from msgspec.structs import astuple

from driftd.ingest.batch import Batch, packer
from driftd.ingest.schema import Label, Schema
from driftd.ingest.validation import CONTROL, MAX_CLASSES, may_repeat_keys

__all__ = ["ColumnDecoder", "Columns", "Rows"]

_UNMATCHABLE = re.compile(r'["\\\x00-\x1f]')


class Rows(Sequence[Mapping[str, float]]):
    """The records' features as mappings, built from the block only when one is read (by the
    rare path that needs a record whole: a batch with re-sent ids)."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: npt.NDArray[np.float64], names: Sequence[str]) -> None:
        self._values, self._names = values, names

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, i: int) -> Mapping[str, float]: ...
    @overload
    def __getitem__(self, i: slice) -> Rows: ...
    def __getitem__(self, i: int | slice) -> Mapping[str, float] | Rows:
        if isinstance(i, slice):
            return Rows(self._values[i], self._names)
        return dict(zip(self._names, self._values[i].tolist(), strict=True))

    def __iter__(self) -> Iterator[Mapping[str, float]]:
        names = self._names
        return (dict(zip(names, row, strict=True)) for row in self._values.tolist())


@dataclass(frozen=True, slots=True)
class Columns:
    """A decoded batch, column by column. ``block`` holds the features as native float64 rows
    in the schema's order; a column no record gave is ``None``, and ``None`` in a column is a
    record that did not give that field (or gave it as ``null``)."""

    block: bytes
    rows: Rows
    ids: list[str | None] | None
    timestamps: list[float | None] | None
    predictions: list[Label | None] | None
    labels: list[Label | None] | None
    probas: list[dict[str, float] | None] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, now: float) -> Batch:
        """The store's batch; a record without a time gets ``now``."""
        return Batch(
            self.rows,
            [now if t is None else t for t in self.timestamps] if self.timestamps else now,
            ids=self.ids,
            predictions=self.predictions,
            labels=self.labels,
            numeric=self.block,
            probas=self.probas,
        )


class ColumnDecoder:
    """Decodes a JSON array of records for ``schema``, which must have only numeric features.
    Thread-safe: msgspec decoders keep no state between calls."""

    def __init__(self, schema: Schema, *, max_items: int | None = None) -> None:
        if not schema.features or schema.categorical:
            raise ValueError("the column decoder takes schemas of numeric features only")
        self.names = schema.names
        self.max_items = max_items
        attrs = [f"f{i}" for i in range(len(self.names))]
        features = msgspec.defstruct(
            "Features",
            [(a, float) for a in attrs],
            rename=dict(zip(attrs, self.names, strict=True)),
            forbid_unknown_fields=True,
        )
        ident = Annotated[str, Meta(min_length=1, max_length=schema.max_id_length)]
        string = Annotated[str, Meta(min_length=1, max_length=schema.max_string_length)]
        label: Any = {None: int | string, "integer": int, "string": string}[schema.label_type]
        if schema.task == "regression":
            label = float
        fields: list[Any] = [
            ("features", features),
            ("id", ident | UnsetType, UNSET),
            ("timestamp", Annotated[float, Meta(ge=0)] | UnsetType, UNSET),
            ("prediction", label | None | UnsetType, UNSET),
            ("label", label | None | UnsetType, UNSET),
        ]
        if schema.task == "classification":
            klass = Annotated[str, Meta(max_length=schema.max_string_length)]
            probability = Annotated[float, Meta(ge=0, le=1)]
            probas = Annotated[dict[klass, probability], Meta(min_length=1, max_length=MAX_CLASSES)]
            fields.append(("proba", probas | None | UnsetType, UNSET))
        self._probas = schema.task == "classification"
        record = msgspec.defstruct("Record", fields, forbid_unknown_fields=True)
        self._decoder: msgspec.json.Decoder[list[Any]] = msgspec.json.Decoder(list[record])  # type: ignore[valid-type]

    @classmethod
    def for_schema(cls, schema: Schema, *, max_items: int | None = None) -> ColumnDecoder | None:
        """A decoder for ``schema``, or ``None`` if it has a categorical feature or a feature
        name msgspec cannot match (one with a quote, a backslash or a control character)."""
        if not schema.features or schema.categorical:
            return None
        if any(_UNMATCHABLE.search(name) for name in schema.names):
            return None
        return cls(schema, max_items=max_items)

    def decode(self, body: bytes | bytearray) -> Columns | None:
        """The batch in ``body`` as columns, or ``None`` if this path does not take it."""
        try:
            records = self._decoder.decode(body)
        except msgspec.DecodeError:
            return None
        n, k = len(records), len(self.names)
        if n == 0 or (self.max_items is not None and n > self.max_items):
            return None
        features = itertools.chain.from_iterable(astuple(r.features) for r in records)
        block = packer(n * k).pack(*features)
        values = np.frombuffer(block, dtype=np.float64).reshape(n, k)
        # Guards, as msgspec stands they never fire: it refuses numbers out of float range,
        # and NaN and Infinity are not JSON.
        if not np.isfinite(values).all():
            return None
        ids, timestamps, predictions, labels = (
            _column([r.id for r in records]),
            _column([r.timestamp for r in records]),
            _column([r.prediction for r in records]),
            _column([r.label for r in records]),
        )
        probas = _column([r.proba for r in records]) if self._probas else None
        if timestamps is not None and not all(map(math.isfinite, filter(None, timestamps))):
            return None
        if ids is not None and CONTROL.search("".join(filter(None, ids))):
            return None  # one search over the joined ids, in C
        keys = n * (1 + k) + sum(
            c.given for c in (ids, timestamps, predictions, labels, probas) if c is not None
        )
        if probas is not None:
            keys += sum(len(p) for p in probas if p)
        if may_repeat_keys(body, keys):  # msgspec keeps a repeated key's last value silently
            return None
        return Columns(
            block, Rows(values, self.names), ids, timestamps, predictions, labels, probas
        )


class _Column(list[Any]):
    """A column with ``None`` where a record left the field out, and how many gave it."""

    given: int = 0


def _column(values: list[Any]) -> _Column | None:
    missing = values.count(UNSET)
    if missing == len(values):
        return None
    out = _Column(values if not missing else [None if v is UNSET else v for v in values])
    out.given = len(values) - missing
    return out
