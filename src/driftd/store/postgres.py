"""The store on PostgreSQL (psycopg 3), for several daemons of one model on one database.

The same contract as the SQLite store (:mod:`driftd.store.base`) and the same tables, in a
PostgreSQL schema of their own (``[store] namespace``, one per model), so that many models
share one database. What changes is who may write: any daemon of the model may store records
and labels, so every write that numbers rows (records, labels, retention) first takes one
transaction-scoped advisory lock of the namespace. Writers therefore commit one after the
other, and a record's index, given under the lock from the ``counters`` table, is in commit
order: whoever tails the table by index (a leader's monitor) never misses a row that commits
late. Events, state and reads take no lock.

A batch of records is written with ``COPY`` after the ids already stored are looked up, under
the same lock, so that a re-sent id is a duplicate exactly as in SQLite. Labels are applied in
one statement that numbers the joins in the order the labels came.

The connection a write uses is re-opened after the database went away; a write that finds no
database raises :class:`~driftd.errors.StoreUnavailable`, which the API answers with a 503, so
that the producer re-sends (nothing was acknowledged).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from driftd.errors import StoreUnavailable, StoreVersionError
from driftd.ingest.batch import Batch
from driftd.ingest.schema import Label, LabelType, Schema, label_type_of
from driftd.store.batch_insert import BatchWriter, Ids
from driftd.store.records import Event, IngestResult, Joined, LabelResult, Snapshot

__all__ = ["NAMESPACE_PATTERN", "SCHEMA_VERSION", "Leadership", "PostgresStore"]

log = logging.getLogger(__name__)

#: The schema of the tables in PostgreSQL (its own sequence, apart from SQLite's).
SCHEMA_VERSION = 1
#: Server-side keepalives of every session (see PostgresStore._connect).
_SESSION_OPTIONS = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
#: What a namespace may be: an unquoted PostgreSQL identifier, lower case.
NAMESPACE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name text PRIMARY KEY, value bigint NOT NULL)",
    "INSERT INTO counters VALUES ('idx', 0), ('join_seq', 0) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS records (
        idx bigint PRIMARY KEY,
        rid text NOT NULL UNIQUE,
        ts double precision NOT NULL,
        received double precision NOT NULL,
        source text NOT NULL,
        num bytea NOT NULL,
        cat text,
        prediction text,
        model_version integer,
        label text,
        label_ts double precision,
        join_seq bigint,
        proba text
    )""",
    "CREATE INDEX IF NOT EXISTS records_labelled ON records (idx) WHERE label IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS records_joined ON records (join_seq) WHERE join_seq IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS pending_labels (
        rid text PRIMARY KEY, label text NOT NULL, ts double precision NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ts double precision NOT NULL,
        kind text NOT NULL,
        record_idx bigint,
        data text NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id)",
    "CREATE TABLE IF NOT EXISTS state (key text PRIMARY KEY, value text NOT NULL)",
    # The model registry of every daemon of the model (driftd.models.registry_pg).
    """CREATE TABLE IF NOT EXISTS versions (
        number integer PRIMARY KEY,
        manifest text NOT NULL,
        artifact bytea NOT NULL,
        calibration bytea
    )""",
    """CREATE TABLE IF NOT EXISTS aliases (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        champion integer,
        previous integer,
        changed double precision
    )""",
    "INSERT INTO aliases (one) VALUES (true) ON CONFLICT DO NOTHING",
    # Values of bytes replaced whole: the monitor's checkpoint, shared by the model's daemons.
    "CREATE TABLE IF NOT EXISTS blobs (name text PRIMARY KEY, data bytea NOT NULL)",
)

# What an insert needs to know, read under the write lock: the counters, which of the given ids
# are stored, and whether a label waits for one of them.
_BEFORE_INSERT = """
SELECT (SELECT value FROM counters WHERE name = 'idx'),
       (SELECT value FROM counters WHERE name = 'join_seq'),
       (SELECT coalesce(array_agg(rid), '{}') FROM records WHERE rid = ANY(%(ids)s::text[])),
       EXISTS (SELECT 1 FROM pending_labels WHERE rid = ANY(%(ids)s::text[]))
"""

