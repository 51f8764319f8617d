"""The prediction log in PostgreSQL: the same contract as the Parquet log, on a shared server.

Two tables, created on first use: ``prediction_log`` (one row per prediction,
the columns of :data:`~loopml.predlog.records.LOG_SCHEMA`) and
``prediction_feedback`` (every label received, with an identity column that
orders writes). Labels are never joined on write: a label whose prediction is
not (yet) logged simply waits in ``prediction_feedback`` and is joined at read
time, however late the prediction arrives.

Batches are written with ``COPY ... FROM STDIN`` inside one transaction, so a
writer killed mid-batch leaves nothing of that batch and everything before it.

Reading: DuckDB's postgres extension cannot be downloaded on every machine,
so :meth:`PostgresPredictionLog.connect` copies the selected rows out with
``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` (one round trip, parsed by
Arrow's CSV reader, much faster than fetching rows into Python objects), in one
repeatable-read transaction so that predictions and labels are a consistent
snapshot, and registers them in an in-memory DuckDB connection with the same
views as the Parquet log. Pass bounds to ``connect``/``read`` to copy only a
window.

Each call opens and closes its own connection (the server flushes at most
once a second), so the log is safe across threads and forked workers.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from loopml.errors import LoopmlError
from loopml.predlog.compact import CompactStats
from loopml.predlog.records import FEEDBACK_SCHEMA, LOG_SCHEMA, Feedback, LoggedPrediction
from loopml.predlog.tables import feedback_table, log_table
from loopml.predlog.views import feedback_list, install_views, prediction_filter, read_labelled

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS prediction_log (request_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, entities TEXT NOT NULL,"
    " features TEXT NOT NULL, score DOUBLE PRECISION, model_version BIGINT, variant TEXT, latency_ms DOUBLE PRECISION)",
    "CREATE INDEX IF NOT EXISTS prediction_log_ts ON prediction_log (ts)",
    "CREATE INDEX IF NOT EXISTS prediction_log_request ON prediction_log (request_id)",
    "CREATE TABLE IF NOT EXISTS prediction_feedback (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " request_id TEXT NOT NULL, label DOUBLE PRECISION NOT NULL, ts TIMESTAMP NOT NULL)",
    "CREATE INDEX IF NOT EXISTS prediction_feedback_request ON prediction_feedback (request_id)",
]
_LOG_COLUMNS = [f.name for f in LOG_SCHEMA]
_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@")
_KEYS_PER_QUERY = 10_000  # keys sent in one query's arrays
_SCHEMA_LOCK = 7461202612  # pg_advisory_xact_lock key: one schema creator at a time


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _held(
    con: psycopg.Connection[tuple[object, ...]], table: str, third: str, kind: str, keys: list[tuple[Any, ...]]
) -> set[int]:
    """The positions of the keys ``(request_id, ts, <third>)`` that ``table`` has a row of (one query per 10,000 keys)."""
    statement = sql.SQL(
        "SELECT k.i FROM unnest(%s::bigint[], %s::text[], %s::timestamp[], %s::{kind}[]) AS k(i, request_id, ts, {third}) "
        "WHERE EXISTS (SELECT 1 FROM {table} t WHERE t.request_id = k.request_id AND t.ts = k.ts AND t.{third} = k.{third})"
    ).format(kind=sql.SQL(kind), third=sql.Identifier(third), table=sql.Identifier(table))
    held: set[int] = set()
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        part = keys[start : start + _KEYS_PER_QUERY]
        columns = [list(range(start, start + len(part))), *(list(column) for column in zip(*part, strict=True))]
        held.update(int(str(r[0])) for r in con.execute(statement, columns).fetchall())
    return held


class PostgresPredictionLog:
    """Predictions and labels in two PostgreSQL tables; read through DuckDB."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = "prediction log " + _PASSWORD.sub(r"\1***@", url)
        self._schema_ready = False

    # -- connection -------------------------------------------------------------------------
    @contextmanager
    def _session(self, doing: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A connection of its own for one operation; a database error becomes one line naming ``doing``.

        A connection per call (a flush a second at most) keeps the log safe to share between threads
        and forked workers and never leaves a connection open behind a caller that forgets ``close``.
        """
        try:
            con = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise LoopmlError(f"{self.where}: cannot connect ({_reason(exc)})") from None
        with con:
            try:
                if not self._schema_ready:
                    with con.transaction():
                        con.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        for statement in _SCHEMA:
                            con.execute(statement.encode())
                    self._schema_ready = True
                yield con
            except psycopg.Error as exc:
                raise LoopmlError(f"{self.where}: cannot {doing} ({_reason(exc)})") from None

    def close(self) -> None:
        return None  # no connection outlives a call

    # -- writing ------------------------------------------------------------------------------
    def append(self, rows: Sequence[LoggedPrediction]) -> None:
        if not rows:
            return
        table = log_table(rows)  # the same JSON encoding as the Parquet log
        columns = [table.column(name).to_pylist() for name in _LOG_COLUMNS]
        statement = sql.SQL("COPY prediction_log ({}) FROM STDIN").format(sql.SQL(", ").join(map(sql.Identifier, _LOG_COLUMNS)))
        with self._session("write predictions") as con, con.transaction(), con.cursor() as cur, cur.copy(statement) as copy:
            for row in zip(*columns, strict=True):
                copy.write_row(row)

    def add_feedback(self, items: Sequence[Feedback]) -> None:
        if not items:
            return
        table = feedback_table(items)
        columns = [table.column(f.name).to_pylist() for f in FEEDBACK_SCHEMA]
        statement = "COPY prediction_feedback (request_id, label, ts) FROM STDIN"
        with self._session("write feedback") as con, con.transaction(), con.cursor() as cur, cur.copy(statement) as copy:
            for row in zip(*columns, strict=True):
                copy.write_row(row)

    # -- reading ------------------------------------------------------------------------------
    def _copy_out(self, con: psycopg.Connection[tuple[object, ...]], query: str, schema: pa.Schema) -> pa.Table:
        buffer = io.BytesIO()
        with con.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)".encode()) as copy:
            for chunk in copy:
                buffer.write(chunk)
        if buffer.tell() == 0:
            return schema.empty_table()
        buffer.seek(0)
        return pacsv.read_csv(
            buffer,
            read_options=pacsv.ReadOptions(column_names=schema.names),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            # only an unquoted empty field is NULL: "" (quoted) is an empty string, and NaN stays a number
            convert_options=pacsv.ConvertOptions(
                column_types=schema, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
            ),
        )

    def connect(
        self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection holding a copy of the selected rows, with the three views."""
        where = prediction_filter(since, until, model_version)
        columns = ", ".join(_LOG_COLUMNS)
        feedback = "SELECT request_id, label, ts, id FROM prediction_feedback"
        if where != "TRUE":
            feedback += f" WHERE request_id IN (SELECT request_id FROM prediction_log WHERE {where})"
        seq_schema = pa.schema([*FEEDBACK_SCHEMA, ("_seq", pa.int64())])
        with self._session("read the log") as con, con.transaction():
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            con.execute("SET LOCAL DateStyle = 'ISO'")  # what Arrow parses, whatever the server's default
            con.execute("SET LOCAL extra_float_digits = 3")  # floats round-trip exactly on old servers too
            predictions = self._copy_out(con, f"SELECT {columns} FROM prediction_log WHERE {where}", LOG_SCHEMA)
            labels = self._copy_out(con, feedback, seq_schema)
        duck = duckdb.connect()
        duck.register("_pg_predictions", predictions)
        duck.register("_pg_feedback", labels)
        install_views(duck, "_pg_predictions", "_pg_feedback", filtered=False)
        return duck

    def count(self) -> int:
        with self._session("count predictions") as con:
            row = con.execute("SELECT count(*) FROM prediction_log").fetchone()
        return int(str(row[0])) if row else 0

    def read(self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None) -> pa.Table:
        with self.connect(since, until, model_version) as con:
            return read_labelled(con)

    def unmatched_feedback(self, older_than: timedelta | None = None) -> list[Feedback]:
        cutoff = None if older_than is None else datetime.now() - older_than
        with self._session("read feedback") as con:
            rows = con.execute(
                """SELECT DISTINCT ON (f.request_id) f.request_id, f.label, f.ts FROM prediction_feedback f
                   WHERE NOT EXISTS (SELECT 1 FROM prediction_log p WHERE p.request_id = f.request_id)
                     AND (%(cutoff)s::timestamp IS NULL OR f.ts < %(cutoff)s::timestamp)
                   ORDER BY f.request_id, f.ts DESC, f.id DESC""",
                {"cutoff": cutoff},
            ).fetchall()
        return sorted(feedback_list(rows), key=lambda f: (f.ts, f.request_id))

    def compact(self) -> CompactStats:
        """Nothing to merge: rows live in two indexed tables (PostgreSQL's autovacuum keeps them)."""
        return CompactStats()

    def unlogged(
        self, rows: Sequence[LoggedPrediction], items: Sequence[Feedback]
    ) -> tuple[list[LoggedPrediction], list[Feedback]]:
        if not rows and not items:
            return [], []
        with self._session("read the log") as con:
            held_rows = _held(con, "prediction_log", "variant", "text", [(r.request_id, r.ts, r.variant) for r in rows])
            held_items = _held(con, "prediction_feedback", "label", "float8", [(f.request_id, f.ts, f.label) for f in items])
        return [r for i, r in enumerate(rows) if i not in held_rows], [f for i, f in enumerate(items) if i not in held_items]

    def known_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        found: set[str] = set()
        ids = list(dict.fromkeys(request_ids))
        with self._session("read predictions") as con:
            for start in range(0, len(ids), _KEYS_PER_QUERY):
                rows = con.execute(
                    "SELECT DISTINCT request_id FROM prediction_log WHERE request_id = ANY(%s)",
                    (ids[start : start + _KEYS_PER_QUERY],),
                ).fetchall()
                found.update(str(r[0]) for r in rows)
        return found
