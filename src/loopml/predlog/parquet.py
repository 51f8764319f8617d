"""The default prediction-log backend: Parquet parts in a folder, queried with DuckDB (layout: :mod:`loopml.predlog`)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.durable import fsync_dir
from loopml.errors import LoopmlError
from loopml.predlog.compact import STALE_TMP_SECONDS, CompactStats, compact_log, live_parts
from loopml.predlog.records import FEEDBACK_SCHEMA, LOG_SCHEMA, TYPED_FOLDER_PREFIX, Feedback, LoggedPrediction
from loopml.predlog.tables import feedback_table, log_table, typed_feature_columns, typed_folder
from loopml.predlog.views import duck_type, feedback_list, install_views, prediction_filter, read_labelled, sql_timestamp


def _key_columns(records: Sequence[LoggedPrediction] | Sequence[Feedback], third: str) -> dict[str, pa.Array]:
    """The key columns of records (request id, time and ``third``: ``variant`` or ``label``) as Arrow arrays."""
    kind = pa.string() if third == "variant" else pa.float64()
    return {
        "request_id": pa.array([r.request_id for r in records], pa.string()),
        "ts": pa.array([r.ts for r in records], pa.timestamp("us")),
        third: pa.array([getattr(r, third) for r in records], kind),
    }


class PredictionLog:
    """Append predictions and feedback as Parquet parts in a folder; query them with DuckDB."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)
        self._swept = False

    @property
    def _log_dir(self) -> Path:
        return self.folder / "log"

    @property
    def _feedback_dir(self) -> Path:
        return self.folder / "feedback"

    def _write_part(self, folder: Path, table: pa.Table, subfolder: str | None = None) -> None:
        try:
            target = folder / subfolder if subfolder else folder
            target.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                self._sweep()
            name = f"part-{datetime.now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = target / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes are on disk before the name is: a power cut leaves no empty part
            os.replace(tmp, target / name)
            fsync_dir(target)  # the part's name is on disk too before the caller (the journal) deletes its own copy
        except OSError as exc:
            raise LoopmlError(f"prediction log {folder}: cannot write a part ({exc.strerror or exc})") from None

    def _sweep(self) -> None:
        """Delete temporary parts left by writers that died long ago (never one being written now)."""
        self._swept = True
        cutoff = time.time() - STALE_TMP_SECONDS
        for sub in (self._log_dir, *self._typed_dirs(), self._feedback_dir):
            for tmp in sub.glob(".part-*.tmp") if sub.is_dir() else ():
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                except OSError:
                    pass

    def _typed_dirs(self) -> list[Path]:
        """The folders of the parts with typed columns, one per schema (see the module doc)."""
        if not self._log_dir.is_dir():
            return []
        return sorted(p for p in self._log_dir.glob(f"{TYPED_FOLDER_PREFIX}*") if p.is_dir())

    def append(self, rows: Sequence[LoggedPrediction]) -> None:
        if rows:
            table = log_table(rows)
            typed = typed_feature_columns(rows)
            for name, column in typed.items():
                table = table.append_column(name, column)
            self._write_part(self._log_dir, table, typed_folder(table.schema) if typed else None)

    def add_feedback(self, items: Sequence[Feedback]) -> None:
        if items:
            self._write_part(self._feedback_dir, feedback_table(items))

    def _log_relation(self) -> str:
        """Every logged prediction: the untyped parts and each folder of typed ones, unioned by column name.

        Each folder holds parts of one schema, so DuckDB reads one footer per folder to bind (a union by
        name over the files would read every footer at every query: seconds for thousands of parts).
        """
        listed = [live_parts(folder) for folder in (self._log_dir, *self._typed_dirs())]
        scans = [self._relation(parts, LOG_SCHEMA) for parts in listed if parts]
        if not scans:
            return self._relation([], LOG_SCHEMA)
        return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {scan}" for scan in scans) + ")"

    @staticmethod
    def _relation(parts: list[Path], schema: pa.Schema, ordered: bool = False) -> str:
        """A scan of one folder's parts, as listed by :func:`~loopml.predlog.compact.live_parts`.

        An explicit list, never a pattern DuckDB would expand at query time: only a listing taken
        before the compaction record was read is consistent with it (see the module doc).
        """
        extra = ", NULL::VARCHAR AS _file, NULL::BIGINT AS _row" if ordered else ""
        if not parts:
            cols = ", ".join(f"NULL::{duck_type(f.type)} AS {f.name}" for f in schema)
            return f"(SELECT {cols}{extra} WHERE false)"
        files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts) + "]"
        if ordered:  # part names start with their write time: (file name, row) is the write order
            cols = ", ".join(f.name for f in schema)
            return (
                f"(SELECT {cols}, filename AS _file, file_row_number AS _row "
                f"FROM read_parquet({files}, filename = true, file_row_number = true))"
            )
        return f"read_parquet({files})"

    def connect(
        self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with views ``predictions``, ``feedback`` and ``labelled``.

        ``labelled`` joins each prediction with its latest feedback label (NULL while none arrived).
        """
        con = duckdb.connect()
        con.execute("SET parquet_metadata_cache = true")  # parts never change: read each footer once per connection
        where = prediction_filter(since, until, model_version)
        predictions = f"(SELECT * FROM {self._log_relation()} WHERE {where})"
        ordered = self._relation(live_parts(self._feedback_dir), FEEDBACK_SCHEMA, ordered=True)
        feedback = f"(SELECT request_id, label, ts, (_file, _row) AS _seq FROM {ordered})"
        install_views(con, predictions, feedback, filtered=where != "TRUE")
        return con

    def count(self) -> int:
        with self.connect() as con:
            row = con.execute("SELECT count(*) FROM predictions").fetchone()
        return int(row[0]) if row else 0

    def read(self, since: datetime | None = None, until: datetime | None = None, model_version: int | None = None) -> pa.Table:
        with self.connect(since, until, model_version) as con:
            return read_labelled(con)

    def unmatched_feedback(self, older_than: timedelta | None = None) -> list[Feedback]:
        cutoff = "" if older_than is None else f"AND ts < {sql_timestamp(datetime.now() - older_than)}"
        with self.connect() as con:
            rows = con.execute(
                f"""SELECT request_id, label, ts FROM _feedback_raw
                    WHERE request_id NOT IN (SELECT request_id FROM predictions) {cutoff}
                    QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts DESC, _seq DESC) = 1
                    ORDER BY ts, request_id"""
            ).fetchall()
        return feedback_list(rows)

    def known_request_ids(self, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        wanted = pa.table({"request_id": pa.array(list(request_ids), pa.string())})
        with self.connect() as con:
            con.register("_wanted", wanted)
            rows = con.execute("SELECT DISTINCT request_id FROM predictions WHERE request_id IN (SELECT request_id FROM _wanted)")
            return {str(r[0]) for r in rows.fetchall()}

    def unlogged(
        self, rows: Sequence[LoggedPrediction], items: Sequence[Feedback]
    ) -> tuple[list[LoggedPrediction], list[Feedback]]:
        if not rows and not items:
            return [], []
        with self.connect() as con:
            con.register("_rows", pa.table({"i": pa.array(range(len(rows)), pa.int64()), **_key_columns(rows, "variant")}))
            con.register("_items", pa.table({"i": pa.array(range(len(items)), pa.int64()), **_key_columns(items, "label")}))
            held_rows = con.execute(
                """SELECT i FROM _rows k WHERE EXISTS (SELECT 1 FROM predictions p
                   WHERE p.request_id = k.request_id AND p.ts = k.ts AND p.variant = k.variant)"""
            ).fetchall()
            held_items = con.execute(
                """SELECT i FROM _items k WHERE EXISTS (SELECT 1 FROM feedback f
                   WHERE f.request_id = k.request_id AND f.ts = k.ts AND f.label = k.label)"""
            ).fetchall()
        skip_rows, skip_items = {r[0] for r in held_rows}, {r[0] for r in held_items}
        return [r for i, r in enumerate(rows) if i not in skip_rows], [f for i, f in enumerate(items) if i not in skip_items]

    def close(self) -> None:
        return None

    def compact(self, min_age: float = 60.0, target_rows: int = 1_000_000, grace: float = 600.0) -> CompactStats:
        """Merge runs of small parts older than ``min_age`` seconds (see :mod:`loopml.predlog.compact`).

        Safe while other processes write and read; while another process compacts, this call does
        nothing (``skipped``). Replaced parts are deleted once ``grace`` seconds have passed, by this
        call or a later one.
        """
        return compact_log(self.folder, [self._log_dir, *self._typed_dirs(), self._feedback_dir], min_age, target_rows, grace)
