"""Spine files: the (entity keys, time[, label, anything]) rows a training set is built for.

``loopml features build --spine FILE`` computes features for each row of a
Parquet, CSV or JSON Lines file instead of for each event of the label
source. :func:`load_spine` copies the file into a DuckDB temporary table with
``__rid``, the row's 0-based position in the file, so the output can be put
back in spine order. It checks, with one line naming the file and the column
(or the 1-based data row) for each problem:

- the time column (``--spine-time``, default the label source's timestamp
  name) and every view's entity key are present;
- the time column is a ``TIMESTAMP`` or ``DATE``, or text in which every
  non-empty value parses as a timestamp (CSV cells DuckDB did not sniff as
  times, JSON strings); it is then replaced by its parsed value, naive UTC (an
  offset such as ``+02:00`` or ``Z`` is converted, a time without one is UTC,
  as at ingestion). Empty times are kept: the row gets the missing-history
  values, like an event without a time;
- entity keys have the type of the key column in the view's source snapshot,
  or convert to it value by value (``"42"`` in a CSV against an integer key);
  a value that does not convert is an error, a NULL key is kept (missing
  history).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from loopml.data.sources import check_file, file_format, read_error, scan_sql
from loopml.errors import DataError
from loopml.features.join import ROW_ID, TIME_TYPES, column_types
from loopml.features.windows import quote

__all__ = ["SPINE_TABLE", "Spine", "load_spine"]

#: The DuckDB temporary table holding the spine.
SPINE_TABLE = "__spine_file"


@dataclass(frozen=True)
class Spine:
    """A spine loaded into DuckDB: ``columns`` are the file's, in order (``__rid`` not included)."""

    path: Path
    table: str
    columns: dict[str, str]
    time: str
    rows: int


def _cast(col: str, target: str) -> str:
    """SQL casting ``col`` to ``target`` (NULL when it does not convert); text times go through TIMESTAMPTZ, so that
    an offset (``+02:00``, ``Z``) is converted to UTC instead of dropped (the connection's time zone is UTC)."""
    if target == "TIMESTAMP":
        return f"TRY_CAST(TRY_CAST({col} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST({col} AS {target})"


def _first_bad(con: duckdb.DuckDBPyConnection, column: str, target: str) -> tuple[int, str] | None:
    col = quote(column)
    row = con.execute(
        f"SELECT {ROW_ID} + 1, CAST({col} AS VARCHAR) FROM {SPINE_TABLE} "
        f"WHERE {col} IS NOT NULL AND {_cast(col, target)} IS NULL ORDER BY {ROW_ID} LIMIT 1"
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _convert(con: duckdb.DuckDBPyConnection, path: Path, column: str, target: str, why: str) -> None:
    """Replace ``column`` by its value cast to ``target``; raise naming the first row that does not convert."""
    bad = _first_bad(con, column, target)
    if bad is not None:
        raise DataError(f"{path}: row {bad[0]}: column {column!r} value {bad[1]!r} is not a {target} ({why})")
    col = quote(column)
    replace = f"REPLACE ({_cast(col, target)} AS {col})"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {SPINE_TABLE} AS SELECT * {replace} FROM {SPINE_TABLE}")


def load_spine(
    con: duckdb.DuckDBPyConnection, path: Path, time: str, keys: Mapping[str, tuple[str, str]], *, hint: str = "--spine-time"
) -> Spine:
    """Load ``path`` into :data:`SPINE_TABLE` and check it (see the module docstring).

    ``keys`` maps each entity key column the views need to ``(DuckDB type of
    that column in the view's source, the spec key that needs it)``.
    """
    check_file(path, " (--spine)")
    fmt = file_format(None, path)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE __spine_scan AS SELECT * FROM {scan_sql(path, fmt, text=False)}")
    except duckdb.Error as exc:
        raise read_error(path, fmt, exc) from None
    types = column_types(con, "__spine_scan")
    if ROW_ID in types:
        raise DataError(f"{path}: column {ROW_ID!r} is reserved for the row position; rename it")
    # rowid of a table filled from one ordered scan is the file order
    con.execute(f"CREATE OR REPLACE TEMP TABLE {SPINE_TABLE} AS SELECT *, rowid AS {ROW_ID} FROM __spine_scan")
    con.execute("DROP TABLE __spine_scan")
    if time not in types:
        raise DataError(f"{path}: column {time!r} is missing (needed as the spine's time, {hint}; found: {', '.join(types)})")
    for key, (_, why) in keys.items():
        if key not in types:
            raise DataError(f"{path}: column {key!r} is missing (needed as the entity key of {why}; found: {', '.join(types)})")
    if types[time] not in TIME_TYPES:
        if types[time] != "VARCHAR":
            raise DataError(f"{path}: time column {time!r} has type {types[time]}; expected TIMESTAMP or DATE")
        _convert(con, path, time, "TIMESTAMP", "the spine's time")
    elif types[time] == "TIMESTAMP WITH TIME ZONE":  # naive UTC, like every time in loopml
        _convert(con, path, time, "TIMESTAMP", "the spine's time")
    for key, (source_type, why) in keys.items():
        if types[key] != source_type:
            _convert(con, path, key, source_type, f"the type of the entity key of {why}")
    rows = int(con.execute(f"SELECT count(*) FROM {SPINE_TABLE}").fetchall()[0][0])
    columns = {c: t for c, t in column_types(con, SPINE_TABLE).items() if c != ROW_ID}
    return Spine(path=path, table=SPINE_TABLE, columns=columns, time=time, rows=rows)
