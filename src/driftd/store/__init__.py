"""The durable store: records, predictions, delayed labels, events, small state and snapshots.

One interface (:class:`RecordStore`), whichever backend holds the data: :class:`SQLiteStore`
(WAL mode) is the embedded default; :class:`PostgresStore` lets several daemons of one model
share one database. A write returns only after it has committed.
"""

from __future__ import annotations

from driftd.store.base import Blob, RecordStore
from driftd.store.postgres import PostgresStore
from driftd.store.records import Event, IngestResult, Joined, LabelResult, Snapshot
from driftd.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "Blob",
    "Event",
    "IngestResult",
    "Joined",
    "LabelResult",
    "PostgresStore",
    "RecordStore",
    "SQLiteStore",
    "Snapshot",
]
