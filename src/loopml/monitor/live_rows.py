"""A model version's live rows read from the prediction log into columns, for drift, quality and performance.

:func:`load_live` reads the rows of one model version from the prediction
log's ``labelled`` view in one DuckDB query: the features straight from their
typed columns where the Parquet log has them, else parsed from their JSON text
with ``json_transform`` (numbers for the numeric reference columns, strings for
the categorical ones); rows are put in time order with numpy (a DuckDB
``ORDER BY`` would move all 50 columns through its sort).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.records import NUMBER_PREFIX, STRING_PREFIX, TYPED_MARKER, WIDE_PREDICTIONS

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SCORE = "score"
#: the schema (JSON keys and types) is read from this many of the latest logged rows
SCHEMA_SAMPLE = 1000
#: DuckDB's JSON structure types of a numeric value (NULL: only nulls seen)
NUMBER_TYPES = frozenset({"DOUBLE", "UBIGINT", "BIGINT", "NULL"})


@dataclass(frozen=True)
class LiveData:
    """The logged rows of one model version, oldest first, as columns."""

    ts_us: IntArray  # microseconds since the epoch (naive local time, as logged)
    score: FloatArray
    label: FloatArray  # NaN while no label arrived
    latency_ms: FloatArray
    numeric: dict[str, FloatArray]
    categorical: dict[str, pa.ChunkedArray]
    #: values of the wrong JSON type per column (a string where a number belongs), set to NULL
    type_errors: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.ts_us)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return con.sql(sql).to_arrow_table()


@dataclass(frozen=True)
class LoggedSchema:
    """The JSON keys of the features of the latest logged rows: DuckDB's type of each, and how many rows hold it."""

    rows: int
    types: dict[str, str]
    present: dict[str, int]


def logged_schema(con: duckdb.DuckDBPyConnection, sample: int = SCHEMA_SAMPLE) -> LoggedSchema | None:
    """:class:`LoggedSchema` of the latest ``sample`` rows of the connection's ``predictions``; None if there are none."""
    cut = con.execute(f"SELECT ts FROM predictions ORDER BY ts DESC LIMIT 1 OFFSET {max(sample - 1, 0)}").fetchall()
    where = "" if not cut else "WHERE ts >= $since"
    params = {} if not cut else {"since": cut[0][0]}
    found = con.execute(f"SELECT count(*), json_group_structure(features::JSON) FROM predictions {where}", params).fetchall()
    if not found or not found[0][0]:
        return None
    structure = json.loads(found[0][1]) if found[0][1] else {}
    keys = con.execute(
        f"SELECT k, count(*) FROM (SELECT unnest(json_keys(features)) AS k FROM predictions {where}) GROUP BY k", params
    ).fetchall()
    types = {str(k): str(v) for k, v in structure.items()} if isinstance(structure, dict) else {}
    return LoggedSchema(int(found[0][0]), types, {str(k): int(n) for k, n in keys})