# A batch of records in one statement, the counters moved with it: the columns that vary per
# record as arrays (the feature blocks as bytea, in binary), the rest as one value each.
_INSERT = """
WITH moved AS (
    UPDATE counters SET value = CASE name WHEN 'idx' THEN %(last)s::bigint ELSE %(join)s::bigint END
)
INSERT INTO records (idx, rid, ts, received, source, num, cat, prediction, model_version,
                     label, label_ts, join_seq, proba)
SELECT %(first)s::bigint + u.ord - 1, u.rid, u.ts, %(received)s::float8, %(source)s::text,
       u.num, u.cat, u.prediction, %(version)s::integer, u.label,
       CASE WHEN u.label IS NULL THEN NULL ELSE %(received)s::float8 END, u.seq, u.proba
FROM unnest(%(rid)s::text[], %(ts)s::float8[], %(num)b::bytea[], %(cat)s::text[],
            %(prediction)s::text[], %(label)s::text[], %(seq)s::bigint[], %(proba)s::text[])
     WITH ORDINALITY AS u(rid, ts, num, cat, prediction, label, seq, proba, ord)
"""

# Labels ``(rid, label, ts)`` set on the records that have none, in one statement; a join (a
# record with a prediction) gets the next number, in the order the labels came.
_APPLY_LABELS = """
WITH given AS (
    SELECT * FROM unnest(%(rids)s::text[], %(labels)s::text[], %(ts)s::float8[])
        WITH ORDINALITY AS g(rid, label, ts, ord)
), hit AS (
    SELECT r.idx, g.ord, g.label, g.ts, r.prediction IS NOT NULL AS joins
    FROM given g JOIN records r ON r.rid = g.rid
    WHERE r.label IS NULL
), numbered AS (
    SELECT idx, label, ts,
           CASE WHEN joins THEN %(seq)s + sum(joins::int) OVER (ORDER BY ord) END AS seq
    FROM hit
)
UPDATE records r SET label = n.label, label_ts = n.ts, join_seq = n.seq
FROM numbered n WHERE r.idx = n.idx
RETURNING r.rid, r.idx, r.ts, r.prediction, r.model_version, r.join_seq, n.label, n.ts
"""


