"""The general point-in-time join, and the DuckDB plumbing the feature stage shares.

:func:`point_in_time_join` computes the features of any spine of (entity key,
time) rows: it unions the spine rows (with NULL values and no event marker)
into the event stream of each view's source, windows over the union with the
SQL of :mod:`loopml.features.windows`, and keeps the spine rows; a view
made only of ``last`` is instead an ``ASOF JOIN`` of the spine with its
source (:mod:`loopml.features.asof`, same semantics, much less work). It
serves views whose source is not the training spine, spine files
(``features build --spine``) and batch scoring (``serve/batch.py``). The semantics are those
documented in :mod:`loopml.features.offline` and ``docs/features.md``.

Events outside the time span the spine can see are skipped before the
windows run, so a spine of one moment only windows the events of its
longest lookback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import DataError, LoopmlError
from loopml.features.asof import asof_view_sql, is_asof_view
from loopml.features.definitions import view_key, view_value_columns
from loopml.features.windows import quote, view_sql
from loopml.spec.model import Spec

__all__ = [
    "ROW_ID",
    "TIME_TYPES",
    "check_view_sources",
    "column_types",
    "connect",
    "pit_sql",
    "point_in_time_join",
    "register_source",
    "require",
    "require_time",
    "spine_span",
]

#: The row-id column of a registered source (its position in the snapshot) and of the training spine.
ROW_ID = "__rid"
#: DuckDB types a time column may have (snapshots hold TIMESTAMP or DATE); all are cast to TIMESTAMP.
TIME_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "DATE"})


def connect(temp_directory: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection set up for feature work (UTC, all cores)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    if temp_directory is not None:
        con.execute(f"SET temp_directory = '{_sql_string(str(temp_directory))}'")
    return con


def _sql_string(value: str) -> str:
    return value.replace("'", "''")


def _parquet_files(name: str, path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if files:
            return files
    elif path.is_file():
        return [path]
    raise DataError(f"{path}: no Parquet snapshot of source {name!r} here")


def register_source(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> str:
    """Create a view over a source snapshot (a Parquet file or a folder of them).

    The view has the file's columns plus ``__rid``, the row's position in the
    snapshot (files in name order), which orders ties. Returns the view name.
    """
    parts = []
    offset = 0
    for file in _parquet_files(name, path):
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        parts.append(
            f"SELECT * EXCLUDE (file_row_number), file_row_number + {offset} AS {ROW_ID} "
            f"FROM read_parquet('{_sql_string(str(file))}', file_row_number = true)"
        )
        offset += rows
    view = f"__src_{name}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {quote(view)} AS {' UNION ALL BY NAME '.join(parts)}")
    return view


def column_types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Column name -> DuckDB type, in order."""
    return {str(row[0]): str(row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {quote(relation)}").fetchall()}


def require_time(columns: Mapping[str, str], column: str, where: str) -> None:
    if column in columns and columns[column] not in TIME_TYPES:
        raise DataError(f"{where}: time column {column!r} has type {columns[column]}; expected TIMESTAMP or DATE")


def require(columns: Sequence[str], needed: Sequence[str], where: str, why: str) -> None:
    for column in needed:
        if column not in columns:
            raise DataError(f"{where}: column {column!r} is missing (needed by {why})")


def check_view_sources(
    con: duckdb.DuckDBPyConnection, spec: Spec, views: Sequence[str], tables: Mapping[str, str], paths: Mapping[str, Path]
) -> None:
    """Raise :class:`DataError` when a view's source snapshot lacks a column the view needs."""
    for name in views:
        source = spec.features.views[name].source
        types = column_types(con, tables[source])
        timestamp = spec.sources[source].timestamp or ""
        needed = [view_key(spec, name), timestamp, *view_value_columns(spec, name)]
        require(list(types), needed, str(paths[source]), f"features.views.{name}")
        require_time(types, timestamp, str(paths[source]))


def _span_condition(spec: Spec, view_names: Sequence[str], span: tuple[datetime, datetime] | None) -> str:
    """SQL keeping only the events some spine row can see (see :func:`_union_sql`)."""
    if span is None:
        return "FALSE"  # no spine row has a time: no event is visible, but every spine row is kept
    views = [spec.features.views[v] for v in view_names]
    ts = quote(spec.sources[views[0].source].timestamp or "")
    lookback = max(v.delay + w for v in views for agg in v.aggregations for w in agg.windows)
    nearest = min(v.delay for v in views)
    return f"CAST({ts} AS TIMESTAMP) BETWEEN {_timestamp(span[0], lookback)} AND {_timestamp(span[1], nearest)}"


def _union_sql(
    spec: Spec, view_names: Sequence[str], events: str, spine_rows: str, span: tuple[datetime, datetime] | None
) -> str:
    """The base rows of the general path: the events, then the spine rows with NULL values.

    Events outside the time span the spine can see (the longest delay plus
    window before its earliest row, up to its latest row) are skipped: they
    fall in no frame. The latest-event column therefore only looks that far
    back, which changes nothing, since without an event in the window every
    feature has its missing value whatever the ttl says.
    """
    views = [spec.features.views[v] for v in view_names]
    key = quote(view_key(spec, view_names[0]))
    ts = quote(spec.sources[views[0].source].timestamp or "")
    values = list(dict.fromkeys(c for v in view_names for c in view_value_columns(spec, v)))
    event_values = "".join(f", CAST({quote(c)} AS DOUBLE) AS {quote(c)}" for c in values)
    spine_values = "".join(f", NULL::DOUBLE AS {quote(c)}" for c in values)
    in_span = _span_condition(spec, view_names, span)
    return (
        f"SELECT {key}, CAST({ts} AS TIMESTAMP) AS __ts, 1 AS __ev, CAST({ts} AS TIMESTAMP) AS __ets, {ROW_ID} AS __ord"
        f"{event_values}, NULL::BIGINT AS __srid FROM {quote(events)} WHERE {key} IS NOT NULL AND {in_span} "
        f"UNION ALL SELECT {key}, __spine_ts AS __ts, NULL::INTEGER AS __ev, NULL::TIMESTAMP AS __ets, NULL::BIGINT AS __ord"
        f"{spine_values}, __srid FROM ({spine_rows})"
    )


def _timestamp(value: datetime, minus: timedelta) -> str:
    try:
        return f"TIMESTAMP '{(value - minus).isoformat(sep=' ')}'"
    except OverflowError:
        return f"TIMESTAMP '{datetime.min.isoformat(sep=' ')}'"


def spine_span(con: duckdb.DuckDBPyConnection, spine: str, timestamp: str) -> tuple[datetime, datetime] | None:
    """Earliest and latest time of a spine, None when it has no timed row."""
    ts = f"CAST({quote(timestamp)} AS TIMESTAMP)"
    first, last = con.execute(f"SELECT min({ts}), max({ts}) FROM {quote(spine)}").fetchall()[0]
    if isinstance(first, datetime) and isinstance(last, datetime):
        return first, last
    return None


def _group_views(spec: Spec, views: Sequence[str]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for name in views:
        groups.setdefault((spec.features.views[name].source, view_key(spec, name)), []).append(name)
    return groups


def pit_sql(
    spec: Spec,
    spine: str,
    sources: Mapping[str, str],
    timestamp: str,
    row_id: str,
    views: Sequence[str],
    last_event: bool,
    span: tuple[datetime, datetime] | None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> str:
    """The join's SQL; with ``con``, views of only ``last`` are computed now (see :mod:`loopml.features.asof`)."""
    parts: list[str] = []
    for (source, key), names in _group_views(spec, views).items():
        spine_rows = (
            f"SELECT {quote(key)}, CAST({quote(timestamp)} AS TIMESTAMP) AS __spine_ts, {quote(row_id)} AS __srid "
            f"FROM {quote(spine)}"
        )
        for name in [n for n in names if is_asof_view(spec, n)]:
            in_span = _span_condition(spec, [name], span)
            ts = spec.sources[source].timestamp or ""
            asof = asof_view_sql(spec, name, spine_rows, sources[source], ts, ROW_ID, in_span, last_event, con)
            parts.append(f"({asof}) g{len(parts)}")
        windowed = [n for n in names if not is_asof_view(spec, n)]
        if not windowed:
            continue
        g = len(parts)
        union = _union_sql(spec, windowed, sources[source], spine_rows, span)
        pieces = [view_sql(spec, name, f"__g{g}v{i}", last_event) for i, name in enumerate(windowed)]
        inner = ", ".join(e for p in pieces for e in p.inner)
        outer = ", ".join(e for p in pieces for e in p.outer)
        windows = ", ".join(w for p in pieces for w in p.windows)
        parts.append(
            f"(SELECT __srid, {outer} FROM (SELECT *, {inner} FROM ({union}) WINDOW {windows}) WHERE __srid IS NOT NULL) g{g}"
        )
    select = ", ".join([f"g0.__srid AS {quote(row_id)}"] + [f"g{g}.* EXCLUDE (__srid)" for g in range(len(parts))])
    joins = "".join(f" JOIN {part} ON g0.__srid = g{g + 1}.__srid" for g, part in enumerate(parts[1:]))
    return f"SELECT {select} FROM {parts[0]}{joins}"


def point_in_time_join(
    con: duckdb.DuckDBPyConnection,
    spine: str | duckdb.DuckDBPyRelation,
    spec: Spec,
    *,
    sources: Mapping[str, str],
    timestamp: str,
    row_id: str = ROW_ID,
    views: Sequence[str] | None = None,
    last_event: bool = False,
) -> duckdb.DuckDBPyRelation:
    """Features of arbitrary (entity, time) spine rows, as of each row's time.

    ``spine`` is a table, view or relation with a unique integer ``row_id``
    column, the time column ``timestamp`` and the entity key column of every
    view asked for (``views``, default all). ``sources`` maps each view's
    source name to a view made by :func:`register_source`. Returns a relation
    of ``row_id`` and every output of those views (plus the latest visible event
    time of each view with ``last_event``), one row per spine row, unordered.
    """
    names = list(spec.features.views) if views is None else list(views)
    if not names:
        raise LoopmlError("point_in_time_join: no feature views to join")
    if isinstance(spine, duckdb.DuckDBPyRelation):
        spine_name = "__spine"
        spine.create_view(spine_name, replace=True)
    else:
        spine_name = spine
    spine_columns = column_types(con, spine_name)
    needed = [row_id, timestamp] + [view_key(spec, n) for n in names]
    require(list(spine_columns), needed, "spine", "the point-in-time join")
    require_time(spine_columns, timestamp, "spine")
    for name in names:
        source = spec.features.views[name].source
        if source not in sources:
            raise LoopmlError(f"features.views.{name}.source: source {source!r} is not registered")
    span = spine_span(con, spine_name, timestamp)
    return con.sql(pit_sql(spec, spine_name, sources, timestamp, row_id, names, last_event, span, con))