def load_live(
    con: duckdb.DuckDBPyConnection, numeric: Sequence[str], categorical: Sequence[str], schema: LoggedSchema | None = None
) -> LiveData:
    """Rows of the connection's ``labelled`` view (already bounded by time/version), features as columns, oldest first.

    Rows from parts with typed feature columns (:mod:`loopml.predlog`) are read from those
    columns as they are: no JSON parsed. The JSON of the other rows (older parts, the PostgreSQL
    log, and the rare row whose typed value is not of the wanted type: a string logged for a numeric
    feature, a number for a categorical one) is parsed, numbers straight to DOUBLE. When the schema
    sample (:func:`logged_schema`) shows a numeric column holding anything else (text, booleans...),
    or DuckDB refuses a value, every JSON value is read as text instead and cast with ``TRY_CAST``,
    counting the ones that are not numbers (``type_errors``).
    """
    names = [*numeric, *categorical]
    stored = _columns(con, WIDE_PREDICTIONS)
    source = WIDE_PREDICTIONS if stored else "predictions"
    # the labels apart (a join would shuffle the rows, and sorting 50 columns back costs more than the lookup)
    labels = _fetch(con, "SELECT request_id, label FROM labelled WHERE label IS NOT NULL")
    base = "epoch_us(ts) AS ts_us, score, latency_ms" + (", request_id" if labels.num_rows else "")

    def fetch(sql: str) -> pa.Table:
        return _in_order(_with_labels(_fetch(con, sql), labels))

    if not names:
        return _live(fetch(f"SELECT {base} FROM {source}"), [], [], {})
    # result columns by position (n0.., c0..): a feature may be called like a base column
    aliases = {name: f"n{i}" for i, name in enumerate(numeric)} | {name: f"c{i}" for i, name in enumerate(categorical)}
    typed = _typed_columns(stored, numeric, categorical)
    if typed is not None and not _json_rows(con, typed[0]):  # every row typed: no JSON parsed at all
        selected = [f"{typed[1][name]} AS {aliases[name]}" for name in names]
        # the filter only drops untyped rows logged since the count (as if they had come a moment later)
        table = fetch(f"SELECT {base}, {', '.join(selected)} FROM {source} WHERE coalesce({typed[0]}, FALSE)")
        return _live(table, numeric, categorical, {name: table.column(aliases[name]) for name in names})

    def pick(name: str, from_json: str) -> str:
        """The column's value: typed where the row's typed columns are usable, else ``from_json``."""
        if typed is None:
            return from_json
        return f"CASE WHEN coalesce({typed[0]}, FALSE) THEN {typed[1][name]} ELSE {from_json} END"

    def parsed(spec: str) -> str:
        """The predictions with ``f``: the features parsed by ``spec`` (NULL in rows read from their typed columns)."""
        transform = f"json_transform(features, {spec})"
        if typed is not None:
            transform = f"CASE WHEN NOT coalesce({typed[0]}, FALSE) THEN {transform} END"
        return f"(SELECT *, {transform} AS f FROM {source})"

    wanted = {name: "DOUBLE" for name in numeric} | {name: "VARCHAR" for name in categorical}
    suspect = schema is not None and any(schema.types.get(name, "NULL") not in NUMBER_TYPES for name in numeric)
    if not suspect:
        try:
            parts = [base] + [f"{pick(name, f'struct_extract(f, {_sql_string(name)})')} AS {aliases[name]}" for name in names]
            table = fetch(f"SELECT {', '.join(parts)} FROM {parsed(_sql_string(json.dumps(wanted)))}")
            return _live(table, numeric, categorical, {name: table.column(aliases[name]) for name in names})
        except (duckdb.ConversionException, duckdb.InvalidInputException):
            pass  # a value of the wrong type somewhere: read everything as text, count and null the bad ones
    spec = _sql_string(json.dumps(dict.fromkeys(names, "VARCHAR")))
    parts = [base]
    for i, name in enumerate(numeric):
        field_sql = f"struct_extract(f, {_sql_string(name)})"
        parts.append(f"{pick(name, f'TRY_CAST({field_sql} AS DOUBLE)')} AS n{i}")
        # f is NULL in the typed rows: only parsed values are counted
        parts.append(f"count_if({field_sql} IS NOT NULL AND TRY_CAST({field_sql} AS DOUBLE) IS NULL) OVER () AS e{i}")
    for i, name in enumerate(categorical):
        parts.append(f"{pick(name, f'struct_extract(f, {_sql_string(name)})')} AS c{i}")
    table = fetch(f"SELECT {', '.join(parts)} FROM {parsed(spec)}")
    columns = {name: table.column(f"n{i}") for i, name in enumerate(numeric)}
    columns |= {name: table.column(f"c{i}") for i, name in enumerate(categorical)}
    errors = {}
    for i, name in enumerate(numeric):
        count = int(table.column(f"e{i}")[0].as_py() or 0) if table.num_rows else 0
        if count:
            errors[name] = count
    return _live(table, numeric, categorical, columns, errors)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> dict[str, str]:
    """The columns of a view of the connection (name -> DuckDB type); empty when there is no such view."""
    rows = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = $view", {"view": view}).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _typed_columns(
    stored: dict[str, str], numeric: Sequence[str], categorical: Sequence[str]
) -> tuple[str, dict[str, str]] | None:
    """How to read the wanted columns from the typed ones: (when a row's typed columns are usable, name -> SQL value).

    None when the log has no typed columns at all. A row's typed columns are usable when its part has
    them (the marker is true) and none of its wanted columns holds a value of the other type (a
    string for a numeric feature or a number for a categorical one: those rows keep what the JSON
    gives). A feature without a typed column is NULL (every value missing) in the typed rows.
    """
    if TYPED_MARKER not in stored:
        return None
    values: dict[str, str] = {}
    usable = [TYPED_MARKER]
    for names, want, other, null in (
        (numeric, NUMBER_PREFIX, STRING_PREFIX, "NULL::DOUBLE"),
        (categorical, STRING_PREFIX, NUMBER_PREFIX, "NULL::VARCHAR"),
    ):
        for name in names:
            values[name] = _ident(want + name) if want + name in stored else null
            if other + name in stored:
                usable.append(f"{_ident(other + name)} IS NULL")
    return " AND ".join(usable), values