class PostgresStore:
    """The store in PostgreSQL schema ``namespace`` of the database at ``url`` (a libpq
    connection string). Open with :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        url: str,
        schema: Schema,
        *,
        namespace: str = "driftd",
        connect_timeout: float = 5.0,
    ) -> None:
        if not NAMESPACE_PATTERN.match(namespace):
            raise ValueError(
                f"namespace: got {namespace!r}, expected a lower-case identifier"
                " (letters, digits, _; 63 at most)"
            )
        self.url = url
        self.schema = schema
        self.namespace = namespace
        self.connect_timeout = connect_timeout
        from psycopg.conninfo import conninfo_to_dict

        given = str(conninfo_to_dict(url).get("options") or "")  # the URL's own, kept
        self._options = f"{given} {_SESSION_OPTIONS}".strip()
        self._numeric = schema.numeric
        self._categorical = schema.categorical
        self._writer = BatchWriter(schema)
        self._id_prefix = secrets.token_hex(4)
        self._id_counter = itertools.count()
        self._lock = threading.Lock()  # the write connection, one thread at a time
        self._db: Any = None
        self._idle: list[Any] = []  # read connections not in use
        self._idle_lock = threading.Lock()
        self._join_seq = 0
        # One advisory lock per namespace serializes the writers that number rows.
        digest = hashlib.sha256(f"driftd.store.{namespace}".encode()).digest()
        self._write_key = int.from_bytes(digest[:8], "big", signed=True)

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> PostgresStore:
        db = self._connect()
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_key,))
                from psycopg import sql

                db.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.namespace))
                )
                version = self._version(db)
                if version is None:
                    for stmt in _DDL:
                        db.execute(stmt)
                    db.execute(
                        "INSERT INTO meta VALUES ('schema_version', %s), ('features', %s)"
                        " ON CONFLICT (key) DO NOTHING",
                        (str(SCHEMA_VERSION), self.schema.fingerprint()),
                    )
                self._join_seq = _counter(db, "join_seq")
        except BaseException:
            db.close()
            raise
        self._db = db
        return self

    def _version(self, db: Any) -> int | None:
        has_meta = db.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name = 'meta'",
            (self.namespace,),
        ).fetchone()
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            return None
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"schema {self.namespace!r} was written by a newer driftd (store schema"
                f" {version}; this driftd reads up to {SCHEMA_VERSION}); upgrade driftd or"
                " set store.namespace to another schema"
            )
        return version

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                # A peer that vanished without closing (a host down, a partition) is noticed in
                # about 11 s on both ends: by the server through its own keepalives on this
                # session (the server's defaults wait two hours), which ends the session and
                # frees a leader's lock for a standby; by this client through its keepalives
                # while idle and, with a request in flight, through the TCP user timeout.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                tcp_user_timeout=10_000,
                options=self._options,
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL unreachable: {_reason(exc)}") from exc
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.namespace)))
        # The writers' ordering rests on each statement taking its snapshot after the lock,
        # whatever the server's or the role's default isolation.
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        return conn

    @property
    def quick_commit(self) -> bool:
        """Never: every commit is a round trip to the server, which may be slow or gone."""
        return False

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """The write connection in one transaction, holding the namespace's write lock."""
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_key,))
            yield db

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """The write connection in one transaction (re-opened if the database went away)."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("the store is not open")
            self._db = self._begun(self._db, "write")
            yield from _in_transaction(self._db, "write")

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A read connection of its own, for use from any thread; kept for the next read."""
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        conn = self._begun(conn, "read")
        try:
            yield from _in_transaction(conn, "read")
        except BaseException:
            conn.close()
            raise
        with self._idle_lock:
            if len(self._idle) < 4:
                self._idle.append(conn)
                return
        conn.close()

    def _begun(self, conn: Any, what: str) -> Any:
        """``conn`` (a new one if ``None``) with a transaction begun. A connection that died
        while idle (a database restart) fails at ``BEGIN``, before anything was sent: it is
        replaced once, so that the first request after a restart does not fail for it."""
        import psycopg

        for attempt in range(2):
            if conn is None or conn.closed or conn.broken:
                conn = self._connect()
            try:
                conn.execute("BEGIN")
            except psycopg.OperationalError as exc:
                conn.close()
                conn = None
                if attempt:
                    raise StoreUnavailable(f"PostgreSQL {what} failed: {_reason(exc)}") from exc
            else:
                return conn
        raise AssertionError("unreachable")

    # -- writes ----------------------------------------------------------------------------
    def add_records(self, batch: Batch, *, source: str, received: float) -> IngestResult:
        """Insert records in one transaction. A record whose id is already stored is a duplicate
        (an idempotent re-send) and is skipped; a label waiting for an id is joined on arrival.

        Three statements in the common case: the lock, what the insert needs to know (the
        counters, which given ids are stored, whether a label waits for one), and the insert
        with the counters' update."""
        n = len(batch)
        start = next(self._id_counter)
        self._id_counter = itertools.count(start + n)
        ids = Ids(batch.ids, self._id_prefix, start, n)
        block = batch.numeric if batch.numeric is not None else self._writer.pack(batch.features)
        rids = list(ids)
        given = rids if batch.ids is not None else []  # made-up ids are new, and unlabelled
        with self._writing() as db:
            last, seq, stored, waits = db.execute(_BEFORE_INSERT, {"ids": given}).fetchone()
            keep = _new(rids, set(stored)) if stored or len(set(given)) < len(given) else None
            accepted = n if keep is None else sum(keep)
            first = last + 1
            columns, joins = self._columns(
                batch, rids=rids, keep=keep, first=first, seq=seq, block=block
            )
            if accepted:
                db.execute(
                    _INSERT,
                    {
                        **columns,
                        "first": first,
                        "last": last + accepted,
                        "join": joins[-1].seq if joins else seq,
                        "received": received,
                        "source": source,
                        "version": batch.model_version,
                    },
                )
            self._join_seq = joins[-1].seq if joins else seq
            result = IngestResult(first_idx=first, accepted=accepted, ids=ids, inserted=keep)
            numeric = np.frombuffer(block, dtype=np.float64).reshape(n, len(self._numeric))
            result.numeric = numeric if keep is None else numeric[np.asarray(keep, bool)]
            result.inserted_idx = list(range(first, first + accepted))
            if keep is not None:
                result.duplicates = [rid for rid, k in zip(rids, keep, strict=True) if not k]
            result.joined = joins
            if waits:
                new = columns["rid"]
                waiting = db.execute(
                    "DELETE FROM pending_labels WHERE rid = ANY(%s) RETURNING rid, label, ts",
                    (new,),
                ).fetchall()
                at = {rid: i for i, rid in enumerate(new)}  # joined in the order of the records
                waiting.sort(key=lambda w: at[w[0]])
                joined, _ = self._apply_labels(db, waiting)
                result.joined += joined
        return result

    def _columns(
        self,
        batch: Batch,
        *,
        rids: list[str],
        keep: list[bool] | None,
        first: int,
        seq: int,
        block: bytes,
    ) -> tuple[dict[str, list[Any]], list[Joined]]:
        """The columns of the rows to insert (index order) and the joins among them (records
        sent with both a prediction and a label), numbered after join ``seq``."""
        n = len(batch)
        ts = [batch.ts] * n if isinstance(batch.ts, int | float) else batch.ts
        preds = batch.predictions or [None] * n
        labels = batch.labels or [None] * n
        probas = batch.probas or [None] * n
        width = 8 * len(self._numeric)
        cat = self._writer.categorical_json
        columns: dict[str, list[Any]] = {
            k: [] for k in ("rid", "ts", "num", "cat", "prediction", "label", "seq", "proba")
        }
        joins: list[Joined] = []
        idx = first
        for i, (rid, t, f, pred, label, proba) in enumerate(
            zip(rids, ts, batch.features, preds, labels, probas, strict=True)
        ):
            if keep is not None and not keep[i]:
                continue
            joined = pred is not None and label is not None
            if joined:
                seq += 1
                joins.append(Joined(idx, pred, label, 0.0, batch.model_version, seq))
            columns["rid"].append(rid)
            columns["ts"].append(float(t))
            columns["num"].append(block[i * width : (i + 1) * width])
            columns["cat"].append(cat(f) if self._categorical else None)
            columns["prediction"].append(None if pred is None else json.dumps(pred))
            columns["label"].append(None if label is None else json.dumps(label))
            columns["seq"].append(seq if joined else None)
            columns["proba"].append(None if proba is None else json.dumps(proba))
            idx += 1
        return columns, joins

    def _set_join_seq(self, db: Any, seq: int) -> None:
        db.execute("UPDATE counters SET value = %s WHERE name = 'join_seq'", (seq,))
        self._join_seq = seq

    def _apply_labels(
        self, db: Any, labels: Sequence[tuple[str, str, float]]
    ) -> tuple[list[Joined], set[str]]:
        """Set labels ``(rid, label JSON, ts)`` on the records that have none (the first label
        of an id in ``labels`` wins). Returns the joins, in order, and the ids labelled."""
        base = _counter(db, "join_seq")
        rows = db.execute(
            _APPLY_LABELS,
            {
                "rids": [r for r, _, _ in labels],
                "labels": [lb for _, lb, _ in labels],
                "ts": [t for _, _, t in labels],
                "seq": base,
            },
        ).fetchall()
        joined = sorted(
            (
                Joined(idx, json.loads(pred), json.loads(label), max(0.0, lts - ts), version, seq)
                for _, idx, ts, pred, version, seq, label, lts in rows
                if seq is not None
            ),
            key=lambda j: j.seq,
        )
        if joined:
            self._set_join_seq(db, joined[-1].seq)
        else:
            self._join_seq = base
        return joined, {r[0] for r in rows}

    def add_labels(self, labels: Sequence[tuple[str, Label, float]]) -> LabelResult:
        """Attach delayed labels ``(id, label, time)`` to their records in one transaction.

        A label for an id not stored yet is kept until its record arrives; a second label for an
        id that already has one is a duplicate and changes nothing.
        """
        result = LabelResult()
        first: dict[str, tuple[str, str, float]] = {}
        repeated: list[str] = []
        for rid, label, ts in labels:
            if rid in first:
                repeated.append(rid)
            else:
                first[rid] = (rid, json.dumps(label), float(ts))
        with self._writing() as db:
            joined, labelled = self._apply_labels(db, list(first.values()))
            result.joined = joined
            rest = [v for rid, v in first.items() if rid not in labelled]
            if rest:
                stored = {
                    r[0]
                    for r in db.execute(
                        "SELECT rid FROM records WHERE rid = ANY(%s)", ([v[0] for v in rest],)
                    )
                }
                waiting = [v for v in rest if v[0] not in stored]
                kept = {
                    r[0]
                    for r in db.execute(
                        "INSERT INTO pending_labels SELECT * FROM"
                        " unnest(%s::text[], %s::text[], %s::float8[])"
                        " ON CONFLICT (rid) DO NOTHING RETURNING rid",
                        tuple(list(col) for col in zip(*waiting, strict=True)) or ([], [], []),
                    )
                }
                result.pending = len(kept)
                result.duplicates = [v[0] for v in rest if v[0] not in kept]
        result.duplicates += repeated
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
        with self._tx() as db:
            if state is not None:
                self._put_state(db, *state)
            return [self._insert_event(db, kind, data, ts, idx) for kind, data, ts, idx in events]

    @staticmethod
    def _insert_event(
        db: Any, kind: str, data: Mapping[str, Any], ts: float, idx: int | None
    ) -> int:
        return int(
            db.execute(
                "INSERT INTO events (ts, kind, record_idx, data) VALUES (%s,%s,%s,%s) RETURNING id",
                (ts, kind, idx, json.dumps(data, allow_nan=False, default=_jsonable)),
            ).fetchone()[0]
        )

    def put_state(self, key: str, value: Any) -> None:
        with self._tx() as db:
            self._put_state(db, key, value)

    @staticmethod
    def _put_state(db: Any, key: str, value: Any) -> None:
        db.execute(
            "INSERT INTO state VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = %s", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def trim(
        self, *, max_rows: int | None, max_age: float | None, now: float, chunk: int = 5000
    ) -> int:
        """Delete the oldest records beyond retention, ``chunk`` rows per transaction so that
        ingest never waits long. Returns the number of rows deleted."""
        deleted = 0
        while True:
            with self._writing() as db:
                cutoff = None
                if max_rows is not None:
                    row = db.execute(
                        "SELECT idx FROM records ORDER BY idx DESC LIMIT 1 OFFSET %s", (max_rows,)
                    ).fetchone()
                    cutoff = row[0] if row else None
                if max_age is not None:
                    row = db.execute(
                        "SELECT max(idx) FROM records WHERE ts < %s", (now - max_age,)
                    ).fetchone()
                    if row and row[0] is not None:
                        cutoff = max(cutoff or 0, row[0])
                n = 0
                if cutoff is not None:
                    n = db.execute(
                        "DELETE FROM records WHERE idx IN (SELECT idx FROM records"
                        " WHERE idx <= %s ORDER BY idx LIMIT %s)",
                        (cutoff, chunk),
                    ).rowcount
            deleted += n
            if cutoff is None or n < chunk:
                return deleted + self._trim_pending(max_rows, max_age, now)

    def _trim_pending(self, max_rows: int | None, max_age: float | None, now: float) -> int:
        """Labels still waiting for their record fall under the same limits as records."""
        n = 0
        with self._writing() as db:
            if max_rows is not None:
                n += db.execute(
                    "DELETE FROM pending_labels WHERE rid IN (SELECT rid FROM pending_labels"
                    " ORDER BY ts DESC OFFSET %s)",
                    (max_rows,),
                ).rowcount
            if max_age is not None:
                n += db.execute(
                    "DELETE FROM pending_labels WHERE ts < %s", (now - max_age,)
                ).rowcount
        return n

    # -- shared values and leadership ------------------------------------------------------
    def blob(self, name: str) -> _Blob:
        """The value ``name`` of the ``blobs`` table, read and replaced whole."""
        return _Blob(self, name)

    def read_blob(self, name: str) -> bytes | None:
        with self._reading() as conn:
            row = conn.execute("SELECT data FROM blobs WHERE name = %s", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def write_blob(self, name: str, data: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO blobs VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                (name, data),
            )

    def leadership(self) -> Leadership:
        """The lock that makes one daemon of the namespace its leader (see :class:`Leadership`)."""
        return Leadership(self._connect, self.namespace)

    # -- the model registry's rows --------------------------------------------------------
    def add_version(
        self, manifest: Mapping[str, Any], artifact: bytes, calibration: bytes | None
    ) -> int:
        """Store a version under the next number (in ``manifest`` as ``version``); returns it.
        The row is written whole in one transaction: a version is either complete or absent."""
        with self._tx() as db:
            db.execute("LOCK TABLE versions IN SHARE ROW EXCLUSIVE MODE")
            number = int(
                db.execute("SELECT coalesce(max(number), 0) + 1 FROM versions").fetchone()[0]
            )
            text = json.dumps({**manifest, "version": number}, sort_keys=True)
            db.execute(
                "INSERT INTO versions VALUES (%s, %s, %s, %s)",
                (number, text, artifact, calibration),
            )
        return number

    def version_numbers(self) -> list[int]:
        with self._reading() as conn:
            return [r[0] for r in conn.execute("SELECT number FROM versions ORDER BY number")]

    def version_manifest(self, number: int) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT manifest FROM versions WHERE number = %s", (number,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def version_bytes(self, number: int, part: str) -> bytes | None:
        """A version's ``artifact`` or ``calibration`` bytes (``None``: no such version or
        part)."""
        column = {"artifact": "artifact", "calibration": "calibration"}[part]
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {column} FROM versions WHERE number = %s",  # noqa: S608 - fixed names
                (number,),
            ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def aliases_row(self) -> tuple[int | None, int | None, float | None]:
        """``(champion, previous, changed)``: the aliases and when they last moved."""
        with self._reading() as conn:
            row = conn.execute("SELECT champion, previous, changed FROM aliases").fetchone()
        return (row[0], row[1], row[2]) if row else (None, None, None)

    def move_champion(
        self, number: int, *, ts: float, event: tuple[str, Mapping[str, Any]] | None = None
    ) -> tuple[int | None, int | None]:
        """Make ``number`` the champion, the champion before it the previous one, and record
        ``event`` (with the new ``version`` and ``previous``) in the same transaction.
        Returns ``(champion, previous)``."""
        with self._tx() as db:
            champion, previous = db.execute(
                "SELECT champion, previous FROM aliases FOR UPDATE"
            ).fetchone()
            if champion != number:
                previous = champion
            db.execute(
                "UPDATE aliases SET champion = %s, previous = %s, changed = %s",
                (number, previous, ts),
            )
            if event is not None:
                kind, data = event
                self._insert_event(
                    db, kind, {**data, "version": number, "previous": previous}, ts, None
                )
            # Sent at the commit, and only if it commits: the standbys listening
            # (:meth:`Leadership.wait_for_move`) load the new champion at once.
            db.execute("SELECT pg_notify(%s, %s)", (champion_channel(self.namespace), str(number)))
        return number, previous

    def delete_version(
        self, number: int, *, ts: float, event: tuple[str, Mapping[str, Any]] | None = None
    ) -> bool:
        """Delete a version and record ``event`` in the same transaction; False if absent."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM versions WHERE number = %s", (number,)).rowcount
            if gone and event is not None:
                self._insert_event(db, event[0], event[1], ts, None)
        return bool(gone)

    # -- reads -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self._reading() as conn:
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
        """The class type of the first stored label; ``None`` if no record has one yet."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT label FROM records WHERE label IS NOT NULL ORDER BY idx LIMIT 1"
            ).fetchone()
        return None if row is None else label_type_of(json.loads(row[0]))

    def labelled_count(self, *, since_idx: int = 0) -> int:
        with self._reading() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM records WHERE label IS NOT NULL AND idx > %s",
                    (since_idx,),
                ).fetchone()[0]
            )

    def last_index(self) -> int:
        """The index of the last record stored (0 before the first)."""
        with self._reading() as conn:
            return _counter(conn, "idx")

    def snapshot(
        self, *, limit: int, since_idx: int = 0, since_ts: float | None = None
    ) -> Snapshot:
        """The most recent ``limit`` labelled rows after ``since_idx`` (and ``since_ts``), in
        time order, read in one statement."""
        sql = "SELECT idx, ts, num, cat, label FROM records WHERE label IS NOT NULL AND idx > %s"
        args: list[Any] = [since_idx]
        if since_ts is not None:
            sql += " AND ts >= %s"
            args.append(since_ts)
        sql = f"SELECT * FROM ({sql} ORDER BY idx DESC LIMIT %s) AS recent ORDER BY ts, idx"  # noqa: S608
        with self._reading() as conn:
            rows = conn.execute(sql, [*args, limit]).fetchall()
        return self._to_snapshot(rows)

    def labelled_at(self, indices: Sequence[int]) -> Snapshot:
        """The labelled rows among ``indices`` that are still stored, in time order."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT idx, ts, num, cat, label FROM records"
                " WHERE label IS NOT NULL AND idx = ANY(%s) ORDER BY ts, idx",
                (list(indices),),
            ).fetchall()
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
        """Outcomes joined after join number ``seq``, in the order they joined."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT idx, prediction, label, greatest(0.0, label_ts - ts), model_version,"
                " join_seq FROM records WHERE join_seq > %s ORDER BY join_seq LIMIT %s",
                (seq, limit),
            ).fetchall()
        return [
            Joined(i, json.loads(pred), json.loads(label), delay, version, s)
            for i, pred, label, delay, version, s in rows
        ]

    @property
    def last_join(self) -> int:
        """The last join's number this store wrote or read at open (0 before the first)."""
        return self._join_seq

    def records_after(
        self, idx: int, *, limit: int = 10_000
    ) -> list[tuple[int, dict[str, float | str], Label | None]]:
        """Records after ``idx`` in index order, as ``(idx, features, prediction)``."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT idx, num, cat, prediction FROM records WHERE idx > %s"
                " ORDER BY idx LIMIT %s",
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
        sql = "SELECT id, ts, kind, record_idx, data FROM events WHERE true"
        args: list[Any] = []
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        if before is not None:
            sql += " AND id < %s"
            args.append(before)
        sql += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        with self._reading() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


class _Blob:
    def __init__(self, store: PostgresStore, name: str) -> None:
        self._store, self.name = store, name

    def read(self) -> bytes | None:
        return self._store.read_blob(self.name)

    def write(self, data: bytes) -> None:
        self._store.write_blob(self.name, data)


class Leadership:
    """A session-level advisory lock of the namespace, on a connection of its own: whoever
    holds it leads. PostgreSQL releases it the instant that connection ends, so a leader killed
    with SIGKILL frees it as soon as the kernel closes its socket; a leader cut off from the
    database loses it when the server notices (TCP keepalives, set short here), and finds out
    itself at its next :meth:`check`. Not thread-safe: one thread asks."""

    def __init__(self, connect: Any, namespace: str) -> None:
        self._connect = connect
        digest = hashlib.sha256(f"driftd.leader.{namespace}".encode()).digest()
        #: The lock's key: ``pg_locks`` shows its holder with ``classid`` the high and
        #: ``objid`` the low 32 bits (see :meth:`holder_query`).
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self.channel = champion_channel(namespace)
        self._conn: Any = None
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this process holds it now."""
        import psycopg

        if self.held:
            return self.check()
        from psycopg import sql

        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
                # A standby hears of each champion move on this connection (wait_for_move).
                self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            if row[0]:  # the leader moves the champion itself: nothing to hear
                self._conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(self.channel)))
        except (psycopg.Error, StoreUnavailable):
            self._drop()
            return False
        self.held = bool(row[0])
        return self.held

    def wait_for_move(self, timeout: float) -> bool | None:
        """Wait up to ``timeout`` seconds for the champion alias of the namespace to move
        (a standby, between two tries of the lock). True when it moved, False when the time
        is up, None at once when there is no connection to listen on."""
        import psycopg

        if self._conn is None or self.held:
            return None
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error:
            self._drop()
            return None
        return False

    def check(self) -> bool:
        """Whether the lock is still held: its connection answers and still holds it."""
        import psycopg

        if not self.held:
            return False
        try:
            # A session's advisory lock lasts as long as the session: if it answers, it holds.
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop()
        return self.held

    def holder_query(self) -> str:
        """SQL that names the backend holding the lock (for an operator: which daemon leads)."""
        unsigned = self.key & (2**64 - 1)
        high, low = unsigned >> 32, unsigned & 0xFFFFFFFF  # two integers of the lock's own key
        return (
            "SELECT pid, client_addr, backend_start FROM pg_locks JOIN pg_stat_activity"  # noqa: S608
            f" USING (pid) WHERE locktype = 'advisory' AND classid = {high} AND objid = {low}"
            " AND granted"
        )

    def release(self) -> None:
        self._drop()

    def _drop(self) -> None:
        self.held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def champion_channel(namespace: str) -> str:
    """The LISTEN/NOTIFY channel on which the champion moves of ``namespace`` are announced;
    a digest, as a namespace may be as long as a channel name may be."""
    return "driftd_champion_" + hashlib.sha256(namespace.encode()).hexdigest()[:16]


def _in_transaction(conn: Any, what: str) -> Iterator[Any]:
    """Yield ``conn`` inside the transaction :meth:`PostgresStore._begun` began: committed
    when the body returns, rolled back when it raises."""
    import psycopg

    try:
        yield conn
    except BaseException as exc:
        if not conn.broken and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, psycopg.OperationalError):
            raise StoreUnavailable(f"PostgreSQL {what} failed: {_reason(exc)}") from exc
        raise
    try:
        conn.execute("COMMIT")
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"PostgreSQL {what} failed: {_reason(exc)}") from exc


def _new(rids: list[str], stored: set[str]) -> list[bool]:
    """Whether each id is new: neither stored nor earlier in the batch."""
    keep = []
    for rid in rids:
        keep.append(rid not in stored)
        stored.add(rid)
    return keep


def _counter(db: Any, name: str) -> int:
    return int(db.execute("SELECT value FROM counters WHERE name = %s", (name,)).fetchone()[0])


def _reason(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
