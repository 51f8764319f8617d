"""The online feature store: the ``OnlineStore`` protocol and its SQLite backend.

An online store keeps, per feature view and entity key, the latest materialized
feature values and the time they are valid as of. Its verbs are ``write``
(upsert), ``read`` (``None`` for an unknown entity) and ``close``; every
backend passes the same contract tests. Keys are stored as text (see
:func:`key_text`) so integer and string entity keys both work and a key sent
as ``42`` or ``"42"`` finds the same row.

The SQLite backend is one ``WITHOUT ROWID`` table with primary key
``(view, key)``, the values as a JSON object and ``as_of`` as epoch
microseconds: one B-tree lookup per entity and no schema change when a view
gains a feature. It keeps one connection open (WAL mode, so readers do not
wait for a materialization) and relies on ``sqlite3``'s statement cache, so
the two read statements are prepared once.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from loopml.errors import LoopmlError

__all__ = ["EntityKey", "OnlineRow", "OnlineStore", "SqliteOnlineStore", "key_text"]

EntityKey = str | int
OnlineRow = tuple[dict[str, float], datetime]

_EPOCH = datetime(1970, 1, 1)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS online_features ("
    "view TEXT NOT NULL, key TEXT NOT NULL, as_of INTEGER NOT NULL, vals TEXT NOT NULL, "
    "PRIMARY KEY (view, key)) WITHOUT ROWID"
)
_UPSERT = (
    "INSERT INTO online_features (view, key, as_of, vals) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (view, key) DO UPDATE SET as_of = excluded.as_of, vals = excluded.vals"
)
_READ_ONE = "SELECT key, as_of, vals FROM online_features WHERE view = ? AND key = ?"
_READ_MANY = "SELECT key, as_of, vals FROM online_features WHERE view = ? AND key IN (SELECT value FROM json_each(?))"


def key_text(value: object) -> str:
    """The stored form of an entity key: integers (and whole floats) as digits, text as is."""
    if isinstance(value, bool):
        raise LoopmlError(f"entity key {value!r}: expected an integer or a string")
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    try:
        as_int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise LoopmlError(f"entity key {value!r}: expected an integer or a string") from None
    if as_int != value:
        raise LoopmlError(f"entity key {value!r}: expected an integer or a string")
    return str(as_int)


def _micros(value: datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (value - _EPOCH) // timedelta(microseconds=1)


def _datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class OnlineStore(Protocol):
    """Latest feature values per (view, entity key)."""

    def write(self, view: str, rows: Sequence[tuple[EntityKey, dict[str, float], datetime]]) -> None:
        """Upsert ``(key, values, as_of)`` rows of one view."""
        ...

    def read(self, view: str, keys: Sequence[EntityKey]) -> list[OnlineRow | None]:
        """``(values, as_of)`` per key, in order; ``None`` for an unknown key."""
        ...

    def close(self) -> None:
        """Release connections; the store may be used again (it reopens)."""
        ...


class SqliteOnlineStore:
    """:class:`OnlineStore` in one SQLite file (timestamps naive UTC)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise LoopmlError(f"{self.path}: cannot open the online store ({exc})") from None
            self._conn = conn
        return self._conn

    def write(self, view: str, rows: Sequence[tuple[EntityKey, dict[str, float], datetime]]) -> None:
        params = [(view, key_text(key), _micros(as_of), json.dumps(values)) for key, values, as_of in rows]
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT, params)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self, view: str, keys: Sequence[EntityKey]) -> list[OnlineRow | None]:
        texts = [key_text(k) for k in keys]
        with self._lock:
            conn = self._connection()
            if len(texts) == 1:
                found = conn.execute(_READ_ONE, (view, texts[0])).fetchall()
            elif texts:
                found = conn.execute(_READ_MANY, (view, json.dumps(sorted(set(texts))))).fetchall()
            else:
                found = []
        rows: dict[str, OnlineRow] = {key: (json.loads(vals), _datetime(as_of)) for key, as_of, vals in found}
        return [rows.get(t) for t in texts]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