def _json_rows(con: duckdb.DuckDBPyConnection, usable: str) -> int:
    """How many selected rows need their JSON parsed (cheap: reads the marker and a few typed columns)."""
    rows = con.execute(f"SELECT count(*) FROM {WIDE_PREDICTIONS} WHERE NOT coalesce({usable}, FALSE)").fetchall()
    return int(rows[0][0])


def _with_labels(table: pa.Table, labels: pa.Table) -> pa.Table:
    """``table`` with a ``label`` column: the label of its ``request_id`` in ``labels`` (NULL while none arrived)."""
    if not labels.num_rows:
        return table.append_column("label", pa.nulls(table.num_rows, pa.float64()))
    found = pc.index_in(table.column("request_id"), value_set=labels.column("request_id").combine_chunks())
    return table.append_column("label", pc.take(labels.column("label").combine_chunks(), found))


def _in_order(table: pa.Table) -> pa.Table:
    """``table`` (with ``ts_us``) oldest first: sorted here, as the log gives it in write order almost always."""
    ts = np.asarray(table.column("ts_us").to_numpy(zero_copy_only=False))
    if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        table = table.take(pa.array(np.argsort(ts, kind="stable")))
    return table


def _floats(column: pa.Array | pa.ChunkedArray) -> FloatArray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _live(
    table: pa.Table,
    numeric: Sequence[str],
    categorical: Sequence[str],
    columns: dict[str, Any],
    errors: dict[str, int] | None = None,
) -> LiveData:
    return LiveData(
        ts_us=np.asarray(table.column("ts_us").to_numpy(zero_copy_only=False), dtype=np.int64),
        score=_floats(table.column("score")),
        label=_floats(table.column("label")),
        latency_ms=_floats(table.column("latency_ms")),
        numeric={name: _floats(columns[name]) for name in numeric},
        categorical={
            name: pa.chunked_array([columns[name]]) if isinstance(columns[name], pa.Array) else columns[name]
            for name in categorical
        },
        type_errors=errors or {},
    )


def current_values(
    log: PredictionLogBackend, version: int, since: datetime | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logged feature columns (every key of the first row) and scores of one model version, NaN for missing."""
    with log.connect(since=since, model_version=version) as con:
        rows = con.execute("SELECT features FROM predictions ORDER BY ts LIMIT 1").fetchall()
        first = rows[0] if rows else None
        names = [k for k, v in json.loads(first[0]).items() if not isinstance(v, str)] if first else []
        live = load_live(con, names, [])
    return live.numeric, live.score
