"""The embedded online store: one SQLite file (``.loopml/online.sqlite`` by default).

Tables: ``online_events`` (one row per (view, entity key), unique, with the
entity's events as one blob of :mod:`loopml.features.online.base`'s codec) and
``online_views`` (the ``as_of`` of each view's last materialization). The
events table is an ordinary rowid table: its rows hold kilobytes of events,
and a ``WITHOUT ROWID`` table would push them to overflow pages (measured:
a point read twice as slow). A read is one index lookup per entity; a write reads the entities' blobs, merges in
Python and upserts them in one ``BEGIN IMMEDIATE`` transaction, so merging,
deduplication and pruning are atomic. A materialization deletes and rewrites
the view in one transaction, chunk by chunk; readers (WAL mode) keep seeing
the old state until it commits. One connection is kept open and guarded by a
lock (the service calls it from several threads); ``sqlite3``'s statement
cache prepares each statement once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from loopml.errors import LoopmlError
from loopml.features.online.base import (
    EntityKey,
    Event,
    EventLog,
    OnlineStoreUnavailable,
    StateChunk,
    datetime_from_us,
    decode_events,
    encode_events,
    key_text,
    merge_blob,
    micros,
)

__all__ = ["SqliteOnlineStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS online_events ("
    "id INTEGER PRIMARY KEY, view TEXT NOT NULL, key TEXT NOT NULL, events BLOB NOT NULL, UNIQUE (view, key))",
    "CREATE TABLE IF NOT EXISTS online_views (view TEXT PRIMARY KEY, as_of INTEGER NOT NULL) WITHOUT ROWID",
)
_UPSERT = (
    "INSERT INTO online_events (view, key, events) VALUES (?, ?, ?) "
    "ON CONFLICT (view, key) DO UPDATE SET events = excluded.events"
)
_SET_AS_OF = "INSERT INTO online_views (view, as_of) VALUES (?, ?) ON CONFLICT (view) DO UPDATE SET as_of = excluded.as_of"
_READ_ONE = "SELECT key, events FROM online_events WHERE view = ? AND key = ?"
_READ_MANY = "SELECT key, events FROM online_events WHERE view = ? AND key IN (SELECT value FROM json_each(?))"
#: Keys per ``IN`` lookup while merging a large write.
_LOOKUP_CHUNK = 5000


def _use_wal(conn: sqlite3.Connection, attempts: int = 300) -> None:
    """Switch to WAL once; the switch does not wait on SQLite's busy timeout, so retry while another opener holds the lock."""
    for _ in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA journal_mode = WAL")


class SqliteOnlineStore:
    """:class:`~loopml.features.online.base.OnlineStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                _use_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            except sqlite3.DatabaseError as exc:
                raise LoopmlError(f"{self.path}: cannot open the online store ({exc})") from None
            except OSError as exc:
                raise OnlineStoreUnavailable(f"{self.path}: cannot open the online store ({exc})") from None
            self._conn = conn
        return self._conn

    def _blobs(self, conn: sqlite3.Connection, view: str, keys: Sequence[str]) -> dict[str, bytes]:
        if len(keys) == 1:
            return {key: blob for key, blob in conn.execute(_READ_ONE, (view, keys[0]))}
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            found.update(conn.execute(_READ_MANY, (view, json.dumps(keys[start : start + _LOOKUP_CHUNK]))).fetchall())
        return found

    def write_events(self, view: str, events: Sequence[tuple[EntityKey, Event]], horizon_us: int) -> int:
        grouped: dict[str, list[Event]] = defaultdict(list)
        for key, event in events:
            grouped[key_text(key)].append(event)
        if not grouped:
            return 0
        gained = 0
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._blobs(conn, view, sorted(grouped))
                rows = []
                for key, new in grouped.items():
                    blob, n = merge_blob(current.get(key), new, horizon_us)
                    gained += n
                    rows.append((view, key, blob))
                conn.executemany(_UPSERT, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return gained

    def read_events(self, view: str, keys: Sequence[EntityKey]) -> list[EventLog | None]:
        texts = [key_text(k) for k in keys]
        if len(texts) == 1:  # the request path's common case
            with self._lock:
                row = self._connection().execute(_READ_ONE, (view, texts[0])).fetchone()
            return [None if row is None else decode_events(row[1])]
        if not texts:
            return []
        with self._lock:
            found = self._blobs(self._connection(), view, texts if len(texts) == 1 else sorted(set(texts)))
        logs = {key: decode_events(blob) for key, blob in found.items()}
        return [logs.get(t) for t in texts]

    def replace_view(self, view: str, chunks: Iterable[StateChunk], as_of: datetime) -> int:
        entities = 0
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM online_events WHERE view = ?", (view,))
                for chunk in chunks:
                    rows = []
                    for key, events in chunk:
                        k = len(events[0].values) if events else 0
                        rows.append((view, key_text(key), encode_events(events, k)))
                    conn.executemany(_UPSERT, rows)
                    entities += len(rows)
                conn.execute(_SET_AS_OF, (view, micros(as_of)))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return entities

    def materialized_as_of(self, view: str) -> datetime | None:
        with self._lock:
            row = self._connection().execute("SELECT as_of FROM online_views WHERE view = ?", (view,)).fetchone()
        return None if row is None else datetime_from_us(int(row[0]))

    def ping(self) -> None:
        with self._lock:
            self._connection().execute("SELECT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
