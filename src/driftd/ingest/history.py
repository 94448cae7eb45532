"""Reading history files (CSV, JSON lines) into validated rows, for bootstrap and replay.

Columns are named by the schema: one per feature, the target, and optionally the id and
timestamp fields. A bad file is refused with a message naming the line and the column.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftd.ingest.schema import Label, Schema, Value

__all__ = ["HistoryError", "HistoryRow", "coerce_row", "parse_number", "read_history"]


class HistoryError(ValueError):
    """A history file cannot be used; the message names the line and column."""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    line: int
    features: dict[str, float | str]
    label: Label | None
    id: str | None
    timestamp: float | None
    extra: dict[str, Any]


def read_history(
    path: Path, schema: Schema, *, require_sorted: bool = True
) -> Iterator[HistoryRow]:
    """Yield the rows of a ``.csv``, ``.jsonl``/``.ndjson`` or ``.parquet`` (with pyarrow) file,
    validated against ``schema``. Parquet rows are numbered from 1 in place of lines."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path, schema)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = _jsonl_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path, schema)
    else:
        raise HistoryError(
            f"{path}: unsupported file type {suffix!r}, expected .csv, .jsonl or .parquet"
        )
    known = {*schema.names, schema.target, schema.id_field, schema.timestamp_field}
    last_ts: float | None = None
    for line, raw in rows:
        try:
            feats, label, ident, ts = coerce_row(schema, raw, line=line)
        except ValueError as exc:
            raise HistoryError(f"{path}: {exc}") from None
        if require_sorted and ts is not None and last_ts is not None and ts < last_ts:
            raise HistoryError(
                f"{path}: line {line}, column {schema.timestamp_field!r}: timestamps are not sorted"
                f" ({ts} comes after {last_ts})"
            )
        last_ts = ts if ts is not None else last_ts
        extra = {k: v for k, v in raw.items() if k not in known}
        yield HistoryRow(line, feats, label, ident, ts, extra)


def _parquet_rows(path: Path, schema: Schema) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise HistoryError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    missing = [c for c in (*schema.names, schema.target) if c not in table.column_names]
    if missing:
        raise HistoryError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")
    yield from enumerate(table.to_pylist(), start=1)


def _csv_rows(path: Path, schema: Schema) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in (*schema.names, schema.target) if c not in header]
        if missing:
            raise HistoryError(f"{path}: line 1: missing column(s) {', '.join(map(repr, missing))}")
        yield from enumerate(reader, start=2)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for i, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise HistoryError(f"{path}: line {i}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise HistoryError(f"{path}: line {i}: expected a JSON object")
            yield i, row


def coerce_row(
    schema: Schema, row: Mapping[str, Any], *, line: int
) -> tuple[dict[str, Value], Any, str | None, float | None]:
    """Turn one flat history row (CSV strings or JSONL values) into features, label, id, time.

    Raises ``ValueError`` naming the line and column on the first problem.
    """
    feats: dict[str, Value] = {}
    for f in schema.features:
        if f.name not in row or row[f.name] in ("", None):
            raise ValueError(f"line {line}, column {f.name!r}: missing value")
        raw = row[f.name]
        if f.kind == "numeric":
            feats[f.name] = parse_number(raw, line=line, column=f.name)
        else:
            text = str(raw)
            if len(text) > schema.max_string_length:
                raise ValueError(f"line {line}, column {f.name!r}: string longer than the maximum")
            feats[f.name] = text
    label: Any = row.get(schema.target)
    if label in ("", None):
        label = None
    elif schema.task == "regression":
        label = parse_number(label, line=line, column=schema.target)
    elif isinstance(label, bool | float):
        msg = f"line {line}, column {schema.target!r}: expected a class label"
        raise ValueError(msg)
    elif schema.label_type == "string":
        label = str(label)  # a CSV's "1" and a JSONL's 1 are the class "1"
    elif isinstance(label, str) and label.lstrip("-").isdigit():
        label = int(label)
    elif schema.label_type == "integer" and not isinstance(label, int):
        msg = f"line {line}, column {schema.target!r}: expected an integer class label"
        raise ValueError(msg)
    ident = row.get(schema.id_field) if schema.id_field else None
    ts_raw = row.get(schema.timestamp_field) if schema.timestamp_field else None
    ts = (
        None
        if ts_raw in ("", None)
        else parse_number(ts_raw, line=line, column=str(schema.timestamp_field))
    )
    return feats, label, None if ident in ("", None) else str(ident), ts


def parse_number(raw: Any, *, line: int, column: str) -> float:
    """A finite number from a history file's cell (CSV text or a JSON value), or ValueError
    naming the line and column."""
    if isinstance(raw, bool):
        raise ValueError(f"line {line}, column {column!r}: expected a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"line {line}, column {column!r}: expected a number, got {raw!r}"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"line {line}, column {column!r}: expected a finite number, got {raw!r}")
    return value
