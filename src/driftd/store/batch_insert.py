"""How a batch of records is written into the store: its ids, and one statement or a row at a time.

A batch is written in one statement when it can be (made-up or new ids, finite predictions):
the numeric features as one packed float64 block, the columns that vary per record as one JSON
array of rows, both taken apart by SQLite in C. A re-sent id, or an id or prediction JSON cannot
carry, takes the general path, a row at a time; so does a batch of one record, for which bound
parameters are cheaper than the JSON. A property test holds the paths to the same rows, ids,
joins and duplicates.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from driftd.ingest.batch import Batch, packer
from driftd.ingest.schema import Schema

__all__ = ["BatchWriter", "Ids", "chunks"]

T = TypeVar("T")


class Ids(Sequence[str]):
    """The ids of a batch: the client's where it gave one, else ``<prefix>-<counter>`` (a
    random per-process prefix and a zero-padded hex counter, so that made-up ids sort in arrival
    order and the id index grows at its end). Built only when read."""

    __slots__ = ("_given", "_n", "prefix", "start")

    def __init__(self, given: Sequence[str | None] | None, prefix: str, start: int, n: int):
        self._given, self.prefix, self.start, self._n = given, prefix, start, n

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Ids({list(self)!r})"

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        i %= self._n
        given = self._given[i] if self._given is not None else None
        return given if given is not None else f"{self.prefix}-{self.start + i:010x}"

    def __iter__(self) -> Iterator[str]:
        if self._given is None:
            p = self.prefix
            return (f"{p}-{i:010x}" for i in range(self.start, self.start + self._n))
        return (self[i] for i in range(self._n))


class BatchWriter:
    """Writes batches of one schema's records into the ``records`` table (of
    :mod:`driftd.store.sqlite`), inside the caller's transaction."""

    def __init__(self, schema: Schema) -> None:
        self._numeric = schema.numeric
        self._categorical = schema.categorical
        self._numeric_of = _getter(schema.numeric)
        self._categorical_of = _getter(schema.categorical)

    def insert(
        self,
        db: sqlite3.Connection,
        batch: Batch,
        ids: Ids,
        source: str,
        received: float,
        *,
        block: bytes,
    ) -> int | list[bool]:
        """Insert the records whose id is new, so that they get consecutive indices. Returns
        the last one's index when all were (the common case: one statement), else whether each
        one was.

        The batch goes in as one statement: the numeric features as one packed float64 block,
        the columns that vary per record as one JSON array of rows, both taken apart by SQLite
        in C, so that a record costs no Python call and no parameter binding (several times
        faster than ``executemany``). Made-up ids are printed by SQLite too. A re-sent id fails
        the statement, which SQLite then backs out whole (``ON CONFLICT ABORT``) inside the
        open transaction, and the general path takes the batch.
        """
        n = len(batch)
        if n == 0:
            return []
        if n == 1:  # one row: bound parameters cost less than building and parsing JSON
            row = self._row(batch, 0, ids[0], received=received, source=source, block=block)
            try:
                one = db.execute(_INSERT, row).lastrowid
            except sqlite3.IntegrityError:  # a re-sent id
                return [False]
            assert one is not None
            return one
        columns: dict[str, Sequence[Any]] = {}
        if batch.ids is not None:
            columns["id"] = batch.ids
        if not isinstance(batch.ts, int | float):
            columns["ts"] = batch.ts
        if batch.predictions is not None:
            columns["prediction"] = batch.predictions
        if batch.labels is not None:
            columns["label"] = batch.labels
        if batch.probas is not None:
            columns["proba"] = batch.probas
        if self._categorical:
            columns["cat"] = [_as_list(self._categorical_of(f)) for f in batch.features]
        rows = json.dumps(list(zip(*columns.values(), strict=True))) if columns else _keys(n)
        # ``->>`` would cut an id at a NUL character, and a model may predict NaN, which JSON
        # cannot carry: such batches take the general path.
        if ("id" not in columns or "\\u0000" not in rows) and _finite(batch.predictions):
            args = {
                "rows": rows,
                "prefix": ids.prefix,
                "start": ids.start,
                "ts": batch.ts if "ts" not in columns else None,
                "num": block,
                "width": 8 * len(self._numeric),
                "source": source,
                "received": received,
                "version": batch.model_version,
            }
            try:
                last = db.execute(_batch_insert(tuple(columns)), args).lastrowid
            except sqlite3.IntegrityError:  # a re-sent id
                pass
            else:
                assert last is not None  # it inserted n > 1 rows
                return last
        return self._insert_rows(db, batch, ids, source, received, block=block)

    def categorical_json(self, features: Mapping[str, Any]) -> str:
        """A record's categorical features as the JSON array the store keeps."""
        return json.dumps(_as_list(self._categorical_of(features)))

    def pack(self, features: Sequence[Mapping[str, Any]]) -> bytes:
        """The numeric features of a batch as one block of native float64 rows."""
        k = len(self._numeric)
        if k == 0:
            return b""
        values = map(self._numeric_of, features)
        flat = values if k == 1 else itertools.chain.from_iterable(values)
        return packer(k * len(features)).pack(*flat)

    def _insert_rows(
        self,
        db: sqlite3.Connection,
        batch: Batch,
        ids: Ids,
        source: str,
        received: float,
        *,
        block: bytes,
    ) -> list[bool]:
        """The general path, a row at a time: re-sent ids (skipped) and ids the fast path
        cannot carry."""
        rids = list(ids)
        stored: set[str] = set()
        for chunk in chunks(rids, 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT rid FROM records WHERE rid IN ({marks})"  # noqa: S608 - placeholders only
            stored.update(r[0] for r in db.execute(sql, chunk))
        keep = []
        for rid in rids:
            keep.append(rid not in stored)
            stored.add(rid)
        params = [
            self._row(batch, i, rid, received=received, source=source, block=block)
            for i, (rid, k) in enumerate(zip(rids, keep, strict=True))
            if k
        ]
        db.executemany(_INSERT, params)
        return keep

    def _row(
        self, batch: Batch, i: int, rid: str, *, received: float, source: str, block: bytes
    ) -> tuple[Any, ...]:
        """Record ``i`` of ``batch`` as the parameters of :data:`_INSERT`."""
        width = 8 * len(self._numeric)
        pred = batch.predictions[i] if batch.predictions is not None else None
        label = batch.labels[i] if batch.labels is not None else None
        proba = batch.probas[i] if batch.probas is not None else None
        return (
            rid,
            batch.ts if isinstance(batch.ts, int | float) else batch.ts[i],
            received,
            source,
            block[i * width : (i + 1) * width],
            self.categorical_json(batch.features[i]) if self._categorical else None,
            None if pred is None else json.dumps(pred),
            batch.model_version,
            None if label is None else json.dumps(label),
            None if label is None else received,
            None if proba is None else json.dumps(proba),
        )


_INSERT = (
    "INSERT INTO records (rid, ts, received, source, num, cat, prediction, model_version,"
    " label, label_ts, proba) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size`` (SQLite caps the parameters of a statement)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], Any]:
    """``itemgetter`` over the columns: a tuple for several, the value itself for one."""
    return operator.itemgetter(*names) if names else lambda _: ()


def _as_list(values: Any) -> list[Any]:
    return list(values) if isinstance(values, tuple) else [values]


def _finite(values: Sequence[Any] | None) -> bool:
    """No NaN or infinity among ``values`` (labels are validated; predictions come from a
    model)."""
    return values is None or all(math.isfinite(v) for v in values if type(v) is float)


@lru_cache(maxsize=32)
def _batch_insert(columns: tuple[str, ...]) -> str:
    """The one-statement insert for a batch whose rows carry ``columns`` (see ``insert``)."""

    def text(name: str) -> str:  # the JSON text of a value, exact (labels, predictions)
        return f"nullif(r.value -> {columns.index(name)}, 'null')" if name in columns else "NULL"

    made_up = "printf('%s-%010x', :prefix, :start + r.key)"
    rid = f"coalesce(r.value ->> {columns.index('id')}, {made_up})" if "id" in columns else made_up
    ts = f"r.value ->> {columns.index('ts')}" if "ts" in columns else ":ts"
    cat = f"r.value -> {columns.index('cat')}" if "cat" in columns else "NULL"
    label = text("label")
    return f"""
        INSERT INTO records (rid, ts, received, source, num, cat, prediction, model_version,
                             label, label_ts, proba)
        SELECT {rid}, {ts}, :received, :source,
               coalesce(substr(:num, r.key * :width + 1, :width), X''), {cat},
               {text("prediction")}, :version,
               {label}, CASE WHEN {label} IS NULL THEN NULL ELSE :received END,
               {text("proba")}
        FROM json_each(:rows) AS r
    """  # noqa: S608 - the columns are fixed names, the values all parameters


@lru_cache(maxsize=64)
def _keys(n: int) -> str:
    """``[0,1,...,n-1]``: the rows of a batch insert, for ``json_each``."""
    return json.dumps(list(range(n)))
