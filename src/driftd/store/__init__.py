"""The durable store: records, predictions, delayed labels, events, small state and snapshots.

One interface, whichever backend holds the data: :class:`Store` is SQLite in WAL mode, the
embedded default. A write returns only after it has committed.
"""

from __future__ import annotations

from driftd.store.records import Event, IngestResult, Joined, LabelResult, Snapshot
from driftd.store.sqlite import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "Event", "IngestResult", "Joined", "LabelResult", "Snapshot", "Store"]
