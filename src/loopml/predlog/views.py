"""The DuckDB views every backend's ``connect`` installs (``predictions``, ``feedback``, ``labelled``) and their SQL helpers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from loopml.predlog.records import LABELLED_SCHEMA, LOG_SCHEMA, WIDE_PREDICTIONS, Feedback, naive_local


def sql_timestamp(value: datetime) -> str:
    return f"TIMESTAMP '{naive_local(value).isoformat(sep=' ')}'"


def prediction_filter(since: datetime | None, until: datetime | None, model_version: int | None) -> str:
    """A SQL condition (DuckDB and PostgreSQL) on ``ts`` and ``model_version``; ``TRUE`` without bounds."""
    parts = []
    if since is not None:
        parts.append(f"ts >= {sql_timestamp(since)}")
    if until is not None:
        parts.append(f"ts < {sql_timestamp(until)}")
    if model_version is not None:
        parts.append(f"model_version = {int(model_version)}")
    return " AND ".join(parts) or "TRUE"


def install_views(con: duckdb.DuckDBPyConnection, predictions_sql: str, feedback_sql: str, filtered: bool) -> None:
    """Create the three views (and :data:`WIDE_PREDICTIONS`) from two relations.

    ``predictions_sql`` must have the columns of :data:`LOG_SCHEMA` and may have typed feature
    columns (kept in :data:`WIDE_PREDICTIONS` only). ``feedback_sql`` must have ``request_id, label, ts`` and
    an ordering column ``_seq`` (a later write sorts after an earlier one), used to break ties
    between labels received at the same time.
    """
    log_columns = ", ".join(LOG_SCHEMA.names)
    con.execute(f"CREATE VIEW {WIDE_PREDICTIONS} AS SELECT * FROM {predictions_sql}")
    con.execute(f"CREATE VIEW predictions AS SELECT {log_columns} FROM {WIDE_PREDICTIONS}")
    raw = f"(SELECT * FROM {feedback_sql})"
    if filtered:
        raw = f"(SELECT * FROM {feedback_sql} WHERE request_id IN (SELECT request_id FROM predictions))"
    con.execute(f"CREATE VIEW _feedback_raw AS SELECT * FROM {raw}")
    con.execute("CREATE VIEW feedback AS SELECT request_id, label, ts FROM _feedback_raw")
    con.execute(
        """CREATE VIEW labelled AS
           SELECT p.*, f.label, f.label_ts FROM predictions p
           LEFT JOIN (
               SELECT request_id, label, ts AS label_ts FROM _feedback_raw
               QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts DESC, _seq DESC) = 1
           ) f USING (request_id)"""
    )


def read_labelled(con: duckdb.DuckDBPyConnection) -> pa.Table:
    table = con.sql("SELECT * FROM labelled ORDER BY ts, request_id").to_arrow_table()
    return table.cast(LABELLED_SCHEMA)


def feedback_list(rows: list[tuple[Any, ...]]) -> list[Feedback]:
    return [Feedback(request_id=str(r[0]), label=float(r[1]), ts=r[2]) for r in rows]


# -- the default backend: Parquet parts + DuckDB -----------------------------------------------------------


def duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_integer(t):
        return "BIGINT"
    return "DOUBLE"
