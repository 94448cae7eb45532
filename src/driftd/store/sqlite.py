"""The durable store: records, predictions, delayed labels, events and small state, in SQLite (WAL).

A write returns only after its transaction has committed, so whatever the API acknowledges
survives a crash of the process. Numeric features are kept as one packed float64 row per record
so that training snapshots load as a single array; categorical features as a JSON array.

All writes go through one connection that the caller uses from one thread at a time (the
daemon's ingest worker); reads open their own short-lived connections, which WAL lets run
beside a writer.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from driftd.errors import StoreVersionError
from driftd.ingest.batch import Batch
from driftd.ingest.schema import Label, LabelType, Schema, label_type_of
from driftd.store.batch_insert import BatchWriter, Ids, chunks
from driftd.store.records import Event, IngestResult, Joined, LabelResult, Snapshot

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_BACKSTOP_PAGES = 20_000  # 80 MB of WAL at SQLite's default 4 KiB page

# Each step takes a store of the version before to its version, in the open's transaction.
_MIGRATIONS = {
    # The order labels met their predictions, so that a restart can replay into the error
    # detector the outcomes joined after the monitor's last checkpoint (label_ts follows the
    # producers' clocks, not the order of arrival).
    2: (
        "ALTER TABLE records ADD COLUMN join_seq INTEGER",
        "CREATE INDEX IF NOT EXISTS records_joined ON records (join_seq)"
        " WHERE join_seq IS NOT NULL",
    ),
    # The class probabilities behind each prediction, for estimating the live score before
    # the labels arrive: a JSON object of class -> probability.
    3: ("ALTER TABLE records ADD COLUMN proba TEXT",),
}

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER PRIMARY KEY AUTOINCREMENT,
    rid TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    received REAL NOT NULL,
    source TEXT NOT NULL,
    num BLOB NOT NULL,
    cat TEXT,
    prediction TEXT,
    model_version INTEGER,
    label TEXT,
    label_ts REAL,
    join_seq INTEGER,
    proba TEXT
);
CREATE INDEX IF NOT EXISTS records_labelled ON records (idx) WHERE label IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_joined ON records (join_seq) WHERE join_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending_labels (
    rid TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    record_idx INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteStore:
    """The SQLite store of one daemon. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        path: Path,
        schema: Schema,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        checkpoint_every: float | None = None,
    ) -> None:
        self.path = path
        self.schema = schema
        self.synchronous = synchronous
        self.checkpoint_every = checkpoint_every
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._numeric = schema.numeric
        self._categorical = schema.categorical
        self._writer = BatchWriter(schema)
        self._id_prefix = secrets.token_hex(4)
        self._id_counter = itertools.count()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pending = 0
        self._join_seq = 0  # the last join's sequence number

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> SQLiteStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA foreign_keys=ON")
        version = self._check_version(db)
        if version is None:
            with _tx(db):
                for stmt in _statements(_DDL):
                    db.execute(stmt)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('features', ?)",
                    (self.schema.fingerprint(),),
                )
        elif version < SCHEMA_VERSION:
            self._migrate(db, version)
        self._db = db
        # The highest join number given: kept in meta by trim, which may delete the rows
        # holding it (late labels give old records the newest numbers).
        kept = db.execute("SELECT value FROM meta WHERE key='join_seq'").fetchone()
        stored = db.execute("SELECT max(join_seq) FROM records").fetchone()[0]
        self._join_seq = max(int(kept[0]) if kept else 0, stored or 0)
        self._pending = db.execute("SELECT count(*) FROM pending_labels").fetchone()[0]
        if self.checkpoint_every is not None:
            # Copying the WAL back into the database (every 1,000 pages by default) would
            # otherwise fall on whichever write crosses the mark: 10+ ms every few batches. A
            # thread of its own does it in the background; the writer keeps a far mark as a
            # backstop should that thread ever fall behind.
            db.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_PAGES}")
            self._closing.clear()
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="driftd-wal", daemon=True
            )
            self._checkpointer.start()
        return self

    def _checkpoints(self) -> None:
        assert self.checkpoint_every is not None
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with closing(conn):
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._closing.wait(self.checkpoint_every):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy or I/O: the next round or the writer retries
                    log.debug("WAL checkpoint skipped: %s", exc)

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        with _tx(db):
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[step]:
                    db.execute(stmt)
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        log.info("store upgraded from schema %d to %d", version, SCHEMA_VERSION)

    def _check_version(self, db: sqlite3.Connection) -> int | None:
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return None
        version = int(row[0])
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreVersionError(
                f"{self.path} was written by a newer driftd (store schema {version}; this driftd "
                f"reads up to {SCHEMA_VERSION}); upgrade driftd or point state.dir elsewhere"
            )
        return version

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    self._db.close()
                    self._db = None

    @property
    def quick_commit(self) -> bool:
        """In WAL mode with ``synchronous=NORMAL`` a commit appends to the WAL and returns; the
        flush waits for the next checkpoint. With ``FULL`` every commit waits for the disk."""
        return self.synchronous == "normal"

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own, for use from any thread."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        with closing(conn):
            yield conn

    # -- writes ----------------------------------------------------------------------------
    def add_records(self, batch: Batch, *, source: str, received: float) -> IngestResult:
        """Insert records in one transaction. A record whose id is already stored is a duplicate
        (an idempotent re-send) and is skipped; a label waiting for an id is joined on arrival."""
        n = len(batch)
        start = next(self._id_counter)
        self._id_counter = itertools.count(start + n)
        ids = Ids(batch.ids, self._id_prefix, start, n)
        block = batch.numeric if batch.numeric is not None else self._writer.pack(batch.features)
        with self._lock, _tx(self.db) as db:
            written = self._writer.insert(db, batch, ids, source, received, block=block)
            inserted = None if isinstance(written, int) else written
            accepted = n if inserted is None else sum(inserted)
            last = written if isinstance(written, int) else self._next_idx(db) - 1
            first = last + 1 - accepted
            result = IngestResult(first_idx=first, accepted=accepted, ids=ids, inserted=inserted)
            numeric = np.frombuffer(block, dtype=np.float64).reshape(n, len(self._numeric))
            result.numeric = numeric if inserted is None else numeric[np.asarray(inserted, bool)]
            if inserted is None:
                result.inserted_idx = list(range(first, first + n))
                positions: Sequence[int | None] = result.inserted_idx
            else:
                at = itertools.count(first)
                positions = [next(at) if keep else None for keep in inserted]
                result.inserted_idx = [p for p in positions if p is not None]
                result.duplicates = [
                    rid for rid, p in zip(ids, positions, strict=True) if p is None
                ]
            if batch.predictions is not None and batch.labels is not None and accepted:
                # One statement numbers the joins: by index, gaps where a record has no
                # outcome (the numbers only need to keep the order).
                base = self._join_seq + 1 - first
                outcomes = zip(positions, batch.predictions, batch.labels, strict=True)
                result.joined = [
                    Joined(p, pred, label, 0.0, batch.model_version, base + p)
                    for p, pred, label in outcomes
                    if p is not None and label is not None and pred is not None
                ]
                if result.joined:
                    db.execute(
                        "UPDATE records SET join_seq = idx + ? WHERE idx BETWEEN ? AND ?"
                        " AND label IS NOT NULL AND prediction IS NOT NULL",
                        (base, first, first + accepted - 1),
                    )
                    self._join_seq = result.joined[-1].seq
            if self._pending:
                result.joined += self._join_pending(db, list(ids), received)
        return result

    @staticmethod
    def _next_idx(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        return (row[0] if row else 0) + 1

    def _join_pending(self, db: sqlite3.Connection, ids: list[str], now: float) -> list[Joined]:
        joined: list[Joined] = []
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            waiting = db.execute(
                f"DELETE FROM pending_labels WHERE rid IN ({marks}) RETURNING rid, label, ts",  # noqa: S608
                chunk,
            ).fetchall()
            for rid, label, ts in waiting:
                self._pending -= 1
                joined.extend(self._apply_label(db, rid, label, ts))
        return joined

    def _apply_label(self, db: sqlite3.Connection, rid: str, label: str, ts: float) -> list[Joined]:
        row = self._label_row(db, rid, label, ts)
        if row is None or row[2] is None:
            return []
        delay = max(0.0, ts - row[1])
        return [Joined(row[0], json.loads(row[2]), json.loads(label), delay, row[3], row[4])]

    def _label_row(
        self, db: sqlite3.Connection, rid: str, label: str, ts: float
    ) -> tuple[Any, ...] | None:
        """Set the label of record ``rid`` if it has none; the next join number goes with it
        when it meets a prediction. ``(idx, ts, prediction, model_version, join_seq)``."""
        row: tuple[Any, ...] | None = db.execute(
            "UPDATE records SET label=?, label_ts=?,"
            " join_seq = CASE WHEN prediction IS NULL THEN NULL ELSE ? END"
            " WHERE rid=? AND label IS NULL"
            " RETURNING idx, ts, prediction, model_version, join_seq",
            (label, ts, self._join_seq + 1, rid),
        ).fetchone()
        if row is not None and row[4] is not None:
            self._join_seq = row[4]
        return row

    def add_labels(self, labels: Sequence[tuple[str, Label, float]]) -> LabelResult:
        """Attach delayed labels ``(id, label, time)`` to their records in one transaction.

        A label for an id not stored yet is kept until its record arrives; a second label for an
        id that already has one is a duplicate and changes nothing.
        """
        result = LabelResult()
        with self._lock, _tx(self.db) as db:
            for rid, label, ts in labels:
                text = json.dumps(label)
                row = self._label_row(db, rid, text, ts)
                if row is not None:
                    if row[2] is not None:
                        delay = max(0.0, ts - row[1])
                        result.joined.append(
                            Joined(row[0], json.loads(row[2]), label, delay, row[3], row[4])
                        )
                    continue
                exists = db.execute("SELECT 1 FROM records WHERE rid=?", (rid,)).fetchone()
                if exists:
                    result.duplicates.append(rid)
                    continue
                cur = db.execute(
                    "INSERT INTO pending_labels VALUES (?,?,?) ON CONFLICT(rid) DO NOTHING",
                    (rid, text, ts),
                )
                if cur.rowcount:
                    self._pending += 1
                    result.pending += 1
                else:
                    result.duplicates.append(rid)
        return result

    def add_event(
        self, kind: str, data: Mapping[str, Any], *, ts: float, record_idx: int | None = None
    ) -> int:
        return self.add_events([(kind, data, ts, record_idx)])[0]

    def add_events(
        self,
        events: Sequence[tuple[str, Mapping[str, Any], float, int | None]],
        *,
        state: tuple[str, Any] | None = None,
    ) -> list[int]:
        """Append events, and set one ``state`` key with them, in one transaction."""
        ids = []
        with self._lock, _tx(self.db) as db:
            if state is not None:
                db.execute(
                    "INSERT OR REPLACE INTO state VALUES (?, ?)", (state[0], json.dumps(state[1]))
                )
            for kind, data, ts, idx in events:
                cur = db.execute(
                    "INSERT INTO events (ts, kind, record_idx, data) VALUES (?,?,?,?)",
                    (ts, kind, idx, json.dumps(data, allow_nan=False, default=_jsonable)),
                )
                ids.append(int(cur.lastrowid or 0))
        return ids

    def put_state(self, key: str, value: Any) -> None:
        with self._lock, _tx(self.db) as db:
            db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def get_state(self, key: str, default: Any = None) -> Any:
        row = (
            self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
            if self._db
            else None
        )
        if row is None:
            with self.reader() as conn:
                row = conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def trim(
        self, *, max_rows: int | None, max_age: float | None, now: float, chunk: int = 5000
    ) -> int:
        """Delete the oldest records beyond retention, ``chunk`` rows per transaction so that
        ingest never waits long. Returns the number of rows deleted."""
        deleted = 0
        while True:
            with self._lock:
                db = self.db
                cutoff = None
                if max_rows is not None:
                    row = db.execute(
                        "SELECT idx FROM records ORDER BY idx DESC LIMIT 1 OFFSET ?", (max_rows,)
                    ).fetchone()
                    cutoff = row[0] if row else None
                if max_age is not None:
                    row = db.execute(
                        "SELECT max(idx) FROM records WHERE ts < ?", (now - max_age,)
                    ).fetchone()
                    if row and row[0] is not None:
                        cutoff = max(cutoff or 0, row[0])
                if cutoff is None:
                    return deleted + self._trim_pending(db, max_rows, max_age, now)
                with _tx(db):
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('join_seq', ?)", (str(self._join_seq),)
                    )
                    cur = db.execute(
                        "DELETE FROM records WHERE idx IN (SELECT idx FROM records WHERE idx <= ?"
                        " ORDER BY idx LIMIT ?)",
                        (cutoff, chunk),
                    )
                n = cur.rowcount
            deleted += n
            if n < chunk:
                with self._lock:
                    return deleted + self._trim_pending(self.db, max_rows, max_age, now)
            time.sleep(0)  # let a waiting ingest batch take the lock between chunks

    def _trim_pending(
        self, db: sqlite3.Connection, max_rows: int | None, max_age: float | None, now: float
    ) -> int:
        """Labels still waiting for their record fall under the same limits as records, so a
        producer labelling ids that never arrive cannot grow the store without bound."""
        with _tx(db):
            n = 0
            if max_rows is not None:
                n += db.execute(
                    "DELETE FROM pending_labels WHERE rid IN (SELECT rid FROM pending_labels"
                    " ORDER BY ts DESC LIMIT -1 OFFSET ?)",
                    (max_rows,),
                ).rowcount
            if max_age is not None:
                n += db.execute(
                    "DELETE FROM pending_labels WHERE ts < ?", (now - max_age,)
                ).rowcount
        self._pending = max(0, self._pending - n)
        return n

    # -- reads -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.reader() as conn:
            total, labelled, first, last = conn.execute(
                "SELECT count(*), count(label), min(idx), max(idx) FROM records"
            ).fetchone()
            pending = conn.execute("SELECT count(*) FROM pending_labels").fetchone()[0]
        return {
            "records": total,
            "labelled": labelled,
            "pending_labels": pending,
            "first_index": first or 0,
            "last_index": last or 0,
        }

    def first_label_type(self) -> LabelType | None:
        """The class type of the first stored label, for a store written before the type was
        kept in its state; ``None`` if no record has a label yet."""
        row = self.db.execute(
            "SELECT label FROM records WHERE label IS NOT NULL ORDER BY idx LIMIT 1"
        ).fetchone()
        return None if row is None else label_type_of(json.loads(row[0]))

    def labelled_count(self, *, since_idx: int = 0) -> int:
        with self.reader() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM records WHERE label IS NOT NULL AND idx > ?", (since_idx,)
                ).fetchone()[0]
            )

    def last_index(self) -> int:
        """The index of the last record stored (0 before the first): where a count of the
        labelled rows that come after a moment starts."""
        with self.reader() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
        return int(row[0]) if row else 0

    def snapshot(
        self, *, limit: int, since_idx: int = 0, since_ts: float | None = None
    ) -> Snapshot:
        """The most recent ``limit`` labelled rows after ``since_idx`` (and ``since_ts``), in
        time order, read in one consistent transaction."""
        with self.reader() as conn:
            sql = "SELECT idx, ts, num, cat, label FROM records WHERE label IS NOT NULL AND idx > ?"
            args: list[Any] = [since_idx]
            if since_ts is not None:
                sql += " AND ts >= ?"
                args.append(since_ts)
            sql = f"SELECT * FROM ({sql} ORDER BY idx DESC LIMIT ?) ORDER BY ts, idx"  # noqa: S608
            rows = conn.execute(sql, [*args, limit]).fetchall()
        return self._to_snapshot(rows)

    def labelled_at(self, indices: Sequence[int]) -> Snapshot:
        """The labelled rows among ``indices`` that are still stored, in time order: the
        records a post-deploy guard watched, to score another model on."""
        rows: list[tuple[Any, ...]] = []
        with self.reader() as conn:
            for chunk in chunks(list(indices), 500):
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    "SELECT idx, ts, num, cat, label FROM records"  # noqa: S608
                    f" WHERE label IS NOT NULL AND idx IN ({marks})",
                    chunk,
                ).fetchall()
        rows.sort(key=lambda r: (r[1], r[0]))
        return self._to_snapshot(rows)

    def _to_snapshot(self, rows: list[tuple[Any, ...]]) -> Snapshot:
        k = len(self._numeric)
        idx = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        ts = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        numeric = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float64).reshape(
            len(rows), k
        )
        categorical = [json.loads(r[3]) for r in rows] if self._categorical else [[] for _ in rows]
        labels = [json.loads(r[4]) for r in rows]
        return Snapshot.of(idx, ts, numeric, categorical, labels)

    def joined_after(self, seq: int, *, limit: int = 10_000) -> list[Joined]:
        """Outcomes joined after join number ``seq``, in the order they joined: what the
        monitor replays into the error detector after a restart."""
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT idx, prediction, label, max(0.0, label_ts - ts), model_version, join_seq"
                " FROM records WHERE join_seq > ? ORDER BY join_seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [
            Joined(i, json.loads(pred), json.loads(label), delay, version, s)
            for i, pred, label, delay, version, s in rows
        ]

    @property
    def last_join(self) -> int:
        """The last join's number (0 before the first)."""
        return self._join_seq

    def records_after(
        self, idx: int, *, limit: int = 10_000
    ) -> list[tuple[int, dict[str, float | str], Label | None]]:
        """Records after ``idx`` in index order, as ``(idx, features, prediction)``: what the
        monitor replays after a restart to catch up with its checkpoint."""
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT idx, num, cat, prediction FROM records WHERE idx > ? ORDER BY idx LIMIT ?",
                (idx, limit),
            ).fetchall()
        out = []
        for i, num, cat, pred in rows:
            feats: dict[str, float | str] = dict(
                zip(self._numeric, np.frombuffer(num, dtype=np.float64).tolist(), strict=True)
            )
            if cat is not None:
                feats.update(zip(self._categorical, json.loads(cat), strict=True))
            out.append((i, feats, None if pred is None else json.loads(pred)))
        return out

    def events(
        self, *, kind: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[Event]:
        """Events newest first; page with ``before`` (an event id)."""
        sql = "SELECT id, ts, kind, record_idx, data FROM events WHERE 1=1"
        args: list[Any] = []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self.reader() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def integrity_check(self) -> str:
        with self.reader() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@contextmanager
def _tx(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE transaction: committed on success, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
