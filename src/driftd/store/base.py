"""What every store backend promises: the interface the engine, the lifecycle and the retrainer
use, whichever database holds the data.

The contract, held by one test suite over every backend (``tests/test_store.py``):

- a write returns only after its transaction has committed (acknowledged = committed);
- a record whose id is already stored is a duplicate: skipped, reported, and it changes nothing;
- a label joins its prediction whether it arrives before or after its record, exactly once, and
  every join gets the next number in the order outcomes joined;
- records get increasing indices, consecutive within a batch;
- retention deletes the oldest records and the oldest labels still waiting for a record;
- a store written by a newer driftd is refused (:class:`~driftd.errors.StoreVersionError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from driftd.ingest.batch import Batch
from driftd.ingest.schema import Label, LabelType
from driftd.store.records import Event, IngestResult, Joined, LabelResult, Snapshot

__all__ = ["Blob", "RecordStore"]


class Blob(Protocol):
    """A named value of bytes, replaced whole: a reader sees the old or the new value."""

    def read(self) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...


class RecordStore(Protocol):
    """Records, predictions, delayed labels, events, small state and training snapshots."""

    def open(self) -> RecordStore: ...

    def close(self) -> None: ...

    @property
    def quick_commit(self) -> bool:
        """A small write commits without waiting on a disk flush or the network (so that the
        event loop may make one itself instead of waiting for the worker)."""
        ...

    # -- writes ----------------------------------------------------------------------------
    def add_records(self, batch: Batch, *, source: str, received: float) -> IngestResult:
        """Store a batch in one transaction; re-sent ids are duplicates; waiting labels join."""
        ...

    def add_labels(self, labels: Sequence[tuple[str, Label, float]]) -> LabelResult:
        """Attach labels ``(id, label, time)`` in one transaction, or keep them for their record."""
        ...

    def add_event(
        self, kind: str, data: Mapping[str, Any], *, ts: float, record_idx: int | None = None
    ) -> int: ...

    def add_events(
        self,
        events: Sequence[tuple[str, Mapping[str, Any], float, int | None]],
        *,
        state: tuple[str, Any] | None = None,
    ) -> list[int]:
        """Append events, and set one ``state`` key with them, in one transaction."""
        ...

    def put_state(self, key: str, value: Any) -> None: ...

    def get_state(self, key: str, default: Any = None) -> Any: ...

    def trim(
        self, *, max_rows: int | None, max_age: float | None, now: float, chunk: int = 5000
    ) -> int:
        """Delete what retention lets go, a chunk per transaction; the number of rows deleted."""
        ...

    # -- reads -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]: ...

    def first_label_type(self) -> LabelType | None: ...

    def labelled_count(self, *, since_idx: int = 0) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(
        self, *, limit: int, since_idx: int = 0, since_ts: float | None = None
    ) -> Snapshot: ...

    def labelled_at(self, indices: Sequence[int]) -> Snapshot: ...

    def joined_after(self, seq: int, *, limit: int = 10_000) -> list[Joined]: ...

    @property
    def last_join(self) -> int: ...

    def records_after(
        self, idx: int, *, limit: int = 10_000
    ) -> list[tuple[int, dict[str, float | str], Label | None]]: ...

    def events(
        self, *, kind: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[Event]: ...
